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

    # In a pod the machine's name changes every run: the canary records the stable host
    # every snapshot of this installation records (BKP_SNAPSHOT_HOST), not a pod's name.
    report, _ = env.bkp_json("drill", "immutable", BKP_SNAPSHOT_HOST="bkp-pods")
    drill = report["drills"][0]
    assert drill["status"] == "passed", drill
    proof = drill["immutability"]
    assert proof["deletion"] == "refused" and proof["canary_written"] is True, proof
    canaries = json.loads(env.restic("immutable", "snapshots", "--json", "--tag",
                                     "bkp-canary").stdout)
    assert [s["hostname"] for s in canaries] == ["bkp-pods"]
    assert proof["method"] == "DELETE of the snapshot file" and "403" in proof["detail"], proof
    # The canary is one more snapshot file, and nothing bkp lists or drills.
    assert len(snapshot_files(server, env, "immutable")) == 4
    assert proof["canary"] in snapshot_files(server, env, "immutable")
    listed, _ = env.bkp_json("snapshots", "immutable")
    assert sorted(s["id"][:8] for s in listed["snapshots"]) == sorted(ids)
    assert drill["snapshot_id"][:8] == ids[-1]  # the canary never becomes "latest"
    synced, _ = env.bkp_json("catalog", "sync", "immutable")
    assert synced["tenants"][0]["snapshots"] == 3, synced  # nor a backup in the catalog
    assert synced["tenants"][0]["latest"]["id"][:8] == ids[-1], synced

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


def start_maintenance_server(server: RestServer, base: Path) -> tuple[str, Path, object]:
    """A second `rclone serve restic`, without --append-only, on the same directory and
    certificate: the door `bkp maintain` uses, open only to the maintenance credential."""
    import os
    import subprocess

    from tests.conftest import free_port, require_tool, wait_for_port

    port = free_port()
    htpasswd = base / "htpasswd-admin"
    htpasswd.write_text(htpasswd_line(ADMIN_USER, ADMIN_PASSWORD))
    (base / "rclone-admin.conf").write_text("")
    log = base / "rclone-admin.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [require_tool("rclone"), "serve", "restic", str(server.root), "--addr",
             f"127.0.0.1:{port}", "--cert", str(server.ca_file), "--key",
             str(server.ca_file.with_suffix(".key")), "--htpasswd", str(htpasswd)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "RCLONE_CONFIG": str(base / "rclone-admin.conf")})
    wait_for_port(port, proc, "rclone serve restic (maintenance)", log=log)
    return f"https://127.0.0.1:{port}", log, proc


def admin_credentials(env: BkpEnv, tenant: str) -> Path:
    path = env.secrets / f"{tenant}.rest-admin"
    path.write_text(f"{ADMIN_USER}:{ADMIN_PASSWORD}\n")
    path.chmod(0o600)
    return path


def every_command_line_until(proc) -> list[str]:
    """Every process argument list seen on the host while `proc` runs (what ps shows)."""
    from tests.helpers import command_lines

    seen: set[str] = set()
    while proc.poll() is None:
        seen.update(command_lines())
    return sorted(seen)


