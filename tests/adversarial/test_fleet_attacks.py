"""Attacks on the fleet of pods (issue 17): results in the inbox that are forged, replayed,
malformed or hostile while validly signed, the pod's kept record, and the manifests.

One genuine night is made once (module scope): a pod backs up kliniek-a and leaves its
signed result. Each test then gathers into a central catalog of its own (a fresh BKP_HOME and
inbox), with objects it made from that genuine result: re-signed with the tenant's own key
when the attack is a pod that says something hostile, unsigned when it is anyone who can
write to the inbox."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

TENANT = "kliniek-a"
OTHER = "kliniek-b"


def pod(env, tenant: str, command: str, name: str, config: Path) -> subprocess.CompletedProcess:
    """One job in a pod: an empty BKP_HOME, the tenant's policy alone, its result key."""
    base = env.root / "pods" / name
    home, policies = base / "home", base / "policies"
    home.mkdir(parents=True, mode=0o700)
    policies.mkdir(mode=0o700)
    shutil.copy(env.policies / f"{tenant}.yaml", policies)
    return subprocess.run(
        [sys.executable, "-m", "bkp", command, tenant, "--json"], capture_output=True,
        text=True, timeout=300,
        env=env.env(BKP_HOME=str(home), BKP_POLICIES=str(policies), BKP_CONFIG=str(config),
                    BKP_SNAPSHOT_HOST=tenant, BKP_OPERATOR="scheduler",
                    BKP_RESULT_KEY=str(env.root / "keys" / f"{tenant}.result.key")))


def results_config(path: Path, inbox: Path, keys: Path) -> Path:
    path.write_text(yaml.safe_dump({"results": {
        "inbox": {"type": "local", "country": "NL", "path": str(inbox)},
        "keys": str(keys)}}))
    return path


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from tests.conftest import new_bkp_env

    env = new_bkp_env(tmp_path_factory.mktemp("fleet-attacks"))
    for tenant in (TENANT, OTHER):
        env.local_tenant(tenant)
    config = results_config(env.root / "bkp.yaml", env.root / "inbox", env.root / "keys")
    env.bkp_json("init", "--all", BKP_CONFIG=str(config))
    env.bkp_json("catalog", "result-keys", "--all", BKP_CONFIG=str(config))
    done = pod(env, TENANT, "backup", "night-1", config)
    assert done.returncode == 0, done.stderr
    genuine = next((env.root / "inbox").glob(f"*-{TENANT}-backup-*.json"))
    return env, genuine


class Central:
    """A central catalog of the test's own, gathering from an inbox of its own."""

    def __init__(self, env, root: Path):
        self.env = env
        self.inbox = root / "inbox"
        self.inbox.mkdir(parents=True)
        self.home = root / "central"
        self.home.mkdir(mode=0o700)
        self.config = results_config(root / "bkp.yaml", self.inbox, env.root / "keys")

    def vars(self, **extra) -> dict:
        return {"BKP_HOME": str(self.home), "BKP_CONFIG": str(self.config), **extra}

    def bkp_json(self, *args, expect: int | None = 0, **extra):
        return self.env.bkp_json(*args, expect=expect, **self.vars(**extra))

    def bkp(self, *args, **extra):
        return self.env.bkp(*args, **self.vars(**extra))

    def sync(self, expect: int | None = 0) -> dict:
        return self.bkp_json("catalog", "sync", "--all", expect=expect)[0]

    def put(self, name: str, data: bytes) -> Path:
        path = self.inbox / name
        path.write_bytes(data)
        return path


@pytest.fixture
def central(night, tmp_path):
    return Central(night[0], tmp_path)


def private_key(env, tenant: str):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key((env.root / "keys" / f"{tenant}.result.key").read_bytes(),
                                password=None)


def genuine_document(night) -> dict:
    return json.loads(night[1].read_text())["document"]


def signed(env, document: dict, signer: str | None = None) -> tuple[str, bytes]:
    """(object name, bytes) of `document` signed by `signer`'s key (its own tenant's)."""
    from bkp.evidence.pod_results import object_name, sign

    return object_name(document), sign(document, private_key(env, signer or
                                                              document["tenant"]))


def reworded(night, change, *, new_id: str = "a" * 32) -> dict:
    """The genuine document with a new id (another result), changed by `change`."""
    document = genuine_document(night)
    document["id"] = new_id
    change(document)
    return document


def status_row(central, tenant: str) -> dict:
    status, _ = central.bkp_json("status", expect=None)
    return next(row for row in status["tenants"] if row["tenant"] == tenant)


# ---------------------------------------------------------------- hostile results, signed

def _set_run(**values):
    return lambda document: document["runs"][0].update(values)


def _set_child(table: str, row: dict):
    return lambda document: document["runs"][0].update({table: [row]})


def _event_run_id(value):
    def change(document):
        details = json.loads(document["events"][-1]["details"])
        document["events"][-1]["details"] = json.dumps({**details, "run_id": value})
    return change


def _event_outcome(outcome: str):
    def change(document):
        document["events"][-1]["outcome"] = outcome
    return change


