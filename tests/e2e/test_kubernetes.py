"""`bkp schedule --format kubernetes`: the manifests for a mix of sftp, s3, rest and local
tenants, rendered by the real CLI, pass `kubernetes-validate --strict` (the API's own
schemas, offline), name every Secret and key but hold no secret value, and give a tenant the
cluster cannot run (or an invalid policy) no CronJob and exit 3."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import _keygen

pytestmark = pytest.mark.e2e

IMAGE = "registry.example.nl/bkp:0.1.0"


def secret_file(env, name: str, content: str) -> Path:
    path = env.secrets / name
    path.write_text(content)
    path.chmod(0o600)
    return path


def mixed_fleet(env, tmp_path: Path) -> dict[str, str]:
    """Four tenants of four destination types; every secret file holds a recognisable value.
    Returns tenant -> destination type."""
    host_key = _keygen(tmp_path / "server_host_key")
    identity = tmp_path / "id_ed25519"
    _keygen(identity)
    identity.write_text(identity.read_text() + "# SECRET-VALUE-ssh-identity\n")
    ca = tmp_path / "backup02.pem"
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", ca)
    ca.chmod(0o644)
    env.write_policy("zorg-sftp", {
        "type": "sftp", "country": "NL", "host": "backup01.offsite.example.nl",
        "user": "bkp", "path": "/srv/backup/zorg-sftp", "host_key": host_key,
        "identity_file": str(identity)}, copies=[{
            # A second site, append-only: its nightly credential in the nightly pods, its
            # deleting one only in the maintenance job.
            "id": "fra", "type": "rest", "country": "DE",
            "url": "https://backup03.offsite.example.de/zs",
            "credentials_file": str(secret_file(env, "zorg-sftp-fra.rest",
                                                "bkp:SECRET-VALUE-copy-rest\n")),
            "ca_file": str(ca), "append_only": True,
            "maintenance_credentials_file": str(secret_file(
                env, "zorg-sftp-fra.rest-admin", "admin:SECRET-VALUE-copy-admin\n"))}])
    env.write_policy("zorg-s3", {
        "type": "s3", "country": "DE", "endpoint": "https://s3.eu-central-1.amazonaws.com",
        "bucket": "zorg-s3-backup", "region": "eu-central-1",
        "credentials_file": str(secret_file(
            env, "zorg-s3.s3", "[default]\naws_access_key_id = AKIASECRETVALUE\n"
                               "aws_secret_access_key = SECRET-VALUE-s3\n"))})
    env.write_policy("zorg-rest", {
        "type": "rest", "country": "DE", "url": "https://backup02.offsite.example.de/zr",
        "credentials_file": str(secret_file(env, "zorg-rest.rest", "bkp:SECRET-VALUE-rest\n")),
        "ca_file": str(ca), "append_only": True,
        "maintenance_credentials_file": str(secret_file(
            env, "zorg-rest.rest-admin", "admin:SECRET-VALUE-rest-admin\n"))})
    env.local_tenant("zorg-local")
    for tenant in ("zorg-sftp", "zorg-s3", "zorg-rest", "zorg-local"):
        secret_file(env, f"{tenant}.key", f"SECRET-VALUE-password-{tenant}\n")
    return {"zorg-sftp": "sftp", "zorg-s3": "s3", "zorg-rest": "rest", "zorg-local": "local"}


def cluster_settings(env, tenants, **extra) -> Path:
    entries = {tenant: {"sources": {"nfs": {"server": "nfs01.example.nl",
                                            "path": f"/export/{tenant}"}}}
               for tenant in tenants}
    entries["zorg-local"]["repository"] = {"persistentVolumeClaim": {"claimName": "disk"}}
    entries["zorg-s3"]["run_as_user"] = 0  # its files belong to many users
    config = env.root / "bkp.yaml"
    config.write_text(yaml.safe_dump({"kubernetes": {"image": IMAGE, "tenants": entries,
                                                     **extra}}))
    return config


def validate(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run([str(tool), "--strict", "--quiet", str(path)], capture_output=True,
                          text=True, timeout=120)


def cronjobs(text: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(text)
            if doc and doc["kind"] == "CronJob"}


def pod(job: dict) -> dict:
    return job["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def mounts(job: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in pod(job)["containers"][0]["volumeMounts"]}


def env_of(job: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod(job)["containers"][0]["env"]}


@pytest.fixture
def fleet(bkp_env, tmp_path):
    tenants = mixed_fleet(bkp_env, tmp_path)
    config = cluster_settings(bkp_env, tenants)
    return bkp_env, tenants, config


def test_the_manifests_of_a_mixed_fleet_validate_strictly_and_hold_no_secret(fleet, tmp_path):
    env, tenants, config = fleet
    done = env.bkp("schedule", "--format", "kubernetes", BKP_CONFIG=str(config))
    assert done.returncode == 0, done.stderr
    manifests = tmp_path / "bkp.k8s.yaml"
    manifests.write_text(done.stdout)
    checked = validate(manifests)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SECRET-VALUE" not in done.stdout + done.stderr
    assert "AKIASECRETVALUE" not in done.stdout

    jobs = cronjobs(done.stdout)
    expected = {f"bkp-{task}-{t}" for t in tenants for task in ("backup", "drill")}
    assert set(jobs) == expected | {"bkp-maintain-zorg-rest", "bkp-maintain-zorg-sftp",
                                    "bkp-gatherer"}
    for _name, job in jobs.items():
        spec = job["spec"]
        assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
        template = spec["jobTemplate"]["spec"]
        assert 0 < template["backoffLimit"] <= 3 and template["ttlSecondsAfterFinished"] > 0
        assert template["activeDeadlineSeconds"] > 0
        container = pod(job)["containers"][0]
        assert container["image"] == IMAGE
        assert container["resources"]["requests"] and container["resources"]["limits"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert pod(job)["automountServiceAccountToken"] is False


def test_each_pod_gets_its_own_tenant_its_secret_files_and_read_only_sources(fleet):
    env, _tenants, config = fleet
    jobs = cronjobs(env.bkp("schedule", "--format", "kubernetes",
                            BKP_CONFIG=str(config)).stdout)
    backup = jobs["bkp-backup-zorg-rest"]
    assert pod(backup)["containers"][0]["args"] == ["backup", "zorg-rest"]
    assert env_of(backup)["BKP_SNAPSHOT_HOST"] == "zorg-rest"  # the parent is found
    home = next(v for v in pod(backup)["volumes"] if v["name"] == "home")
    assert home == {"name": "home", "emptyDir": {}}
    policy_volume = next(v for v in pod(backup)["volumes"] if v["name"] == "policy")
    assert policy_volume["configMap"]["items"] == [{"key": "zorg-rest.yaml",
                                                    "path": "zorg-rest.yaml"}]
    secret = next(v for v in pod(backup)["volumes"] if v["name"] == "secrets")["secret"]
    assert secret["secretName"] == "bkp-zorg-rest" and secret["defaultMode"] == 0o400
    at = mounts(backup)
    for path in (env.secrets / "zorg-rest.key", env.secrets / "zorg-rest.rest"):
        assert at[str(path)]["readOnly"] and at[str(path)]["subPath"] == path.name
    # The credential that may delete is only in the maintenance job, from its own Secret.
    admin = str(env.secrets / "zorg-rest.rest-admin")
    assert admin not in at and admin not in mounts(jobs["bkp-drill-zorg-rest"])
    maintain = jobs["bkp-maintain-zorg-rest"]
    assert pod(maintain)["containers"][0]["args"] == ["maintain", "zorg-rest"]
    assert mounts(maintain)[admin]["subPath"] == "zorg-rest.rest-admin"
    assert any(v.get("secret", {}).get("secretName") == "bkp-zorg-rest-maintenance"
               for v in pod(maintain)["volumes"])
    source = env.tenants["zorg-rest"]["sources"][0]
    assert mounts(backup)[source]["readOnly"] is True
    assert next(v for v in pod(backup)["volumes"] if v["name"] == "sources")["nfs"][
        "readOnly"] is True
    # Non-root by default: the Secret is the pod group's (0440) and the check is told so.
    security = pod(backup)["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == security["fsGroup"] == 10001
    assert env_of(backup)["BKP_SECRET_GROUP"] == "10001"
    assert "add" not in pod(backup)["containers"][0]["securityContext"]["capabilities"]


def test_a_copy_s_secret_files_are_mounted_and_its_deleting_one_only_for_maintenance(fleet):
    env, _tenants, config = fleet
    jobs = cronjobs(env.bkp("schedule", "--format", "kubernetes",
                            BKP_CONFIG=str(config)).stdout)
    nightly = str(env.secrets / "zorg-sftp-fra.rest")
    admin = str(env.secrets / "zorg-sftp-fra.rest-admin")
    for task in ("backup", "drill"):
        at = mounts(jobs[f"bkp-{task}-zorg-sftp"])
        assert at[nightly]["readOnly"] and at[nightly]["subPath"] == "zorg-sftp-fra.rest"
        assert admin not in at, task
    # Only the copy is append-only: the tenant still gets its maintenance job, which holds
    # the copy's deleting credential from the tenant's maintenance Secret.
    maintain = jobs["bkp-maintain-zorg-sftp"]
    assert pod(maintain)["containers"][0]["args"] == ["maintain", "zorg-sftp"]
    assert mounts(maintain)[admin]["subPath"] == "zorg-sftp-fra.rest-admin"
    assert any(v.get("secret", {}).get("secretName") == "bkp-zorg-sftp-maintenance"
               for v in pod(maintain)["volumes"])


def test_root_only_with_the_capabilities_reading_the_data_needs(fleet):
    env, _tenants, config = fleet
    jobs = cronjobs(env.bkp("schedule", "--format", "kubernetes",
                            BKP_CONFIG=str(config)).stdout)
    backup, drill = jobs["bkp-backup-zorg-s3"], jobs["bkp-drill-zorg-s3"]
    assert pod(backup)["securityContext"]["runAsUser"] == 0
    assert "fsGroup" not in pod(backup)["securityContext"]  # Secret files stay 0400 root's
    assert "BKP_SECRET_GROUP" not in env_of(backup)
    caps = pod(backup)["containers"][0]["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}
    assert set(pod(drill)["containers"][0]["securityContext"]["capabilities"]["add"]) == {
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER"}


def test_the_gatherer_has_every_policy_and_nightly_secret_and_the_central_catalog(fleet):
    env, tenants, config = fleet
    jobs = cronjobs(env.bkp("schedule", "--format", "kubernetes",
                            BKP_CONFIG=str(config)).stdout)
    gatherer = jobs["bkp-gatherer"]
    assert pod(gatherer)["containers"][0]["args"] == ["catalog", "sync", "--all"]
    home = next(v for v in pod(gatherer)["volumes"] if v["name"] == "home")
    assert home["persistentVolumeClaim"]["claimName"] == "bkp-catalog"
    at = mounts(gatherer)
    for tenant in tenants:
        assert str(env.secrets / f"{tenant}.key") in at
    assert str(env.secrets / "zorg-rest.rest-admin") not in at


def test_spread_gives_each_plain_daily_backup_its_own_minute_of_the_window(fleet):
    env, tenants, config = fleet
    first = cronjobs(env.bkp("schedule", "--format", "kubernetes", "--spread", "22:30-04:00",
                             BKP_CONFIG=str(config)).stdout)
    again = cronjobs(env.bkp("schedule", "--format", "kubernetes", "--spread", "22:30-04:00",
                             BKP_CONFIG=str(config)).stdout)
    times = {}
    for tenant in tenants:
        schedule = first[f"bkp-backup-{tenant}"]["spec"]["schedule"]
        assert schedule == again[f"bkp-backup-{tenant}"]["spec"]["schedule"]
        minute, hour, *rest = schedule.split()
        assert rest == ["*", "*", "*"]
        at = int(hour) * 60 + int(minute)
        assert at >= 22 * 60 + 30 or at < 4 * 60, schedule
        times[tenant] = at
        # drills keep their own (monthly) schedule
        assert first[f"bkp-drill-{tenant}"]["spec"]["schedule"] == "0 6 1 * *"
    assert len(set(times.values())) > 1
    bad = env.bkp("schedule", "--format", "kubernetes", "--spread", "22:30",
                  BKP_CONFIG=str(config))
    assert bad.returncode == 2 and "HH:MM-HH:MM" in bad.stderr


def test_invalid_policy_and_a_tenant_without_volume_get_no_cronjob_and_exit_3(fleet):
    env, _tenants, config = fleet
    broken = env.policies / "zorg-broken.yaml"
    broken.write_text("tenant: zorg-broken\npurpose: x\n")
    env.local_tenant("zorg-novolume")
    done = env.bkp("schedule", "--format", "kubernetes", BKP_CONFIG=str(config))
    assert done.returncode == 3
    jobs = cronjobs(done.stdout)
    assert not [name for name in jobs if "broken" in name or "novolume" in name]
    assert {"bkp-backup-zorg-sftp", "bkp-gatherer"} <= set(jobs)  # the others are rendered
    assert "zorg-broken" in done.stderr and "no CronJob" in done.stderr
    assert "zorg-novolume has no source volume" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_password_the_pod_cannot_have_is_refused(fleet):
    env, _tenants, config = fleet
    policy = env.local_tenant("zorg-env")
    document = yaml.safe_load(policy.read_text())
    del document["password_file"]
    policy.write_text(yaml.safe_dump({**document, "password_env": "BKP_PW_ZORG_ENV"}))
    text = yaml.safe_load(config.read_text())
    text["kubernetes"]["tenants"]["zorg-env"] = {"sources": {"hostPath": {"path": "/srv"}}}
    config.write_text(yaml.safe_dump(text))
    done = env.bkp("schedule", "--format", "kubernetes", BKP_CONFIG=str(config),
                   BKP_PW_ZORG_ENV="x")
    assert done.returncode == 3 and "zorg-env takes its repository password from password_env" \
        in done.stderr
    assert not [name for name in cronjobs(done.stdout) if "zorg-env" in name]


def test_no_image_is_a_usage_error(bkp_env):
    bkp_env.local_tenant("zorg-local")
    done = bkp_env.bkp("schedule", "--format", "kubernetes")
    assert done.returncode == 2 and "no image" in done.stderr


def test_a_wrong_volume_in_bkp_yaml_is_an_invalid_configuration(fleet):
    env, _tenants, config = fleet
    text = yaml.safe_load(config.read_text())
    text["kubernetes"]["tenants"]["zorg-sftp"]["sources"] = {
        "nfs": {"server": "nfs01"}, "hostPath": {"path": "/srv"}}
    config.write_text(yaml.safe_dump(text))
    for args in (("policy", "validate"), ("schedule", "--format", "kubernetes")):
        done = env.bkp(*args, BKP_CONFIG=str(config))
        assert done.returncode == 3, (args, done.stderr)
        assert "kubernetes.tenants.zorg-sftp.sources" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr


def with_results(env, config: Path, where: dict, **cluster) -> dict:
    text = yaml.safe_load(config.read_text())
    text["results"] = {"inbox": where, "keys": str(env.root / "result-keys")}
    text["kubernetes"].update(cluster)
    config.write_text(yaml.safe_dump(text))
    env.bkp_json("catalog", "result-keys", "--all", BKP_CONFIG=str(config))
    return text


def bucket_or_server_inbox(env, kind: str, tmp_path: Path) -> tuple[dict, Path]:
    """An s3 or sftp results inbox whose credential holds a recognisable value; the inbox
    and its credential's file."""
    if kind == "s3":
        credentials = secret_file(env, "inbox.s3", "[default]\naws_access_key_id = AKIAIN\n"
                                                   "aws_secret_access_key = SECRET-VALUE-in\n")
        return {"type": "s3", "country": "NL", "endpoint": "https://s3.nl-ams.example.eu",
                "bucket": "inbox", "region": "nl-ams",
                "credentials_file": str(credentials)}, credentials
    identity = env.secrets / "inbox_ed25519"
    _keygen(identity)
    identity.write_text(identity.read_text() + "# SECRET-VALUE-inbox-identity\n")
    return {"type": "sftp", "country": "NL", "host": "inbox.offsite.example.nl",
            "user": "bkp-inbox", "path": "/srv/bkp-inbox",
            "host_key": _keygen(tmp_path / "inbox_host_key"),
            "identity_file": str(identity)}, identity


