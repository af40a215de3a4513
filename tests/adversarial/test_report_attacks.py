"""Attacks on the auditor's evidence report: false verdicts, forged files that verify, and
a report that writes more than its one audit event. Each test shows a hole that was open."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bkp.evidence import report as rep
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


def test_what_is_not_a_report_is_exit_5_never_a_traceback(env):
    page = write(env, "html", "report.html", "zorg-a").read_bytes()
    deep = b"[" * 200000 + b"]" * 200000
    start = page.index(b'id="bkp-report">') + len(b'id="bkp-report">')
    shapes = {
        "deep.json": b'{"format":"bkp-report/1","x":' + deep + b"}",
        "deep.html": page[:start] + deep + page[page.index(b"</script>", start):],
        "utf16.json": '{"format": "bkp-report/1"}'.encode("utf-16"),
        "list.json": b"[1, 2, 3]\n",
        "null.json": b"{\"format\": \"bkp-report/1\", \"signature\": null}\n",
        "bare.html": b"<!DOCTYPE html><html><body>all met</body></html>\n",
        "garbage.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 8,
        "binary": bytes(range(256)) * 4,
    }
    for name, data in shapes.items():
        path = env.root / name
        path.write_bytes(data)
        code, result = verify(env, path)
        assert code == 5 and not result["valid"] and result["problems"], (name, result)


# ---------------------------------------------------------------- false verdicts


T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def drill(id_: int, when: datetime, status: str = "passed") -> dict:
    return {"id": id_, "kind": "drill", "status": status, "_time": when,
            "started_at": when.isoformat(), "snapshot_id": f"{id_:08x}"}


def test_a_destination_change_after_the_period_does_not_hide_one_within_it():
    """Drill in January, destination changed in March, changed again in August; a report
    over the first half year must say no drill passed after the March change."""
    period = rep.Period(T0, T0 + 181 * DAY)
    drills = [drill(1, T0 + 10 * DAY)]
    changes = [{"time": rep.stamp(T0 + 60 * DAY), "fingerprint": "sha256:m", "audit_seq": 5},
               {"time": rep.stamp(T0 + 220 * DAY), "fingerprint": "sha256:a",
                "audit_seq": 9}]
    verdict = rep.judge_restore_tested(drills, changes, period)
    assert verdict["status"] == "not_met", verdict
    assert rep.stamp(T0 + 60 * DAY) in verdict["reason"]


def test_a_period_beyond_what_a_date_can_hold_is_a_usage_error(env):
    for args in (("--to", "9999-12-31"), ("--to", "0001-01-01"),
                 ("--from", "0001-01-01", "--to", "0001-01-02"),
                 ("--from", "9999-12-31T23:59:59+00:00"), ("--to", "2026-13-01"),
                 ("--from", "2026-06-01", "--to", "2026-01-01")):
        done = env.bkp("report", "zorg-a", "--format", "json", *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        assert done.stderr.strip().count("\n") == 0, done.stderr


def test_a_period_ending_in_the_future_judges_no_moment_that_has_not_come(env):
    """`--to` a month ahead: the month to come is not a month without backups."""
    ahead = (datetime.now(UTC) + 30 * DAY).date().isoformat()
    document = make(env, "zorg-a", "--to", ahead)
    assert document["period"]["to"] <= document["generated"], document["period"]
    assert controls(document, "zorg-a")["backup-current"]["status"] == "met"


def test_a_tenant_named_like_the_hidden_subcommand_gets_its_own_report_only(env):
    document = make(env, "make")
    assert [t["tenant"] for t in document["tenants"]] == ["make"]


def test_a_named_tenant_without_a_policy_is_refused_not_an_empty_report(env):
    done = env.bkp("report", "gone-zorg", "--format", "json")
    assert done.returncode == 3 and "gone-zorg" in done.stderr, (done.returncode,
                                                                 done.stderr)
    assert "Traceback" not in done.stderr
    # a tenant called `verify` is reached after `--`
    done = env.bkp("report", "--format", "json", "--", "verify")
    assert done.returncode == 3 and "verify" in done.stderr, (done.returncode, done.stderr)


# ---------------------------------------------------------------- writes and safety


def catalog_rows(home: Path) -> dict[str, list]:
    with sqlite3.connect(f"file:{home / 'catalog.db'}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type = "
                                           "'table' order by name")]
        return {t: db.execute(f"select * from \"{t}\" order by rowid").fetchall()
                for t in tables}


def test_a_report_that_cannot_be_written_is_not_recorded_as_issued(env):
    before = catalog_rows(env.home)
    for target in (env.root / "no-such-dir" / "report.html", Path("/proc/version")):
        done = env.bkp("report", "zorg-a", "--output", str(target))
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0, done.stderr
    assert catalog_rows(env.home) == before  # no report.issued for a file never written


def test_the_temporary_file_does_not_follow_a_planted_symlink(tmp_path):
    import os

    from bkp.cli.report import _write

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "report.html"
    (tmp_path / f".{out.name}.{os.getpid()}").symlink_to(victim)
    try:
        _write(out, b"<!DOCTYPE html>report")
    except Exception as exc:  # refusing is fine; writing through the link is not
        assert "Traceback" not in str(exc)
    assert victim.read_text() == "precious\n"


def test_making_a_report_adds_one_audit_event_and_changes_nothing_else(env):
    before = catalog_rows(env.home)
    keys = sorted(p.relative_to(env.home) for p in env.home.rglob("*") if p.is_file())
    write(env, "json", "one.json", "zorg-a")
    after = catalog_rows(env.home)
    assert after["audit_log"][:-1] == before["audit_log"]
    assert len(after["audit_log"]) == len(before["audit_log"]) + 1
    assert {t: r for t, r in after.items() if t != "audit_log"} == \
        {t: r for t, r in before.items() if t != "audit_log"}
    files = sorted(p.relative_to(env.home) for p in env.home.rglob("*") if p.is_file())
    assert [f for f in files if f not in keys and not f.name.startswith("catalog.db")] == []


def test_verify_writes_nothing_where_no_installation_is(env, tmp_path):
    report = write(env, "json", "r.json", "zorg-a")
    public = tmp_path / "keys.pem"
    done = env.bkp("certificate", "public-key", "--all", "--output", str(public))
    assert done.returncode == 0, done.stderr
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    done = env.bkp("report", "verify", str(report), "--public-key", str(public),
                   BKP_HOME=str(empty / "home"))
    assert done.returncode == 0, done.stderr
    assert list(empty.rglob("*")) == []


def test_hostile_text_in_a_policy_is_text_in_the_html(env):
    from tests.integration.test_report import References

    page = write(env, "html", "hostile.html").read_text()
    parser = References()
    parser.feed(page)
    assert parser.found == []
    assert page.count("</script>") == 1 and page.count("</style>") == 1
    assert "<script>" not in page and "<img" not in page and "<use" not in page


def test_a_run_edited_from_failed_to_ok_is_no_evidence(env, tmp_path):
    """A failed backup whose catalog row was changed to ok behind bkp's back: the trail
    says failed. Traceability is not met, and the run is no evidence for any control."""
    policies = tmp_path / "policies"
    shutil.copytree(env.policies, policies)
    path = policies / "zorg-a.yaml"
    path.write_text(path.read_text().replace(str(env.root.parent), "/nonexistent"))
    changed = dataclasses.replace(env, policies=policies)
    done = changed.bkp("backup", "zorg-a", "--json")
    assert done.returncode != 0
    assert json.loads(done.stdout)["runs"][0]["status"] == "failed"
    with sqlite3.connect(env.home / "catalog.db") as db:
        run_id = db.execute("select max(id) from runs where tenant = 'zorg-a' and kind = "
                            "'backup'").fetchone()[0]
        db.execute("update runs set status = 'ok', error = null where id = ?", (run_id,))
    document = make(changed, "zorg-a")
    verdicts = controls(document, "zorg-a")
    assert verdicts["traceability"]["status"] == "not_met"
    for control in verdicts.values():
        if control["status"] == "met":
            assert run_id not in [e.get("id") for e in control["evidence"]
                                  if e.get("kind") == "run"], control
