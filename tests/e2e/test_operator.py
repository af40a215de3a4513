"""The operator's daily life: dry runs, plain restic for a tenant, causes in plain sight."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import stat

import pytest

pytestmark = pytest.mark.e2e


def table_counts(env) -> dict:
    path = env.home / "catalog.db"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        return {t: conn.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def test_run_dry_run_says_what_is_due_and_does_nothing(bkp_env):
    env = bkp_env
    env.local_tenant("preview")
    env.bkp_json("init", "preview")
    before = table_counts(env)
    preview, _ = env.bkp_json("run", "--dry-run")
    assert preview["dry_run"] is True and preview["runs"] == []
    assert [(d["tenant"], d["kind"]) for d in preview["due"]] == [("preview", "backup"),
                                                                 ("preview", "drill")]
    assert all("not yet done" in d["reason"] for d in preview["due"])
    assert table_counts(env) == before
    assert json.loads(env.restic("preview", "snapshots", "--json").stdout) == []


def test_sanitize_dry_run_checks_everything_and_writes_nothing(bkp_env):
    env = bkp_env
    image = env.root / "disk.img"
    image.write_bytes(os.urandom(2 << 20))
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    env.bkp_json("media", "register", "--serial", "DRY-1", "--type", "ssd")
    before = table_counts(env)
    plan, _ = env.bkp_json("sanitize", str(image), "--serial", "DRY-1", "--dry-run",
                           "--method", "dod3")
    assert plan["would"] == "sanitize" and plan["passes"] == ["zero", "ones", "random"]
    refused, _ = env.bkp_json("sanitize", str(image), "--serial", "NOT-REGISTERED",
                              "--dry-run", expect=4)
    assert refused["would"] == "refuse" and "not in the media register" in refused["error"]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
    assert table_counts(env) == before  # no record, no audit event


def test_plain_restic_for_a_tenant_is_set_up_audited_and_bounded(bkp_env):
    env = bkp_env
    env.local_tenant("plain", retention={"last": 3, "legal_hold": True})
    env.bkp_json("init", "plain")
    env.bkp_json("backup", "plain")
    listed = env.bkp("restic", "plain", "--", "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
    forget = env.bkp("restic", "plain", "--", "forget", "--keep-last", "1", "--prune")
    assert forget.returncode == 4 and "legal hold" in forget.stderr
    elsewhere = env.bkp("restic", "plain", "--", "-r", "/tmp/other", "snapshots")
    assert elsewhere.returncode == 2
    failing = env.bkp("restic", "plain", "--", "cat", "blob", "0" * 64)
    assert failing.returncode == 1
    events = env.bkp_json("audit", "log", "--tenant", "plain")[0]["events"]
    restic_events = [(e["outcome"], e["details"]["command"]) for e in events
                     if e["action"] == "restic"]
    assert ("refused", ["forget"]) in restic_events
    assert ("ok", ["snapshots"]) in restic_events
    assert len(json.loads(env.restic("plain", "snapshots", "--json").stdout)) == 1


def test_the_log_file_has_utc_lines_and_is_private(bkp_env):
    env = bkp_env
    env.local_tenant("logged")
    log = env.root / "logs" / "bkp.log"
    env.bkp("--log-file", str(log), "init", "logged")
    text = log.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO bkp.runner: run: restic", text,
                     re.M), text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert env.password not in text


def test_status_shows_why_a_tenant_failed(bkp_env):
    env = bkp_env
    env.local_tenant("broken-source")
    env.bkp_json("init", "broken-source")
    (env.root / "data" / "broken-source" / "patients" / "a.txt").unlink()
    import shutil
    shutil.rmtree(env.root / "data" / "broken-source")
    env.bkp("backup", "broken-source")
    table = env.bkp("status")
    assert "does not exist" in table.stdout, table.stdout
    status, _ = env.bkp_json("status")
    assert "does not exist" in status["tenants"][0]["error"]


def test_a_manual_backup_clears_the_alerts_of_a_failed_night(bkp_env, ping_server):
    env = bkp_env
    base, pings = ping_server
    env.local_tenant("flapped", monitoring={"healthcheck_url": f"{base}/ping/flapped"},
                     schedule={"backup": "0 2 * * *"})
    env.bkp_json("init", "flapped")
    metrics = env.root / "bkp.prom"
    source = env.root / "data" / "flapped"
    hidden = env.root / "data" / "hidden"
    source.rename(hidden)  # the tenant's filesystem is not mounted tonight
    extra = {"BKP_HEALTHCHECK_URL": f"{base}/ping/night",
             "BKP_PROMETHEUS_TEXTFILE": str(metrics)}
    env.bkp_json("run", expect=1, **extra)
    assert 'bkp_backup_last_ok{tenant="flapped"} 0' in metrics.read_text()
    assert pings[-1][0] == "/ping/night/fail"
    hidden.rename(source)  # mounted again: the operator re-runs it by hand
    env.bkp_json("backup", "flapped", **extra)
    assert 'bkp_backup_last_ok{tenant="flapped"} 1' in metrics.read_text()
    paths = [path for path, _ in pings]
    assert paths[-3:] == ["/ping/flapped/start", "/ping/flapped", "/ping/night"]


def test_backup_dry_run_says_what_would_be_added_and_writes_nothing(bkp_env):
    env = bkp_env
    env.local_tenant("trial")
    env.bkp_json("init", "trial")
    before = table_counts(env)
    repository = env.root / "offsite" / "trial"
    files_before = sorted(p for p in repository.rglob("*") if p.is_file() and
                          "locks" not in p.parts)
    preview, _ = env.bkp_json("backup", "trial", "--dry-run")
    run = preview["runs"][0]
    assert run["status"] == "ok" and run["result"] == "dry-run" and run["snapshot_id"] is None
    assert run["files"] == 2 and run["bytes_added"] > 0
    assert table_counts(env) == before
    files_after = sorted(p for p in repository.rglob("*") if p.is_file() and
                         "locks" not in p.parts)
    assert files_after == files_before
    assert json.loads(env.restic("trial", "snapshots", "--json").stdout) == []
