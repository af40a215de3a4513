"""`bkp report`: the auditor's evidence report, and `bkp report verify FILE`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import click

from bkp.errors import PolicyError, UsageError


def say(message: str) -> None:
    click.echo(message, err=True)


class ReportGroup(click.Group):
    """`bkp report [TENANT...]` next to `bkp report verify FILE`: a first word that is not
    a subcommand (or none at all) makes the report."""

    def parse_args(self, ctx, args):
        # Only a visible subcommand is one: a tenant may be called `make` (the hidden
        # command's name), and `bkp report make` must report on that tenant alone.
        # A tenant called `verify` is reached after `--`: `bkp report -- verify`.
        visible = {name for name, command in self.commands.items() if not command.hidden}
        before = args[:args.index("--")] if "--" in args else args
        words = [a for a in before if not a.startswith("-")]
        wants_help = bool({"-h", "--help"} & set(before))
        if not wants_help and (not words or words[0] not in visible):
            args = ["make", *args]
        return super().parse_args(ctx, args)


def register(cli, pass_state, emit, json_option) -> None:
    @cli.group(cls=ReportGroup)
    def report():
        """The auditor's evidence report: per tenant and per promise, what was done, when,
        and the proof, signed.

        \b
        bkp report [TENANT...] [--from DATE] [--to DATE] [--format json|html|pdf]
                   [--output FILE]
        bkp report verify FILE [--public-key FILE]
        """

    @report.command("make", hidden=True)
    @click.argument("tenants", nargs=-1, metavar="[TENANT...]")
    @click.option("--from", "since", metavar="DATE",
                  help="Start of the period: YYYY-MM-DD (UTC) or an ISO 8601 time "
                       "(default: a year before --to).")
    @click.option("--to", "until", metavar="DATE",
                  help="End of the period, that whole day (default: now).")
    @click.option("--format", "fmt", type=click.Choice(("json", "html", "pdf")),
                  default="html", show_default=True)
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write to FILE instead of stdout.")
    @json_option
    @pass_state
    def report_make(state, tenants, since, until, fmt, output, as_json):
        """Make the signed evidence report of every tenant (or those named) over a period.
        Reads the records; records only that the report was issued (its SHA-256)."""
        from datetime import UTC, datetime

        from bkp.evidence.report import period_of
        from bkp.evidence.report_issue import issue_report

        if as_json and not output:
            fmt = "json"
        if fmt == "pdf" and not output and sys.stdout.isatty():
            raise UsageError("a PDF is not for the terminal: give --output FILE")
        period = period_of(since, until, datetime.now(UTC))
        policies = _policies(state, tenants)
        reader = state.reader()
        state.actor()  # who issues it is on its event
        issued = issue_report(
            reader=reader, settings=state.settings, policies=policies, period=period,
            fmt=fmt, organization=_organization(state),
            record=lambda digest, details: _record_or_withdraw(state, details, output),
            deliver=(lambda content: _write(output, content)) if output else None)
        if output:
            say(f"wrote {output} (SHA-256 {issued.sha256})")
            emit(issued.summary(fmt, output), as_json, lambda: _print_summary(issued))
        elif fmt == "pdf":
            sys.stdout.flush()
            sys.stdout.buffer.write(issued.content)
            sys.stdout.buffer.flush()
        else:
            click.echo(issued.content.decode("utf-8"), nl=False)
        return 0

    @report.command("verify")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--public-key", "public_key", metavar="FILE",
                  type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="The issuer's public key(s): PEM (as `bkp certificate public-key "
                       "--all --output` writes) or a copy of its keys/keyring.json "
                       "(default: this installation's key ring).")
    @json_option
    @pass_state
    def report_verify(state, file, public_key, as_json):
        """Check a report (JSON, HTML or PDF): the signature of the JSON it carries, the
        HTML's signature over all its bytes, the PDF's signature over the whole file, each
        by a key of the key ring valid then. Exit 5 on any change. Writes nothing."""
        from bkp.evidence.certify import trusted_keys
        from bkp.evidence.report_files import verify_report

        trusted = trusted_keys(state.settings.home, public_key)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
        result = verify_report(data, trusted)
        result["file"] = str(file)
        result["sha256"] = hashlib.sha256(data).hexdigest()
        result["issued_event"] = _issued_event(state, result["sha256"])
        emit(result, as_json, lambda: _print_verification(file, result))
        return 0 if result["valid"] else 5


def _policies(state, tenants: tuple[str, ...]) -> list:
    """The tenants to report on: the named ones (each must have a valid policy, exit 3
    otherwise), or every valid policy (an invalid one is named on stderr)."""
    policies, broken = state.select(tenants, not tenants)
    if broken and tenants:
        raise PolicyError("; ".join(b.data["error"] for b in broken))
    for b in broken:
        say(f"warning: {b.tenant} is not in the report: {b.data['error']}")
    return policies


def _organization(state) -> str | None:
    try:
        return state.installation().organization
    except PolicyError:
        return None


def _record(state, details: dict) -> dict | None:
    """The one write of a report: its `report.issued` event. Where no catalog exists there
    is no trail to record it in (and none is made for it)."""
    from bkp.catalog import open_for_work
    from bkp.context import Context
    from bkp.evidence.report_issue import ACTION

    if state.catalog_note:
        say(f"note: the report's issue is not recorded ({state.catalog_note})")
        return None
    catalog = open_for_work(state.settings.home)
    try:
        return Context(state.settings, catalog).audit(ACTION, "ok", None, **details)
    finally:
        catalog.close()


def _record_or_withdraw(state, details: dict, output: Path | None) -> dict | None:
    """Record the report as issued; a report whose issue could not be recorded is not
    handed over (the file just written is removed)."""
    try:
        return _record(state, details)
    except BaseException:
        if output is not None:
            output.unlink(missing_ok=True)
        raise


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    created = False
    try:
        # A new file, never one planted there (a symlink would be written through).
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        created = True
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        if created:
            temporary.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _issued_event(state, digest: str) -> int | None:
    """The `report.issued` event that recorded this very file, when this installation's
    catalog is at hand (read-only; a report checked elsewhere has none)."""
    from bkp.catalog import Catalog
    from bkp.errors import BkpError
    from bkp.evidence.report_issue import ACTION

    try:
        catalog = Catalog.read_only(state.settings.catalog_path)
    except BkpError:
        return None
    try:
        for event in reversed(catalog.audit_events(action=ACTION)):
            try:
                if json.loads(event["details"] or "{}").get("sha256") == digest:
                    return event["seq"]
            except ValueError:
                continue
    finally:
        catalog.close()
    return None


def _print_summary(issued) -> None:
    for row in issued.document["fleet"]:
        bad = [k for k, v in row["controls"].items() if v == "not_met"]
        grey = [k for k, v in row["controls"].items() if v == "not_evidenced"]
        click.echo(f"{row['tenant']:<24} " + (f"NOT MET: {', '.join(bad)}" if bad else
                                              "all evidenced controls met")
                   + (f"; not evidenced: {', '.join(grey)}" if grey else ""))


def _print_verification(file: Path, result: dict) -> None:
    if result["valid"]:
        click.echo(f"{file}: valid {result['format']} report, generated "
                   f"{result['generated']}, period {result['period']['from']} to "
                   f"{result['period']['to']}, tenants {', '.join(result['tenants'])}; "
                   f"signed by {result['key_fingerprint']}"
                   + (f"; issued as audit event #{result['issued_event']}"
                      if result.get("issued_event") else ""))
        return
    click.echo(f"{file}: NOT a valid bkp report ({len(result['problems'])} problem"
               f"{'s' if len(result['problems']) != 1 else ''}):")
    for problem in result["problems"]:
        click.echo(f"  {problem}")