@pytest.mark.parametrize("kind", ["s3", "sftp"])
def test_jobs_sign_their_results_and_the_gatherer_holds_public_keys_only(fleet, tmp_path,
                                                                         kind):
    """Every job and the gatherer reach an s3 or sftp inbox with its credential (a bucket's
    credentials, an SSH key) mounted from the tenant's Secret like the tenant's own files:
    never a value in the manifests."""
    env, tenants, config = fleet
    inbox, credential = bucket_or_server_inbox(env, kind, tmp_path)
    with_results(env, config, inbox)
    done = env.bkp("schedule", "--format", "kubernetes", BKP_CONFIG=str(config))
    assert done.returncode == 0, done.stderr
    manifests = tmp_path / "signed.yaml"
    manifests.write_text(done.stdout)
    checked = validate(manifests)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SECRET-VALUE" not in done.stdout and "PRIVATE KEY" not in done.stdout
    jobs = cronjobs(done.stdout)
    for tenant in tenants:
        key = str(env.root / "result-keys" / f"{tenant}.result.key")
        for task in ("backup", "drill"):
            job = jobs[f"bkp-{task}-{tenant}"]
            assert env_of(job)["BKP_RESULT_KEY"] == key
            assert mounts(job)[key]["readOnly"]
            mounted = mounts(job)[str(credential)]
            assert mounted["readOnly"] and mounted["subPath"] == credential.name
            volume = next(v for v in pod(job)["volumes"] if v["name"] == mounted["name"])
            assert volume["secret"]["secretName"] == f"bkp-{tenant}"
            assert volume["secret"]["defaultMode"] == 0o400
        assert f"--from-file={credential.name}={credential}" in next(
            line for line in done.stdout.splitlines()
            if f"create secret generic bkp-{tenant} " in line)
    assert "BKP_RESULT_KEY" not in env_of(jobs["bkp-maintain-zorg-rest"])
    gatherer = mounts(jobs["bkp-gatherer"])
    assert gatherer[str(credential)]["readOnly"]
    assert not [path for path in gatherer if path.endswith(".result.key")]
    assert gatherer[str(env.root / "result-keys")]["readOnly"]
    public = next(doc for doc in yaml.safe_load_all(done.stdout)
                  if doc and doc["metadata"]["name"] == "bkp-result-keys")
    assert set(public["data"]) == {f"{t}.result.pub" for t in tenants}
    assert all(len(text.strip()) == 44 for text in public["data"].values())


def test_a_shared_directory_inbox_needs_its_volume_and_a_tenant_its_key(fleet, tmp_path):
    env, _tenants, config = fleet
    inbox = {"type": "local", "country": "NL", "path": str(env.root / "inbox")}
    with_results(env, config, inbox)
    done = env.bkp("schedule", "--format", "kubernetes", BKP_CONFIG=str(config))
    assert done.returncode == 3 and "add kubernetes.inbox to bkp.yaml" in done.stderr
    with_results(env, config, inbox, inbox={"nfs": {"server": "nfs01", "path": "/inbox"}})
    (env.root / "result-keys" / "zorg-s3.result.key").unlink()
    done = env.bkp("schedule", "--format", "kubernetes", BKP_CONFIG=str(config))
    assert done.returncode == 3 and "zorg-s3 has no result key" in done.stderr
    jobs = cronjobs(done.stdout)
    assert "bkp-backup-zorg-s3" not in jobs
    assert mounts(jobs["bkp-backup-zorg-sftp"])[str(env.root / "inbox")]
    manifests = tmp_path / "local-inbox.yaml"
    manifests.write_text(done.stdout)
    assert validate(manifests).returncode == 0
