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


def results_config(path: Path, inbox: Path, keys: Path, sshd=None) -> Path:
    """bkp.yaml with the inbox `inbox`: a shared directory, or with `sshd` that directory on
    the sftp server."""
    place = {"type": "local", "country": "NL", "path": str(inbox)} if sshd is None else {
        "type": "sftp", "country": "NL", "host": sshd.host, "port": sshd.port,
        "user": sshd.user, "path": str(inbox), "host_key": sshd.host_key,
        "identity_file": str(sshd.identity_file)}
    path.write_text(yaml.safe_dump({"results": {"inbox": place, "keys": str(keys)}}))
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

    def __init__(self, env, root: Path, sshd=None):
        self.env = env
        self.inbox = root / "inbox"  # with `sshd`: the same directory, on the sftp server
        self.inbox.mkdir(parents=True)
        self.home = root / "central"
        self.home.mkdir(mode=0o700)
        self.config = results_config(root / "bkp.yaml", self.inbox, env.root / "keys", sshd)

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

@pytest.mark.parametrize("kind", ["local", "sftp"])
def test_a_pipe_or_a_link_named_as_a_result_neither_hangs_nor_is_followed(night, kind,
                                                                         request, tmp_path):
    """A shared-directory inbox (or an sftp one) is writable by every pod: one leaves a named
    pipe (opening it waited for a writer forever: the gatherer, or the server's sftp process,
    never finished) and a link to a file of the gatherer's host (or the server's). Both are
    rejected as no result; the genuine result is gathered."""
    from bkp.evidence.pod_results import object_name

    central = Central(night[0], tmp_path / "gathering",
                      request.getfixturevalue("sshd") if kind == "sftp" else None)
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
    reasons = {item["object"]: item["reason"] for item in results["rejected"]}
    assert reasons == {link: f"{link} is a link, not a result",  # never opened, nor followed
                       pipe: f"{pipe} is not a plain file, not a result"}
    assert results["ingested"] == 1
    assert "123456782" not in done.stdout + done.stderr
    # Never opened, so never hashed: the audit trail holds no digest of data nobody read.
    log, _ = central.bkp_json("audit", "log")
    rejected = [e for e in log["events"] if e["action"] == "result.rejected"]
    assert len(rejected) == 2 and all(
        e["details"].get("sha256") is None for e in rejected), rejected