def test_maintain_applies_retention_through_the_deleting_server(
        bkp_env, append_only_server, tmp_path_factory):
    from tests.e2e.test_cli import restic_shim
    from tests.integration.test_rest_destination import spellings

    env, server = bkp_env, append_only_server
    url, _, proc = start_maintenance_server(server, tmp_path_factory.mktemp("maintenance"))
    try:
        append_only_tenant(env, "maintained", server, retention={"last": 1})
        dest = env.tenants["maintained"]["destination"]
        env.write_policy("maintained", {
            **dest, "maintenance_url": f"{url}/{env.root.name}/maintained",
            "maintenance_credentials_file": str(admin_credentials(env, "maintained"))},
            retention={"last": 1})
        env.bkp_json("init", "maintained")
        ids = []
        for night in range(3):
            (env.root / "data" / "maintained" / f"night-{night}.txt").write_text(f"{night}\n")
            report, _ = env.bkp_json("backup", "maintained")
            ids.append(report["runs"][0]["snapshot_id"][:8])
        status, _ = env.bkp_json("status", "maintained")
        row = status["tenants"][0]
        assert row["maintenance"] == {"pending": 2, "last": None}, row
        assert row["snapshot_count"] == 3, row
        drilled, _ = env.bkp_json("drill", "maintained")
        canary = drilled["drills"][0]["immutability"]["canary"]
        assert len(snapshot_files(server, env, "maintained")) == 4

        shim_dir = env.root / "shim"
        shim_dir.mkdir()
        argv_log = restic_shim(shim_dir)
        watched = subprocess_bkp(env, shim_dir, "maintain", "maintained", "--json")
        running = every_command_line_until(watched)
        out, err = watched.communicate(timeout=600)
        assert watched.returncode == 0, out + err
        entry = json.loads(out)["tenants"][0]
        assert entry["status"] == "ok" and entry["snapshots_kept"] == 1, entry
        assert entry["snapshots_forgotten"] == 2, entry
        assert entry["repository"] == f"rest:{url}/{env.root.name}/maintained"
        # Only the newest snapshot and the canary are left: retention went through the
        # second server, and the canary is never forgotten.
        listed, _ = env.bkp_json("snapshots", "maintained")
        assert [s["id"][:8] for s in listed["snapshots"]] == [ids[-1]]
        assert canary in snapshot_files(server, env, "maintained")
        assert len(snapshot_files(server, env, "maintained")) == 2

        status, _ = env.bkp_json("status", "maintained")
        maintenance = status["tenants"][0]["maintenance"]
        assert maintenance["pending"] == 0 and maintenance["last"]["status"] == "ok", status
        report, _ = env.bkp_json("drill", "maintained")  # the proof still holds after
        assert report["drills"][0]["immutability"]["deletion"] == "refused"

        argv = argv_log.read_text()
        assert "forget" in argv
        catalog = (env.home / "catalog.db").read_bytes()
        events = sqlite3.connect(env.home / "catalog.db").execute(
            "select group_concat(details) from audit_log where action = 'maintain'"
        ).fetchone()[0]
        assert "snapshots_forgotten" in events
        said = out + err
        for secret in [*spellings(server), ADMIN_PASSWORD]:
            assert secret not in argv, "a password in restic's argv"
            assert not any(secret in line for line in running), "a password in a process"
            assert secret not in said and secret.encode() not in catalog
        assert any("maintain" in line for line in running)
    finally:
        stop(proc)


def subprocess_bkp(env: BkpEnv, shim_dir: Path, *args: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "bkp", *args],
                            env=env.env(PATH=f"{shim_dir}:{env.env()['PATH']}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_maintain_refuses_tenants_it_cannot_maintain(bkp_env, rest, append_only_server):
    env = bkp_env
    env.rest_tenant("ordinary", rest)
    append_only_tenant(env, "elsewhere", append_only_server)  # its credential is not here
    for tenant, words in (("ordinary", "has no append_only destination"),
                          ("elsewhere", "is not on this host")):
        done = env.bkp("maintain", tenant, "--json")
        assert done.returncode == 3, (done.stdout, done.stderr)
        entry = json.loads(done.stdout)["tenants"][0]
        assert entry["status"] == "failed" and words in entry["error"], entry
        assert "Traceback" not in done.stderr
    # --all takes only the append-only tenants (and says why this one cannot be done)
    done = env.bkp("maintain", "--all", "--json")
    assert done.returncode == 3
    assert [t["tenant"] for t in json.loads(done.stdout)["tenants"]] == ["elsewhere"]


# ------------------------------------------------------------------ S3 Object Lock (moto)

def locked_bucket(s3, env: BkpEnv, tenant: str, mode: str | None, days: int = 0,
                  years: int = 0, lock: bool = True) -> str:
    """A bucket with Object Lock (and a default retention when `mode`), for `tenant`."""
    name = f"{env.root.name[:20]}-{tenant}".lower().replace("_", "-")
    client = s3.client()
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock,
                         CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    if mode:
        period = {"Days": days} if days else {"Years": years}
        client.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": mode, **period}}})
    return name


def object_lock_tenant(env: BkpEnv, s3, tenant: str, bucket: str, **overrides) -> None:
    env.s3_tenant(tenant, s3, bucket=bucket, create=False, **overrides)
    env.write_policy(tenant, {**env.tenants[tenant]["destination"], "object_lock": True},
                     **overrides)


@pytest.mark.parametrize(("mode", "days", "lock", "words"), [
    (None, 0, False, "has no S3 Object Lock"),
    (None, 0, True, "without a default retention"),
    ("COMPLIANCE", 3, True, "keeps objects locked for 3 days (COMPLIANCE), the keep rules "
                            "promise restore points 28 days back"),
    ("GOVERNANCE", 5, True, "keeps objects locked for 5 days (GOVERNANCE)"),
])
def test_object_lock_preflight_refuses_a_bucket_that_does_not_lock_long_enough(
        bkp_env, s3, mode, days, lock, words):
    env = bkp_env
    tenant = f"lock-{(mode or 'none').lower()}-{int(lock)}"
    bucket = locked_bucket(s3, env, tenant, mode, days=days, lock=lock)
    object_lock_tenant(env, s3, tenant, bucket, retention={"last": 3, "daily": 7, "weekly": 4})
    for command in ("init", "backup"):
        done = env.bkp(command, tenant, "--json")
        assert done.returncode == 4, (command, done.stdout, done.stderr)
        assert words in done.stdout, done.stdout
        assert "Traceback" not in done.stderr
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket)  # nothing written


