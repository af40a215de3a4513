"""Free text typed by an operator (names, notes, reasons) is a value: it goes into the audit
trail, `bkp audit log` lines, certificates and logs, so a control character (a newline
that would start a forged log line, a terminal escape) or a text without end is refused
where it is typed (exit 2), as policy values are."""

from __future__ import annotations

import click

from bkp.names import text_problem

NAME_LIMIT = 128  # a person, a vendor, a model, an asset tag, a host
TEXT_LIMIT = 2000  # notes and reasons


def checked_text(limit: int):
    """A click callback: the value as typed, or click's usage error (exit 2)."""

    def check(ctx, param, value):
        if value is None:
            return value
        problem = text_problem(value, limit)
        if problem:
            raise click.BadParameter(problem)
        return value

    return check
