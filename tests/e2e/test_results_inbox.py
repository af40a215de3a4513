"""The results inbox of every kind: an S3 bucket (moto), a directory on an sftp server (the
real sshd) and a shared directory, with operators registered in bkp.yaml. Pods
(BKP_OPERATOR=scheduler, a name no registered person has) back up an s3 tenant and leave
their signed results and kept records in the inbox; the central gatherer ingests them once;
the next night's pod skips restic's forget from its record, confirmed by the bucket's
listing of the repository's snapshot objects; a result changed in the inbox, or one without
a signature, is rejected. An sftp inbox whose server does not hold the pinned host key is
refused (exit 4) before anything is written."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_pod_retention import restic_shim, subcommands

pytestmark = pytest.mark.e2e

TENANT = "s3-kliniek"


def s3_tenant(env, s3) -> None:
    # a bucket of its own: the tests' folder names, which name buckets by default, are
    # cut to one name for every parameter
    env.s3_tenant(TENANT, s3, retention={"last": 5}, bucket=f"kliniek-{uuid.uuid4().hex[:16]}")


@dataclass
class Inbox:
    """The inbox as bkp.yaml names it, and as the test sees it from outside bkp."""

    config: dict
    names: Callable[[], list[str]]  # every object, below the inbox's root, sorted
    read: Callable[[str], bytes]
    write: Callable[[str, bytes], None]


def bucket_inbox(env, s3) -> Inbox:
    bucket = f"inbox-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(bucket, "eu-central-1")
    client = s3.client()

    def names() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="results/")
        return sorted(item["Key"][len("results/"):] for item in listed.get("Contents", []))

    return Inbox(
        {"type": "s3", "country": "DE", "endpoint": s3.endpoint, "bucket": bucket,
         "region": "eu-central-1", "prefix": "results",
         "credentials_file": str(s3.credentials_file)},
        names,
        lambda name: client.get_object(Bucket=bucket, Key=f"results/{name}")["Body"].read(),
        lambda name, data: client.put_object(Bucket=bucket, Key=f"results/{name}", Body=data))


def folder_inbox(folder: Path, config: dict) -> Inbox:
    """A directory on this machine: shared, or the one the test's sshd serves."""
    def names() -> list[str]:
        if not folder.exists():
            return []
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())

    return Inbox(config, names, lambda name: (folder / name).read_bytes(),
                 lambda name, data: (folder / name).write_bytes(data))


def sftp_inbox(env, sshd, host_key: str | None = None) -> Inbox:
    # Not made here: the first pod's result makes it.
    folder = sshd.root / env.root.name / "inbox"
    return folder_inbox(folder, {
        "type": "sftp", "country": "NL", "host": sshd.host, "port": sshd.port,
        "user": sshd.user, "path": str(folder), "host_key": host_key or sshd.host_key,
        "identity_file": str(sshd.identity_file)})


def make_inbox(kind: str, env, request) -> Inbox:
    if kind == "s3":
        return bucket_inbox(env, request.getfixturevalue("s3"))
    if kind == "sftp":
        return sftp_inbox(env, request.getfixturevalue("sshd"))
    return folder_inbox(env.root / "inbox", {"type": "local", "country": "NL",
                                             "path": str(env.root / "inbox")})


