"""The results inbox in an S3 bucket (moto), with operators registered in bkp.yaml: pods
(BKP_OPERATOR=scheduler, a name no registered person has) back up s3 tenants and leave
their signed results and kept records in the bucket; the central gatherer ingests them once;
the next night's pod skips restic's forget from its record, confirmed by the bucket's
listing of the repository's snapshot objects; a result changed in the bucket is rejected."""

from __future__ import annotations

import json
import os
import pwd
import subprocess

import pytest
import yaml

from tests.e2e.test_pod_retention import restic_shim, subcommands

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(bkp_env, s3):
    bkp_env.s3_tenant("s3-kliniek", s3, retention={"last": 5})
    inbox_bucket = f"{bkp_env.root.name[:20]}-inbox".lower().replace("_", "-")
    s3.create_bucket(inbox_bucket, "eu-central-1")
    me = pwd.getpwuid(os.geteuid()).pw_name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "anna", "-f",
                    str(bkp_env.root / "anna")], check=True)
    anna = (bkp_env.root / "anna.pub").read_text().strip()
    (bkp_env.root / "bkp.yaml").write_text(yaml.safe_dump({
        "operators": [{"name": "Anna de Vries", "os_users": [me], "role": "admin",
                       "ssh_key": anna}],
        "results": {"inbox": {"type": "s3", "country": "DE", "endpoint": s3.endpoint,
                              "bucket": inbox_bucket, "region": "eu-central-1",
                              "prefix": "results",
                              "credentials_file": str(s3.credentials_file)},
                    "keys": str(bkp_env.root / "keys")}}))
    central = {"BKP_CONFIG": str(bkp_env.root / "bkp.yaml")}
    bkp_env.bkp_json("init", "s3-kliniek", **central)
    bkp_env.bkp_json("catalog", "result-keys", "--all", **central)
    return bkp_env, s3, inbox_bucket, central


def pod_backup(env, tenant: str, night: int) -> tuple[dict, list[str]]:
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
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "left in the inbox" in done.stderr
    return json.loads(done.stdout)["runs"][0], subcommands(log)


def inbox_keys(s3, bucket: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="results/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_pods_and_the_gatherer_work_through_an_s3_inbox(cluster):
    env, s3, bucket, central = cluster
    _, calls = pod_backup(env, "s3-kliniek", 1)
    assert "forget" in calls
    second, calls = pod_backup(env, "s3-kliniek", 2)
    assert "forget" not in calls and "snapshots" not in calls, calls
    assert second["snapshots_kept"] == 2
    keys = inbox_keys(s3, bucket)
    assert "results/kept/s3-kliniek.json" in keys
    results = [k for k in keys if k.endswith(".json") and "/kept/" not in k]
    assert len(results) == 2

    gathered, _ = env.bkp_json("catalog", "sync", "--all", **central)
    assert gathered["results"]["ingested"] == 2 and gathered["results"]["rejected"] == []
    assert gathered["tenants"][0]["snapshots"] == 2 and gathered["tenants"][0]["added"] == 0
    again, _ = env.bkp_json("catalog", "sync", "--all", "--no-snapshots", **central)
    assert again["results"]["already_ingested"] == 2
    status, _ = env.bkp_json("status", **central)
    row = status["tenants"][0]
    assert row["last_backup"]["snapshot_id"][:8] == second["snapshot_id"][:8]
    log, _ = env.bkp_json("audit", "log", **central)
    backups = [e for e in log["events"] if e["action"] == "backup"
               and "result" in (e["details"] or {})]
    assert {e["operator"] for e in backups} == {"scheduler"}
    verified, _ = env.bkp_json("audit", "verify", **central)
    assert verified["valid"] is True, verified["problems"]


def test_a_result_changed_in_the_bucket_is_rejected(cluster):
    env, s3, bucket, central = cluster
    pod_backup(env, "s3-kliniek", 1)
    key = next(k for k in inbox_keys(s3, bucket) if "-s3-kliniek-backup-" in k)
    client = s3.client()
    signed = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    signed["document"]["runs"][0]["status"] = "failed"
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(signed).encode())
    done, _ = env.bkp_json("catalog", "sync", "--all", "--no-snapshots", expect=5, **central)
    assert done["results"]["rejected"][0]["reason"].startswith("the signature is not")
