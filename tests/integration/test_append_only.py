"""Backups a stolen nightly credential cannot delete, proven by every drill: an append-only
REST server (`rclone serve restic --append-only` with TLS and htpasswd on loopback), with
`bkp maintain` applying retention through a second, deleting server on the same directory;
and S3 Object Lock on a moto server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import BkpEnv, RestServer, htpasswd_line, start_rest, stop

pytestmark = pytest.mark.integration

ADMIN_USER = "bkp-maintenance"
ADMIN_PASSWORD = "Maint:pw@/#%20-never-printed-4242"


@pytest.fixture
def append_only_server(tmp_path_factory):
    server, proc = start_rest(tmp_path_factory.mktemp("append-only"), append_only=True)
    yield server
    stop(proc)


def append_only_tenant(env: BkpEnv, tenant: str, server: RestServer, **overrides) -> Path:
    env.rest_tenant(tenant, server)
    destination = {**env.tenants[tenant]["destination"], "append_only": True,
                   "maintenance_credentials_file": str(env.secrets / f"{tenant}.rest-admin")}
    return env.write_policy(tenant, destination, **overrides)


def snapshot_files(server: RestServer, env: BkpEnv, tenant: str) -> list[str]:
    folder = server.root / env.root.name / tenant / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def drill_rows(env: BkpEnv, tenant: str) -> list[dict]:
    db = sqlite3.connect(env.home / "catalog.db")
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute(
        "select * from runs where tenant = ? and kind = 'drill' order by id", [tenant])]


def test_an_append_only_drill_proves_the_nightly_credential_cannot_delete(
        bkp_env, append_only_server):
    env, server = bkp_env, append_only_server
    append_only_tenant(env, "immutable", server, retention={"last": 1})
    env.bkp_json("init", "immutable")
    ids = []
    for night in range(3):
        (env.root / "data" / "immutable" / f"night-{night}.txt").write_text(f"{night}\n")
        report, _ = env.bkp_json("backup", "immutable")
        ids.append(report["runs"][0]["snapshot_id"][:8])
    assert len(snapshot_files(server, env, "immutable")) == 3  # nothing forgotten

    report, _ = env.bkp_json("drill", "immutable")
    drill = report["drills"][0]
    assert drill["status"] == "passed", drill
    proof = drill["immutability"]
    assert proof["deletion"] == "refused" and proof["canary_written"] is True, proof
    assert proof["method"] == "restic forget" and "403" in proof["detail"], proof
    # The canary is one more snapshot file, and nothing bkp lists or drills.
    assert len(snapshot_files(server, env, "immutable")) == 4
    assert proof["canary"] in snapshot_files(server, env, "immutable")
    listed, _ = env.bkp_json("snapshots", "immutable")
    assert sorted(s["id"][:8] for s in listed["snapshots"]) == sorted(ids)
    assert drill["snapshot_id"][:8] == ids[-1]  # the canary never becomes "latest"

    again, _ = env.bkp_json("drill", "immutable")
    second = again["drills"][0]
    assert second["status"] == "passed", second
    assert second["immutability"]["canary"] == proof["canary"]  # written once, reused
    assert second["immutability"]["canary_written"] is False
    assert len(snapshot_files(server, env, "immutable")) == 4
    assert not list((server.root / env.root.name / "immutable" / "locks").iterdir())

    rows = drill_rows(env, "immutable")
    assert [json.loads(r["immutability"])["deletion"] for r in rows] == ["refused", "refused"]
    text = Path(second["report"]).read_text()
    assert "REFUSED: the nightly credential cannot delete backups" in text, text
    status, _ = env.bkp_json("status", "immutable")
    assert status["tenants"][0]["last_drill"]["status"] == "passed"


def test_a_destination_that_claims_append_only_but_deletes_fails_the_drill(bkp_env, rest):
    env = bkp_env
    append_only_tenant(env, "pretender", rest)  # the session's server deletes what it is told
    env.bkp_json("init", "pretender")
    report, _ = env.bkp_json("backup", "pretender")
    kept = report["runs"][0]["snapshot_id"][:8]
    done = env.bkp("drill", "pretender", "--json")
    assert done.returncode == 5, (done.stdout, done.stderr)
    drill = json.loads(done.stdout)["drills"][0]
    assert drill["status"] == "failed" and drill["immutability"]["deletion"] == "succeeded"
    messages = " ".join(p["message"] for p in drill["problems"])
    assert "the backups are deletable by the nightly credential" in messages, messages
    assert [json.loads(r["immutability"])["deletion"] for r in drill_rows(env, "pretender")] \
        == ["succeeded"]
    assert "SUCCEEDED: the backups are deletable" in Path(drill["report"]).read_text()
    # Only the canary went: the tenant's own snapshot is still there.
    listed, _ = env.bkp_json("snapshots", "pretender")
    assert [s["id"][:8] for s in listed["snapshots"]] == [kept]
    # The next drill writes a new canary and fails again, never passes by accident.
    done = env.bkp("drill", "pretender", "--json")
    assert done.returncode == 5, done.stdout
    assert json.loads(done.stdout)["drills"][0]["immutability"]["canary_written"] is True