def test_an_object_locked_bucket_takes_backups_and_refuses_the_canary_version_delete(
        bkp_env, s3):
    env = bkp_env
    bucket = locked_bucket(s3, env, "vault", "COMPLIANCE", days=30)
    object_lock_tenant(env, s3, "vault", bucket)  # last 3, daily 7: 7 days needed
    env.bkp_json("init", "vault")
    report, _ = env.bkp_json("backup", "vault")
    kept = report["runs"][0]["snapshot_id"][:8]
    report, _ = env.bkp_json("drill", "vault")
    drill = report["drills"][0]
    assert drill["status"] == "passed", drill
    proof = drill["immutability"]
    assert proof["deletion"] == "refused", proof
    assert proof["method"] == "DeleteObject with the version id"
    assert "AccessDenied" in proof["detail"], proof
    key = f"bkp/snapshots/{proof['canary']}"
    versions = s3.client().list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    assert [v["Key"] for v in versions] == [key]  # the version is still there
    listed, _ = env.bkp_json("snapshots", "vault")
    assert [s["id"][:8] for s in listed["snapshots"]] == [kept]  # the canary is not listed


def test_governance_mode_is_accepted_with_a_warning(bkp_env, s3):
    env = bkp_env
    bucket = locked_bucket(s3, env, "governed", "GOVERNANCE", years=1)
    object_lock_tenant(env, s3, "governed", bucket)
    done = env.bkp("init", "governed", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "GOVERNANCE mode, which a credential with s3:BypassGovernanceRetention can lift" \
        in done.stderr, done.stderr


def test_object_lock_with_a_restic_too_old_to_send_content_md5_is_refused(bkp_env, s3):
    env = bkp_env
    shim_dir = env.root / "old-restic"
    shim_dir.mkdir()
    import shutil

    # restic 0.12 reports itself so, and is otherwise the real one: bkp must refuse by the
    # version it reads, before a single upload.
    shim = shim_dir / "restic"
    shim.write_text('#!/bin/sh\nif [ "$1" = version ]; then echo "restic 0.12.1 compiled '
                    'with go1.16 on linux/amd64"; exit 0; fi\n'
                    f'exec {shutil.which("restic")} "$@"\n')
    shim.chmod(0o755)
    bucket = locked_bucket(s3, env, "oldrestic", "COMPLIANCE", days=30)
    object_lock_tenant(env, s3, "oldrestic", bucket)
    done = env.bkp("init", "oldrestic", "--json", PATH=f"{shim_dir}:{env.env()['PATH']}")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "restic 0.12.1 cannot write to a bucket with S3 Object Lock" in done.stdout
    assert "restic 0.13.0 or newer is needed" in done.stdout