HOSTILE = {
    # values SQLite cannot hold: the gatherer died on them, and nothing after them (nor any
    # repository's snapshot list) reached the catalog
    "a number too large for the catalog": _set_run(files=10**30),
    "a copy row with a number too large": _set_child(
        "copy_results", {"copy_id": "b", "status": "ok", "snapshots_copied": 10**40}),
    "a dump row with a number too large": _set_child(
        "database_dumps", {"name": "db", "type": "postgresql", "status": "ok",
                           "bytes": -10**40}),
    "a run id that is a list": _set_run(id=[1]),
    "an event naming a run by a list": _event_run_id([1]),
    # times `bkp status` cannot read: every tenant's status died on one of them
    "an end time that is not a time": _set_run(ended_at="yesterday"),
    "a start time that is a number": _set_run(started_at=5),
    "a copy time that is not a time": _set_child(
        "copy_results", {"copy_id": "b", "status": "ok", "copied_at": "soon"}),
    # an infinite size: `bkp status --json` printed Infinity, which is no JSON
    "an infinite repository size": _set_run(repository_bytes=float("inf")),
    # a verdict the result's kind cannot carry, or its own events contradict
    "a drill verdict in a backup result": _set_run(kind="drill", status="passed"),
    "a run still running": _set_run(status="running"),
    "a run its own events call failed": _event_outcome("failed"),
}


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_a_signed_result_the_catalog_cannot_take_is_rejected_and_the_night_still_gathered(
        night, central, attack):
    """A result signed with the tenant's own key that carries what no pod writes. It is
    rejected (exit 5), and the rest of the night is gathered: the genuine result after it,
    and every repository's snapshot list; `bkp status` and the audit trail stay sound."""
    env = night[0]
    hostile_name, hostile = signed(env, reworded(night, HOSTILE[attack], new_id="0" * 32))
    central.put(hostile_name.replace(hostile_name[:8], "20000101"), hostile)  # first
    central.put(night[1].name, night[1].read_bytes())
    done = central.sync(expect=5)
    assert [item["object"] for item in done["results"]["rejected"]] == [
        hostile_name.replace(hostile_name[:8], "20000101")], done["results"]
    assert done["results"]["ingested"] == 1
    assert {row["tenant"]: row["status"] for row in done["tenants"]} == {
        TENANT: "ok", OTHER: "ok"}
    status, _ = central.bkp_json("status")
    row = next(r for r in status["tenants"] if r["tenant"] == TENANT)
    assert row["last_backup"]["status"] == "ok" and row["state"] == "ok", row
    assert row["last_drill"] is None, row
    verified, _ = central.bkp_json("audit", "verify")
    assert verified["valid"] is True, verified["problems"]


def test_a_result_nested_past_any_parser_is_rejected_not_a_crash(night, central):
    """Anyone who can write to the inbox, without any key: an object named as a result whose
    JSON nests deeper than Python's parser goes (a few hundred kilobytes)."""
    from bkp.evidence.pod_results import object_name

    document = genuine_document(night)
    document["id"] = "b" * 32
    deep = object_name(document).replace(object_name(document)[:8], "20000101")
    central.put(deep, b'{"document":' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    central.put(night[1].name, night[1].read_bytes())
    done = central.sync(expect=5)
    assert [item["object"] for item in done["results"]["rejected"]] == [deep]
    assert done["results"]["ingested"] == 1


# ---------------------------------------------------------------- the inbox itself

def test_a_pipe_or_a_link_named_as_a_result_neither_hangs_nor_is_followed(night, central,
                                                                         tmp_path):
    """A shared-directory inbox is writable by every pod: one leaves a named pipe (opening it
    waited for a writer forever: the gatherer never finished) and a link to a file of the
    gatherer's host. Both are rejected as no result; the genuine result is gathered."""
    from bkp.evidence.pod_results import object_name

    document = genuine_document(night)
    pipe = object_name({**document, "id": "c" * 32}).replace("2", "1", 1)
    link = object_name({**document, "id": "d" * 32}).replace("2", "1", 1)
    os.mkfifo(central.inbox / pipe)
    secret = tmp_path / "host-secret.txt"
    secret.write_text("BSN 123456782\n")
    (central.inbox / link).symlink_to(secret)
    central.put(night[1].name, night[1].read_bytes())
    done = central.bkp("catalog", "sync", "--all", "--json", timeout=120)
    assert done.returncode == 5, done.stderr
    results = json.loads(done.stdout)["results"]
    assert sorted(item["object"] for item in results["rejected"]) == sorted([pipe, link])
    assert results["ingested"] == 1
    assert "123456782" not in done.stdout + done.stderr


# ---------------------------------------------------------------- the morning after

def test_a_result_that_arrives_after_the_snapshot_listing_is_the_same_backup(night, central):
    """The gatherer lists the repositories while a pod is still copying (or its result is
    still on its way): the snapshot is rebuilt from the repository first. When the result
    arrives it completes that row instead of adding a second backup for one snapshot: the
    report counted two backups that night, one of them without any observation of where the
    data went (encryption `not_evidenced`)."""
    first = central.sync()
    assert next(r for r in first["tenants"] if r["tenant"] == TENANT)["added"] == 1
    central.put(night[1].name, night[1].read_bytes())
    second = central.sync()
    assert second["results"]["ingested"] == 1
    assert all(row["added"] == 0 for row in second["tenants"])
    central.bkp("certificate", "key", "create")
    report, _ = central.bkp_json("report")
    tenant = next(t for t in report["tenants"] if t["tenant"] == TENANT)
    assert tenant["backups"]["count"] == 1, tenant["backups"]
    assert tenant["backups"]["rebuilt_by_sync"] == 0
    encrypted = next(c for c in tenant["controls"] if c["id"] == "encrypted")
    assert encrypted["status"] == "met", encrypted
    status = status_row(central, TENANT)
    assert status["last_backup"]["status"] == "ok" and status["state"] == "ok"
    verified, _ = central.bkp_json("audit", "verify")
    assert verified["valid"] is True, verified["problems"]
