"""Append-only copies at a second site: `bkp maintain` applies retention there through the
copy's own maintenance door, the immutability of the copy is proven by its own copy drill
(and a normal drill and `bkp status` say when it last was), and `bkp restore --copy`
brings the data back from the copy when the primary site is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import start_rest, stop
from tests.integration.test_append_only import (
    ADMIN_PASSWORD,
    admin_credentials,
    snapshot_files,
    start_maintenance_server,
)
from tests.integration.test_copies import add_copies, snapshots

pytestmark = pytest.mark.integration


@pytest.fixture
def append_only_copy_site(tmp_path_factory):
    """The second site: an append-only REST server and its deleting maintenance door."""
    server, proc = start_rest(tmp_path_factory.mktemp("copy-site"), append_only=True)
    url, _, maintenance = start_maintenance_server(server,
                                                   tmp_path_factory.mktemp("copy-maint"))
    yield server, url, maintenance
    stop(maintenance)
    stop(proc)


def tenant_with_append_only_copy(env, server, url, tenant: str) -> None:
    env.local_tenant(tenant, retention={"last": 1})
    add_copies(env, tenant, {
        "id": "offsite", "type": "rest", "country": "DE", "site": "site-b",
        "url": f"{server.url}/{env.root.name}/{tenant}",
        "credentials_file": str(server.credentials_file), "ca_file": str(server.ca_file),
        "append_only": True, "maintenance_url": f"{url}/{env.root.name}/{tenant}",
        "maintenance_credentials_file": str(admin_credentials(env, tenant))})


def copy_snapshot_files(server, env, tenant: str) -> list[str]:
    return snapshot_files(server, env, tenant)


def test_maintain_applies_retention_on_an_append_only_copy(bkp_env, append_only_copy_site):
    env, (server, url, maintenance) = bkp_env, append_only_copy_site
    tenant_with_append_only_copy(env, server, url, "tweesite")
    env.bkp_json("init", "tweesite")
    ids = []
    for night in range(3):
        (env.root / "data" / "tweesite" / f"night-{night}.txt").write_text(f"{night}\n")
        report, _ = env.bkp_json("backup", "tweesite")
        run = report["runs"][0]
        assert [c["status"] for c in run["copies"]] == ["ok"], run
        ids.append(run["snapshot_id"][:8])
    # The primary applied its retention; the append-only copy kept all three.
    assert len(snapshots(env, "tweesite")) == 1
    assert len(copy_snapshot_files(server, env, "tweesite")) == 3
    status, _ = env.bkp_json("status", "tweesite")
    copy = status["tenants"][0]["copies"][0]
    assert copy["maintenance"] == {"pending": 2, "last": None}, copy
    assert "maintenance" not in status["tenants"][0]  # the primary is not append-only

    # --all takes a tenant whose only append-only repository is a copy.
    done = env.bkp("maintain", "--all", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    entry = json.loads(done.stdout)["tenants"][0]
    assert entry["tenant"] == "tweesite" and entry["status"] == "ok", entry
    assert entry["repository"] is None, entry  # nothing to maintain at the destination
    [maintained] = entry["copies"]
    assert maintained["id"] == "offsite" and maintained["status"] == "ok", maintained
    assert maintained["snapshots_kept"] == 1 and maintained["snapshots_forgotten"] == 2
    assert maintained["repository"] == f"rest:{url}/{env.root.name}/tweesite"
    assert originals_of(snapshots(env, "tweesite", "offsite")) == {ids[-1]}
    status, _ = env.bkp_json("status", "tweesite")
    copy = status["tenants"][0]["copies"][0]
    assert copy["maintenance"]["pending"] == 0, copy
    assert copy["maintenance"]["last"]["status"] == "ok", copy
    text = env.bkp("status", "tweesite").stdout
    assert "copy offsite" in text and "0 snapshots waiting for maintenance" in text, text
    said = done.stdout + done.stderr + text
    assert ADMIN_PASSWORD not in said and server.password not in said

    # The next night copies on, and counts again what waits.
    (env.root / "data" / "tweesite" / "night-3.txt").write_text("3\n")
    run = env.bkp_json("backup", "tweesite")[0]["runs"][0]
    assert run["copies"][0]["status"] == "ok", run
    status, _ = env.bkp_json("status", "tweesite")
    assert status["tenants"][0]["copies"][0]["maintenance"]["pending"] == 1

    # A copy that cannot be maintained fails the tenant (1) and is named.
    stop(maintenance)
    done = env.bkp("maintain", "tweesite", "--json")
    assert done.returncode == 1, (done.stdout, done.stderr)
    entry = json.loads(done.stdout)["tenants"][0]
    assert entry["status"] == "failed" and "copy offsite" in entry["error"], entry
    assert entry["copies"][0]["status"] == "failed", entry
    assert "Traceback" not in done.stderr


def originals_of(items: list[dict]) -> set[str]:
    return {(s.get("original") or s["id"])[:8] for s in items}


def test_a_copy_is_proven_immutable_by_its_own_drill_and_restores_when_the_primary_is_lost(
        bkp_env, append_only_copy_site):
    env, (server, url, _) = bkp_env, append_only_copy_site
    tenant_with_append_only_copy(env, server, url, "rampsite")
    env.bkp_json("init", "rampsite")
    run = env.bkp_json("backup", "rampsite")[0]["runs"][0]

    # A normal drill proves the destination only: it says the copy is not proven yet.
    drill = env.bkp_json("drill", "rampsite")[0]["drills"][0]
    assert drill["status"] == "passed", drill
    assert drill["copies_immutability"] == [
        {"id": "offsite", "proven": False, "last_proof": None}], drill

    # The copy's own drill tries to delete the canary there with the nightly credential.
    copy_drill = env.bkp_json("drill", "rampsite", "--copy", "offsite")[0]["drills"][0]
    assert copy_drill["status"] == "passed" and copy_drill["copy"] == "offsite", copy_drill
    proof = copy_drill["immutability"]
    assert proof["deletion"] == "refused" and "403" in proof["detail"], proof
    assert proof["canary"] in copy_snapshot_files(server, env, "rampsite")

    drill = env.bkp_json("drill", "rampsite")[0]["drills"][0]
    [said] = drill["copies_immutability"]
    assert said["proven"] is True and said["last_proof"]["run_id"] == copy_drill["run_id"]
    assert said["last_proof"]["deletion"] == "refused", said
    report = Path(drill["report"]).read_text()
    assert "copy offsite: immutability proven by copy drill" in report, report
    status, _ = env.bkp_json("status", "rampsite")
    copy = status["tenants"][0]["copies"][0]
    assert copy["immutability"]["proven"] is True, copy
    assert copy["immutability"]["run_id"] == copy_drill["run_id"], copy

    # The primary site is lost: restore from the copy.
    shutil.rmtree(env.root / "offsite" / "rampsite")
    target = env.root / "restored"
    done, _ = env.bkp_json("restore", "rampsite", "--copy", "offsite", "--target",
                           str(target))
    assert done["copy"] == "offsite" and done["files"] >= 1, done
    assert done["snapshot_id"][:8] != run["snapshot_id"][:8]  # the copy's own id
    source = env.root / "data" / "rampsite"
    restored = target / str(source).lstrip("/")
    assert sorted(p.name for p in restored.iterdir()) == sorted(p.name for p in
                                                                 source.iterdir())
    import sqlite3

    details = sqlite3.connect(env.home / "catalog.db").execute(
        "select details from audit_log where action = 'restore'").fetchone()[0]
    assert json.loads(details)["copy"] == "offsite", details


def test_a_copy_that_claims_append_only_but_deletes_fails_its_drill_and_is_not_proven(
        bkp_env, rest):
    env = bkp_env
    env.local_tenant("schijnsite")
    add_copies(env, "schijnsite", {
        # The session's server deletes what it is told: the claim is false.
        "id": "offsite", "type": "rest", "country": "DE", "site": "site-b",
        "url": f"{rest.url}/{env.root.name}/schijnsite",
        "credentials_file": str(rest.credentials_file), "ca_file": str(rest.ca_file),
        "append_only": True,
        # Lives on the maintenance host only: the nightly host does not have it.
        "maintenance_credentials_file": str(env.secrets / "not-here.rest-admin")})
    env.bkp_json("init", "schijnsite")
    env.bkp_json("backup", "schijnsite")
    done = env.bkp("drill", "schijnsite", "--copy", "offsite", "--json")
    assert done.returncode == 5, (done.stdout, done.stderr)
    copy_drill = json.loads(done.stdout)["drills"][0]
    assert copy_drill["immutability"]["deletion"] == "succeeded", copy_drill
    assert "deletable by the nightly credential" in json.dumps(copy_drill["problems"])

    drill = env.bkp_json("drill", "schijnsite")[0]["drills"][0]
    [said] = drill["copies_immutability"]
    assert said["proven"] is False and said["last_proof"]["deletion"] == "succeeded", said
    assert "copy offsite: immutability NOT proven" in Path(drill["report"]).read_text()
    status, _ = env.bkp_json("status", "schijnsite")
    assert status["tenants"][0]["copies"][0]["immutability"]["proven"] is False
    assert "immutability NOT proven" in env.bkp("status", "schijnsite").stdout

    # The maintenance credential is not on this host: 3, the copy named.
    done = env.bkp("maintain", "schijnsite", "--json")
    assert done.returncode == 3, (done.stdout, done.stderr)
    entry = json.loads(done.stdout)["tenants"][0]
    assert "copy offsite" in entry["error"] and "is not on this host" in entry["error"]


def test_an_object_locked_copy_is_proven_by_its_own_drill_with_the_version_delete(
        bkp_env, s3):
    from tests.integration.test_append_only import locked_bucket

    env = bkp_env
    env.local_tenant("kluis")
    bucket = locked_bucket(s3, env, "kluis-copy", "COMPLIANCE", days=30)
    add_copies(env, "kluis", {
        "id": "vault", "type": "s3", "country": "DE", "site": "site-b",
        "endpoint": s3.endpoint, "bucket": bucket, "region": "eu-central-1", "prefix": "bkp",
        "credentials_file": str(s3.credentials_file), "object_lock": True})
    env.bkp_json("init", "kluis")
    assert env.bkp_json("backup", "kluis")[0]["runs"][0]["copies"][0]["status"] == "ok"
    copy_drill = env.bkp_json("drill", "kluis", "--copy", "vault")[0]["drills"][0]
    assert copy_drill["status"] == "passed", copy_drill
    proof = copy_drill["immutability"]
    assert proof["deletion"] == "refused", proof
    assert proof["method"] == "DeleteObject with the version id", proof
    # The canary went to the copy's bucket, not anywhere else.
    key = f"bkp/snapshots/{proof['canary']}"
    assert s3.client().list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    status, _ = env.bkp_json("status", "kluis")
    copy = status["tenants"][0]["copies"][0]
    assert copy["immutability"]["proven"] is True and "maintenance" not in copy, copy
