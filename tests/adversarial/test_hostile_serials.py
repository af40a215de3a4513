"""Serials typed on the command line are values: one rule for register, show, sanitize and
destroy. A serial that is no serial is a usage error (2) in one line, and nothing is
registered, written or recorded."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytestmark = pytest.mark.e2e

HOSTILE_SERIALS = ["SN1\nregistered SN2", "-rf", "../../etc/passwd", "a\\b", " ", "x" * 129,
                   "SN\x1b[2J", "SN\u2028X"]


def media_rows(env) -> list:
    path = env.home / "catalog.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute("select serial from media").fetchall()


def one_line_usage_error(done) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("bkp:")]
    assert len(errors) == 1 and "serial" in errors[0], done.stderr
    # the error is one line: nothing of the serial starts a line of its own
    assert all(line.startswith(("bkp:", "note:")) for line in lines), done.stderr


@pytest.mark.parametrize("serial", HOSTILE_SERIALS)
def test_register_refuses_a_serial_that_is_no_serial(bkp_env, serial):
    done = bkp_env.bkp("media", "register", f"--serial={serial}", "--type", "hdd")
    one_line_usage_error(done)
    assert media_rows(bkp_env) == []


@pytest.mark.parametrize("command", [
    ["media", "show", "--", "{serial}"],
    ["destroy", "--serial={serial}", "--method", "shred", "--witness", "W. Itness"],
    ["sanitize", "/dev/null", "--serial={serial}", "--yes"],
])
def test_every_command_taking_a_serial_applies_the_same_rule(bkp_env, command):
    for serial in ("SN1\nSN2", "-rf", "a/b"):
        done = bkp_env.bkp(*[part.format(serial=serial) for part in command])
        one_line_usage_error(done)


def test_a_register_tenant_must_be_a_tenant_id(bkp_env):
    done = bkp_env.bkp("media", "register", "--serial", "SN1", "--type", "hdd",
                       "--tenant", "acme\n")
    assert done.returncode == 2 and "tenant id" in done.stderr, done.stderr
    assert media_rows(bkp_env) == []


def test_an_ordinary_serial_is_registered_as_typed(bkp_env):
    out = bkp_env.bkp("media", "register", "--serial", " WD-WCC4N7KX1234 ", "--type", "hdd",
                      "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["medium"]["serial"] == "WD-WCC4N7KX1234"