def installation(env, inbox: Inbox) -> dict:
    """bkp.yaml with a registered operator and `inbox`; the tenant initialised, its result
    key made. The environment of the central catalog's commands."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if not (env.root / "anna.pub").exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "anna", "-f",
                        str(env.root / "anna")], check=True)
    anna = (env.root / "anna.pub").read_text().strip()
    (env.root / "bkp.yaml").write_text(yaml.safe_dump({
        "operators": [{"name": "Anna de Vries", "os_users": [me], "role": "admin",
                       "ssh_key": anna}],
        "results": {"inbox": inbox.config, "keys": str(env.root / "keys")}}))
    return {"BKP_CONFIG": str(env.root / "bkp.yaml")}


@pytest.fixture(params=["s3", "sftp", "local"])
def cluster(request, bkp_env, s3):
    s3_tenant(bkp_env, s3)
    inbox = make_inbox(request.param, bkp_env, request)
    central = installation(bkp_env, inbox)
    bkp_env.bkp_json("init", TENANT, **central)
    bkp_env.bkp_json("catalog", "result-keys", "--all", **central)
    return bkp_env, inbox, central


def pod_backup(env, tenant: str, night: int, *, expect: int = 0) -> tuple[dict, list[str],
                                                                           str]:
    """One job in a pod: an empty BKP_HOME, the tenant's policy alone, its result key."""
    base = env.root / "pods" / str(night)
    home, policies = base / "home", base / "policies"
    home.mkdir(parents=True, mode=0o700)
    policies.mkdir(mode=0o700)
    (policies / f"{tenant}.yaml").write_text((env.policies / f"{tenant}.yaml").read_text())
    log = restic_shim(base / "shim")
    done = env.bkp("backup", tenant, "--json", BKP_HOME=str(home),
                   BKP_POLICIES=str(policies), BKP_CONFIG=str(env.root / "bkp.yaml"),
                   BKP_SNAPSHOT_HOST=tenant, BKP_OPERATOR="scheduler",
                   BKP_RESULT_KEY=str(env.root / "keys" / f"{tenant}.result.key"),
                   PATH=f"{base / 'shim'}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == expect, (done.stdout, done.stderr)
    return json.loads(done.stdout)["runs"][0], subcommands(log), done.stderr


def results(inbox: Inbox) -> list[str]:
    return [name for name in inbox.names() if "/" not in name]


def test_pods_and_the_gatherer_work_through_the_inbox(cluster):
    env, inbox, central = cluster
    _, calls, said = pod_backup(env, TENANT, 1)
    assert "left in the inbox" in said and "warning" not in said, said
    assert "forget" in calls
    second, calls, _ = pod_backup(env, TENANT, 2)
    # the first night's record, read back from the inbox, spared restic's forget
    assert "forget" not in calls and "snapshots" not in calls, calls
    assert second["snapshots_kept"] == 2
    names = inbox.names()
    assert f"kept/{TENANT}.json" in names  # replaced by the second night, not doubled
    assert len(results(inbox)) == 2
    assert len(names) == 3, names  # no temporary left behind

    gathered, _ = env.bkp_json("catalog", "sync", "--all", **central)
    assert gathered["results"]["ingested"] == 2 and gathered["results"]["rejected"] == []
    assert gathered["tenants"][0]["snapshots"] == 2 and gathered["tenants"][0]["added"] == 0
    again, _ = env.bkp_json("catalog", "sync", "--all", "--no-snapshots", **central)
    assert again["results"]["already_ingested"] == 2 and again["results"]["ingested"] == 0
    status, _ = env.bkp_json("status", **central)
    row = status["tenants"][0]
    assert row["last_backup"]["snapshot_id"][:8] == second["snapshot_id"][:8]
    log, _ = env.bkp_json("audit", "log", **central)
    backups = [e for e in log["events"] if e["action"] == "backup"
               and "result" in (e["details"] or {})]
    assert len(backups) == 2 and {e["operator"] for e in backups} == {"scheduler"}
    verified, _ = env.bkp_json("audit", "verify", **central)
    assert verified["valid"] is True, verified["problems"]


def test_a_result_changed_or_unsigned_in_the_inbox_is_rejected(cluster):
    env, inbox, central = cluster
    pod_backup(env, TENANT, 1)
    [name] = results(inbox)
    signed = json.loads(inbox.read(name))
    signed["document"]["runs"][0]["status"] = "failed"
    inbox.write(name, json.dumps(signed).encode())
    unsigned = name.replace(name[-17:-5], "e" * 12)
    inbox.write(unsigned, json.dumps({**signed, "signature": None}).encode())
    done, _ = env.bkp_json("catalog", "sync", "--all", "--no-snapshots", expect=5, **central)
    reasons = {item["object"]: item["reason"] for item in done["results"]["rejected"]}
    assert reasons[name].startswith("the signature is not"), reasons
    assert reasons[unsigned].startswith("unsigned"), reasons
    assert done["results"]["ingested"] == 0
    again, _ = env.bkp_json("catalog", "sync", "--all", "--no-snapshots", expect=5, **central)
    assert {item["new"] for item in again["results"]["rejected"]} == {False}
    status, _ = env.bkp_json("status", **central)
    assert status["tenants"][0]["last_backup"] is None


def test_an_sftp_inbox_whose_server_holds_another_key_is_refused(bkp_env, s3, sshd):
    """The server does not hold the host key bkp.yaml pins: neither the pod nor the
    gatherer sends anything there (no credential, no result), and both exit 4, so the
    cluster's alerts see it; the pod's backup itself is in its repository."""
    s3_tenant(bkp_env, s3)
    inbox = sftp_inbox(bkp_env, sshd, host_key=sshd.other_host_key)
    central = installation(bkp_env, inbox)
    bkp_env.bkp_json("init", TENANT, **central)
    bkp_env.bkp_json("catalog", "result-keys", "--all", **central)

    run, _, said = pod_backup(bkp_env, TENANT, 1, expect=4)
    assert run["status"] == "ok"
    assert "the result was not left in the inbox" in said
    assert "host key mismatch" in said and "refused" in said, said
    assert "results.inbox.host_key" in said and "Traceback" not in said
    assert inbox.names() == []

    done, _ = bkp_env.bkp_json("catalog", "sync", "--all", expect=4, **central)
    assert "refused" in done["results"]["error"]
    assert done["results"]["error"].startswith("cannot use the results inbox sftp:")
    assert done["tenants"][0]["status"] == "ok"  # the repository still tells the backup
    assert inbox.names() == []
    human = bkp_env.bkp("catalog", "sync", "--all", "--no-snapshots", **central)
    assert human.returncode == 4 and "FAILED cannot use the results inbox" in human.stdout