@pytest.mark.parametrize("kind", ["local", "sftp"])
def test_an_object_whose_name_is_not_utf8_is_rejected_and_the_night_gathered(night, kind,
                                                                             request,
                                                                             tmp_path):
    """Anyone who can write to the inbox (every pod) can leave an object whose name is not
    UTF-8. It is no result: rejected once, and the genuine result beside it gathered. A
    traceback there stops every night's gathering until someone finds the name."""
    central = Central(night[0], tmp_path / "gathering",
                      request.getfixturevalue("sshd") if kind == "sftp" else None)
    central.put(night[1].name, night[1].read_bytes())
    odd = os.fsencode(central.inbox) + b"/20261124T010203000000Z-\xff\xfe.json"
    with open(odd, "wb") as fh:
        fh.write(b"{}")
    done = central.bkp("catalog", "sync", "--all", "--json", timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 5, done.stdout + done.stderr
    results = json.loads(done.stdout)["results"]
    assert results["ingested"] == 1 and len(results["rejected"]) == 1, results
    again = central.bkp("catalog", "sync", "--all", "--json", timeout=120)
    assert again.returncode == 5 and "Traceback" not in again.stderr, again.stderr
    assert json.loads(again.stdout)["results"]["already_ingested"] == 1
    verify = central.bkp("audit", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_name_with_a_newline_writes_no_line_of_its_own_into_the_gathering(night, tmp_path):
    """A rejected object's name is printed: a newline in it would let a pod write a line of
    its choosing (a forged "0 rejected" summary) into the gatherer's output and logs."""
    central = Central(night[0], tmp_path / "gathering")
    central.put(night[1].name, night[1].read_bytes())
    central.put("x\nresults inbox: 1 ingested, 0 ingested before, 0 rejected", b"{}")
    done = central.bkp("catalog", "sync", "--all")
    assert done.returncode == 5, done.stdout + done.stderr
    summaries = [line for line in done.stdout.splitlines() if line.startswith("results inbox")]
    assert summaries == ["results inbox: 1 ingested, 0 ingested before, 1 rejected"], done.stdout
    assert "REJECTED x\\nresults inbox: 1 ingested" in done.stdout, done.stdout

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


def test_a_replayed_or_misattributed_result_is_recorded_once(night, central):
    """Someone who can write to the inbox but holds no key: the genuine result again under
    another object name, the same bytes named as the other tenant's, and a result signed
    with kliniek-a's key that claims to be kliniek-b's."""
    env = night[0]
    genuine = night[1]
    central.put(genuine.name, genuine.read_bytes())
    replay = genuine.name[:-17] + "0123456789ab.json"
    central.put(replay, genuine.read_bytes())
    elsewhere = genuine.name.replace(f"-{TENANT}-", f"-{OTHER}-")
    central.put(elsewhere, genuine.read_bytes())
    claimed = reworded(night, lambda d: None, new_id="e" * 32)
    claimed["tenant"] = OTHER
    for item in claimed["runs"] + claimed["events"]:
        item["tenant"] = OTHER
    name, data = signed(env, claimed, signer=TENANT)
    central.put(name, data)
    done = central.sync(expect=5)
    assert done["results"]["ingested"] == 1
    reasons = {item["object"]: item["reason"] for item in done["results"]["rejected"]}
    # whichever name sorts first is the one recorded; the other is its copy
    assert set(reasons) - {genuine.name, replay} == {elsewhere, name}, reasons
    assert len(set(reasons) & {genuine.name, replay}) == 1
    assert reasons[name].startswith("the signature is not kliniek-b's")
    status, _ = central.bkp_json("status")
    rows = {row["tenant"]: row for row in status["tenants"]}
    assert rows[OTHER]["last_backup"] is None
    assert rows[TENANT]["last_backup"]["status"] == "ok"
    log, _ = central.bkp_json("audit", "log")
    assert len([e for e in log["events"] if e["action"] == "backup"]) == 1


def test_a_failed_pod_night_reads_failed_centrally(night, central):
    """The pod's Secret holds a wrong repository password: the job fails (exit 1), its
    result says so, and the central status says failed although an older snapshot is in the
    repository (found by the listing)."""
    env = night[0]
    wrong = env.root / "wrong-password"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    policy = yaml.safe_load((env.policies / f"{TENANT}.yaml").read_text())
    failing = env.root / "failing-policies"
    failing.mkdir(exist_ok=True)
    (failing / f"{TENANT}.yaml").write_text(yaml.safe_dump({**policy,
                                                            "password_file": str(wrong)}))
    base = env.root / "pods" / "failing"
    (base / "home").mkdir(parents=True, mode=0o700)
    done = subprocess.run(
        [sys.executable, "-m", "bkp", "backup", TENANT], capture_output=True, text=True,
        timeout=300, env=env.env(BKP_HOME=str(base / "home"), BKP_POLICIES=str(failing),
                                 BKP_CONFIG=str(central.config), BKP_SNAPSHOT_HOST=TENANT,
                                 BKP_OPERATOR="scheduler",
                                 BKP_RESULT_KEY=str(env.root / "keys" /
                                                    f"{TENANT}.result.key")))
    assert done.returncode not in (0, 5), done.stderr
    gathered = central.sync()
    assert gathered["results"]["ingested"] == 1
    row = status_row(central, TENANT)
    assert row["last_backup"]["status"] == "failed", row
    assert row["state"] == "failed"
    assert row["last_good_backup"] is not None  # night 1, from the repository's listing


# ---------------------------------------------------------------- the pod's kept record

def test_a_kept_record_forged_or_stale_never_skips_a_forget(bkp_env):
    """`daily: 7` and two nights on one day: restic keeps only the day's newest snapshot, so
    the second night must forget the first. A kept record that lists exactly the repository's
    snapshot but dated a day earlier (then everything would look kept) is believed only when
    the tenant's own key signed it: signed with another key, restic decides and forgets. The
    first night's genuine record, replayed after a later night, does not describe the
    repository either."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bkp.evidence.pod_results import sign
    from tests.e2e.test_pod_retention import Pods

    tenant = "kliniek-oost"
    bkp_env.local_tenant(tenant, retention={"daily": 7})
    config = results_config(bkp_env.root / "bkp.yaml", bkp_env.root / "inbox",
                            bkp_env.root / "keys")
    bkp_env.bkp_json("init", tenant, BKP_CONFIG=str(config))
    bkp_env.bkp_json("catalog", "result-keys", "--all", BKP_CONFIG=str(config))
    pods = Pods(bkp_env, tenant)
    first, _ = pods.backup()
    record = bkp_env.root / "inbox" / "kept" / f"{tenant}.json"
    night_one = record.read_bytes()
    document = json.loads(night_one)["document"]
    [snapshot] = document["snapshots"]
    document["snapshots"] = [{**snapshot, "time": "2020-01-01T02:00:00Z"}]
    record.write_bytes(sign(document, Ed25519PrivateKey.generate()))

    second, calls = pods.backup()
    assert "forget" in calls or "snapshots" in calls, calls
    listed = {s["id"][:8] for s in json.loads(bkp_env.restic(tenant, "snapshots",
                                                             "--json").stdout)}
    assert listed == {second["snapshot_id"][:8]}, (first["snapshot_id"], listed)

    record.write_bytes(night_one)  # a stale record, validly signed
    third, calls = pods.backup()
    assert "forget" in calls or "snapshots" in calls, calls
    listed = {s["id"][:8] for s in json.loads(bkp_env.restic(tenant, "snapshots",
                                                             "--json").stdout)}
    assert listed == {third["snapshot_id"][:8]}


def test_a_gatherer_killed_mid_ingest_loses_nothing_and_records_nothing_twice(night,
                                                                             central):
    """SIGKILL while the gatherer works through a night of results, then the next gathering:
    every result recorded exactly once, with its run and its events, and the chain sound."""
    import signal
    import sqlite3

    from tests.helpers import wait_until

    env = night[0]
    count = 60
    for index in range(count):
        new_id = f"{index:012x}" + "0" * 20  # the object's name shows the first 12
        central.put(*signed(env, reworded(night, lambda d: None, new_id=new_id)))
    victim = subprocess.Popen(
        [sys.executable, "-m", "bkp", "catalog", "sync", "--all", "--no-snapshots"],
        env=env.env(**central.vars()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = central.home / "catalog.db"

    def ingested() -> int:
        try:
            with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as db:
                return db.execute("select count(*) from inbox").fetchone()[0]
        except sqlite3.Error:
            return 0

    try:
        wait_until(lambda: ingested() >= 3 or victim.poll() is not None, timeout=120,
                   what="the gatherer to ingest a few results")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the gatherer finished before the kill"
    done = central.bkp_json("catalog", "sync", "--all", "--no-snapshots")[0]
    assert done["results"]["ingested"] + done["results"]["already_ingested"] == count
    assert done["results"]["rejected"] == []
    log, _ = central.bkp_json("audit", "log")
    backups = [e for e in log["events"] if e["action"] == "backup"]
    assert len(backups) == count
    assert len({e["details"]["run_id"] for e in backups}) == count
    assert len([e for e in log["events"] if e["action"] == "result.ingested"]) == count
    verified, _ = central.bkp_json("audit", "verify")
    assert verified["valid"] is True, verified["problems"]
