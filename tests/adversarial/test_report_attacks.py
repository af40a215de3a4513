"""Attacks on the auditor's evidence report: false verdicts, forged files that verify, and
a report that writes more than its one audit event. Each test shows a hole that was open."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import new_bkp_env

pytestmark = pytest.mark.integration

HOSTILE = ("</script><script>fetch('https://evil.example/x')</script></style>"
           "<img src=x onerror=alert(1)> javascript:alert(1) \"' url(https://e.example) "
           "@import 'x'; <svg><use xlink:href=\"https://e.example#a\"/></svg>")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Two local tenants backed up and drilled, one of them named like the hidden `make`
    subcommand, with hostile text in its description."""
    env = new_bkp_env(tmp_path_factory.mktemp("report-attacks"))
    env.local_tenant("make", description=HOSTILE, drill={"sample": 0, "rto_minutes": 30})
    env.local_tenant("zorg-a", drill={"sample": 0, "rto_minutes": 30})
    env.bkp_json("init", "make", "zorg-a")
    env.bkp_json("backup", "make", "zorg-a")
    env.bkp_json("drill", "make", "zorg-a")
    env.bkp_json("certificate", "key", "create", expect=None)
    return env


@pytest.fixture
def env(base, tmp_path):
    """The base installation with a home of its own (catalog and keys copied), so a test
    may edit its catalog; the tenants' repositories and policies are shared, read only."""
    home = tmp_path / "home"
    shutil.copytree(base.home, home, symlinks=True)
    return dataclasses.replace(base, home=home, root=tmp_path)


def make(env, *args: str) -> dict:
    document, _ = env.bkp_json("report", *args)
    return document


def controls(document: dict, tenant: str) -> dict[str, dict]:
    section = next(t for t in document["tenants"] if t["tenant"] == tenant)
    return {c["id"]: c for c in section["controls"]}


def write(env, fmt: str, name: str, *args: str) -> Path:
    path = env.root / name
    done = env.bkp("report", *args, "--format", fmt, "--output", str(path))
    assert done.returncode == 0, done.stderr
    return path


def verify(env, path: Path) -> tuple[int, dict]:
    done = env.bkp("report", "verify", str(path), "--json")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


# ---------------------------------------------------------------- forgery


def test_visible_html_hidden_in_the_signature_trailer_does_not_verify(env):
    """The trailer comment is not covered by the signature: whatever else it carries, a
    browser shows once the comment is closed inside it."""
    page = write(env, "html", "report.html").read_bytes()
    marker, end = b"<!-- bkp-html-signature ", b" -->\n"
    at = page.rfind(marker)
    trailer = json.loads(page[at + len(marker):-len(end)])
    trailer["note"] = ("--><style>body>*{display:none}</style><h1 style=\"display:block\">"
                       "All controls met</h1><!--")
    forged = page[:at] + marker + json.dumps(trailer).encode() + end
    path = env.root / "forged.html"
    path.write_bytes(forged)
    code, result = verify(env, path)
    assert code == 5 and not result["valid"], result


def test_a_json_report_whose_text_differs_from_what_was_signed_does_not_verify(env):
    """A duplicate key: a reader sees the first value, json.loads keeps the last (the
    signed one). Any change of the file's bytes is a change."""
    path = write(env, "json", "report.json", "zorg-a")
    text = path.read_text()
    needle = '"id": "offsite-eea",\n'
    at = text.index(needle) + len(needle)
    indent = text[text.rindex("\n", 0, at - 1) + 1:at - len(needle)]
    forged = text[:at] + f'{indent}"status": "met",\n' + text[at:]
    assert json.loads(forged) == json.loads(text)
    (env.root / "duplicate.json").write_text(forged)
    code, result = verify(env, env.root / "duplicate.json")
    assert code == 5, result
    # reformatted (same content, other bytes): not the file bkp issued either
    (env.root / "compact.json").write_text(json.dumps(json.loads(text)))
    assert verify(env, env.root / "compact.json")[0] == 5
