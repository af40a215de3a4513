"""Copies at other sites (`copies:` in a policy) against real servers: every snapshot a copy
lacks reaches it after each backup, each side of `restic copy` keeps its own transport
(sftp to sftp across two sshd with their own ports and keys, s3 to s3 with their own
credentials), a failed copy fails the run but keeps the destination's snapshot and the next
night fills the hole, retention applies to each copy, and no credential shows anywhere."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    BkpEnv,
    S3Server,
    SshServer,
    _keygen,
    free_port,
    require_tool,
    stop,
    wait_for_port,
)
from tests.helpers import big_file, command_lines, popen_bkp, restic_doing, wait_until

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ helpers

def local_copy(env: BkpEnv, tenant: str, site: str = "site-b", **keys) -> dict:
    (env.root / "site-b").mkdir(exist_ok=True)
    return {"type": "local", "country": "NL", "site": site,
            "path": str(env.root / "site-b" / tenant), **keys}


def sftp_copy(env: BkpEnv, server: SshServer, tenant: str, site: str = "site-b",
              **keys) -> dict:
    return {"type": "sftp", "country": "DE", "site": site, "host": server.host,
            "port": server.port, "user": server.user,
            "path": str(server.root / env.root.name / f"{tenant}-copy"),
            "host_key": server.host_key, "identity_file": str(server.identity_file), **keys}


def s3_copy(env: BkpEnv, server: S3Server, tenant: str, site: str = "site-b",
            region: str = "eu-central-1", **keys) -> dict:
    bucket = f"{env.root.name[:20]}-{tenant}-copy".lower().replace("_", "-")
    server.create_bucket(bucket, region)
    return {"type": "s3", "country": "DE", "site": site, "endpoint": server.endpoint,
            "bucket": bucket, "region": region, "prefix": "bkp",
            "credentials_file": str(server.credentials_file), **keys}


def add_copies(env: BkpEnv, tenant: str, *copies: dict, site: str = "site-a",
               **overrides) -> None:
    """Give an already written policy copies (and its destination a site)."""
    path = env.policies / f"{tenant}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["destination"]["site"] = site
    doc["copies"] = list(copies)
    doc.update(overrides)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env.tenants[tenant] = doc


def snapshots(env: BkpEnv, tenant: str, copy: str | None = None) -> list[dict]:
    args = ["snapshots", tenant, *(["--copy", copy] if copy else [])]
    return env.bkp_json(*args)[0]["snapshots"]


def originals(items: list[dict]) -> set[str]:
    return {(s.get("original") or s["id"])[:8] for s in items}


def backup(env: BkpEnv, tenant: str, expect: int = 0) -> dict:
    document, _ = env.bkp_json("backup", tenant, expect=expect)
    return document["runs"][0]


# ------------------------------------------------------------------ local to local

def test_a_local_copy_gets_every_snapshot_and_works_like_a_destination(bkp_env):
    env = bkp_env
    env.local_tenant("acme")
    add_copies(env, "acme", local_copy(env, "acme", id="b"))
    document, _ = env.bkp_json("init", "acme")
    [entry] = document["tenants"]
    assert entry["status"] == "initialised"
    assert entry["copies"] == [{"id": "b", "status": "initialised",
                                "repository": str(env.root / "site-b" / "acme"),
                                "error": None}]
    run = backup(env, "acme")
    [copy] = run["copies"]
    assert copy["status"] == "ok" and copy["id"] == "b" and copy["error"] is None
    assert copy["snapshot_id"] and copy["snapshot_id"][:8] != run["snapshot_id"][:8]
    listed = snapshots(env, "acme", "b")
    assert [s["id"][:8] for s in listed] == [copy["snapshot_id"][:8]]
    assert originals(listed) == {run["snapshot_id"][:8]}
    # By position too, and the drill restores and verifies the copy itself.
    assert snapshots(env, "acme", "1") == listed
    drill, _ = env.bkp_json("drill", "acme", "--copy", "b")
    [result] = drill["drills"]
    assert result["status"] == "passed", result
    assert result["snapshot_id"][:8] == copy["snapshot_id"][:8]
    # Same chunker parameters: the copy deduplicates like the destination.
    primary = env.restic_at(env.root / "offsite" / "acme", env.secrets / "acme.key",
                            "cat", "config")
    second = env.restic_at(env.root / "site-b" / "acme", env.secrets / "acme.key",
                           "cat", "config")
    assert (json.loads(primary.stdout)["chunker_polynomial"]
            == json.loads(second.stdout)["chunker_polynomial"])
    unknown = env.bkp("snapshots", "acme", "--copy", "c")
    assert unknown.returncode == 2 and "its copies are b" in unknown.stderr
    # The evidence report sees the copy and that every good backup reached it.
    assert env.bkp("certificate", "key", "create").returncode == 0  # reports are signed
    done = env.bkp("report", "acme", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    [tenant] = report["tenants"]
    assert tenant["copies"][0]["id"] == "b" and tenant["copies"][0]["site"] == "site-b"
    [control] = [c for c in tenant["controls"] if c["id"] == "copies"]
    assert control["status"] == "met", control


# ------------------------------------------------------------------ servers of their own

@pytest.fixture(scope="module")
def chrooted_sshd():
    """A second sshd with its own port, host key and client key, whose sftp is chrooted:
    what it stores lands inside its chroot, so a copy that went through the first server
    instead (one sftp.command for both sides) is told apart by where the repository lies.
    The chroot must be root-owned down from /, which /tmp is not: it lives under /srv."""
    base = Path(tempfile.mkdtemp(prefix="bkp-test-sshd-", dir="/srv"))
    base.chmod(0o755)
    chroot = base / "chroot"
    (chroot / "repo").mkdir(parents=True)
    chroot.chmod(0o755)
    host_key = _keygen(base / "host_ed25519")
    client = _keygen(base / "client_ed25519")
    (base / "authorized_keys").write_text(client + "\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    (base / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {base / 'host_ed25519'}",
        f"AuthorizedKeysFile {base / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp",
        f"ChrootDirectory {chroot}", "ForceCommand internal-sftp",
        f"PidFile {base / 'sshd.pid'}", "LogLevel ERROR", ""]))
    log = base / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([require_tool("sshd", "/usr/sbin/sshd"), "-D", "-e", "-f",
                                 str(base / "sshd_config")], stdout=out,
                                stderr=subprocess.STDOUT)
    wait_for_port(port, proc, "sshd", log=log)
    yield SshServer("127.0.0.1", port, "root", host_key, base / "client_ed25519", chroot)
    stop(proc)
    shutil.rmtree(base, ignore_errors=True)


def start_locked_s3(base: Path) -> tuple[S3Server, subprocess.Popen]:
    """moto's S3 server that checks credentials: only its own IAM user's key (made over
    the first three unauthenticated requests) may use it, so a copy that signs with the
    other server's key is refused."""
    import boto3

    port = free_port()
    log = base / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
             str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    wait_for_port(port, proc, "moto_server", log=log)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="eu-central-1",
                       aws_access_key_id="AKIDBOOTSTRAP0000000", aws_secret_access_key="x")
    iam.create_user(UserName="bkp")
    iam.put_user_policy(UserName="bkp", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="bkp")["AccessKey"]
    server = S3Server(endpoint, base / "credentials", key["AccessKeyId"],
                      key["SecretAccessKey"])
    server.write_credentials()
    return server, proc


@pytest.fixture(scope="module")
def locked_s3_pair(tmp_path_factory):
    started = [start_locked_s3(tmp_path_factory.mktemp("s3-locked")) for _ in range(2)]
    yield [server for server, _ in started]
    for _, proc in started:
        stop(proc)




# ------------------------------------------------------------------ the trap: two of a kind

def test_sftp_to_sftp_each_side_over_its_own_server_port_and_key(bkp_env, sshd,
                                                                  chrooted_sshd):
    env = bkp_env
    env.sftp_tenant("zorg", sshd)
    copy = sftp_copy(env, chrooted_sshd, "zorg", id="fra")
    copy["path"] = f"/repo/{env.root.name}/zorg"
    add_copies(env, "zorg", copy)
    document, _ = env.bkp_json("init", "zorg")
    assert [c["status"] for c in document["tenants"][0]["copies"]] == ["initialised"]
    run = backup(env, "zorg")
    assert [c["status"] for c in run["copies"]] == ["ok"], run
    # Through the second server the repository lies inside its chroot; through the first
    # it would lie at /repo/... of the real root.
    assert (chrooted_sshd.root / "repo" / env.root.name / "zorg" / "config").is_file()
    assert not Path(f"/repo/{env.root.name}").exists()
    assert originals(snapshots(env, "zorg", "fra")) == {run["snapshot_id"][:8]}
    drill, _ = env.bkp_json("drill", "zorg", "--copy", "fra")
    assert drill["drills"][0]["status"] == "passed", drill


def test_s3_to_s3_each_side_with_its_own_credentials(bkp_env, locked_s3_pair):
    env = bkp_env
    first, second = locked_s3_pair
    env.s3_tenant("kliniek", first)
    add_copies(env, "kliniek", s3_copy(env, second, "kliniek", id="ber"))
    document, _ = env.bkp_json("init", "kliniek")
    assert [c["status"] for c in document["tenants"][0]["copies"]] == ["initialised"]
    said = [json.dumps(document)]
    big_file(env.root / "data" / "kliniek" / "big.bin", 48)
    # While restic copies, every process's argument list is what `ps` shows anyone.
    running = popen_bkp(env, "backup", "kliniek", "--json")
    try:
        wait_until(lambda: running.poll() is not None or restic_doing("copy", "kliniek"),
                   what="restic to copy")
        lines = command_lines()
    finally:
        out, err = running.communicate(timeout=600)
    assert running.returncode == 0, out + err
    run = json.loads(out)["runs"][0]
    assert [c["status"] for c in run["copies"]] == ["ok"], run
    assert any(" copy " in line and "kliniek" in line for line in lines), \
        "the copy was not watched"
    assert originals(snapshots(env, "kliniek", "ber")) == {run["snapshot_id"][:8]}
    said += [out, err, env.bkp("status", "kliniek").stdout,
             env.bkp("status", "kliniek", "--json").stdout]
    catalog = (env.home / "catalog.db").read_bytes()
    for server in (first, second):
        assert not any(server.secret_key in line for line in lines)
        assert not any(server.secret_key in text for text in said)
        assert server.secret_key.encode() not in catalog
    with sqlite3.connect(env.home / "catalog.db") as db:
        rows = db.execute("select copy_id, status, snapshot_id from copy_results").fetchall()
    assert rows == [("ber", "ok", run["copies"][0]["snapshot_id"])]


# ------------------------------------------------------------------ mixed pairs

def test_sftp_to_s3(bkp_env, sshd, s3):
    env = bkp_env
    env.sftp_tenant("praktijk", sshd)
    add_copies(env, "praktijk", s3_copy(env, s3, "praktijk"))
    env.bkp_json("init", "praktijk")
    run = backup(env, "praktijk")
    [copy] = run["copies"]
    assert copy["status"] == "ok" and copy["id"] == "1", run
    assert originals(snapshots(env, "praktijk", "1")) == {run["snapshot_id"][:8]}


def test_an_unreachable_copy_fails_the_run_keeps_the_snapshot_and_the_next_night_fills_the_hole(
        bkp_env, sshd):
    env = bkp_env
    env.local_tenant("huisarts")
    add_copies(env, "huisarts", sftp_copy(env, sshd, "huisarts", id="fra"))
    env.bkp_json("init", "huisarts")
    path = env.policies / "huisarts.yaml"
    reachable = path.read_text()
    doc = yaml.safe_load(reachable)
    doc["copies"][0]["port"] = free_port()  # nothing listens there
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    failed = backup(env, "huisarts", expect=1)
    assert failed["status"] == "failed" and "copy fra" in failed["error"], failed
    [copy] = failed["copies"]
    assert copy["status"] == "failed" and copy["snapshot_id"] is None
    assert "copy fra" in copy["error"] and "cannot reach" in copy["error"]
    # The destination keeps the night's snapshot.
    assert failed["snapshot_id"][:8] in originals(snapshots(env, "huisarts"))
    text = env.bkp("status", "huisarts")
    assert "! copy fra: never copied, 1 snapshot behind" in text.stdout, text.stdout
    status, _ = env.bkp_json("status", "huisarts")
    [lag] = status["tenants"][0]["copies"]
    assert lag["lag_snapshots"] == 1 and lag["last_copied"] is None and not lag["ok"]
    path.write_text(reachable)
    fixed = backup(env, "huisarts")
    assert fixed["copies"][0]["status"] == "ok"
    assert fixed["copies"][0]["snapshots_copied"] == 2
    assert originals(snapshots(env, "huisarts", "fra")) == {failed["snapshot_id"][:8],
                                                            fixed["snapshot_id"][:8]}
    status, _ = env.bkp_json("status", "huisarts")
    [lag] = status["tenants"][0]["copies"]
    assert lag["lag_snapshots"] == 0 and lag["ok"]
    assert lag["last_copied"]["snapshot_id"] == fixed["copies"][0]["snapshot_id"]


def test_retention_applies_to_each_copy(bkp_env):
    env = bkp_env
    env.local_tenant("tandarts", retention={"last": 2})
    add_copies(env, "tandarts", local_copy(env, "tandarts"))
    env.bkp_json("init", "tandarts")
    made = []
    for night in range(3):
        (env.root / "data" / "tandarts" / f"night-{night}.txt").write_text(str(night))
        made.append(backup(env, "tandarts"))
    kept = snapshots(env, "tandarts", "1")
    assert originals(kept) == {run["snapshot_id"][:8] for run in made[1:]}
    assert made[-1]["copies"][0]["snapshots_kept"] == 2
    # A snapshot lost from the copy (here forgotten by hand) comes back the next night,
    # although bkp's records say the copy holds it.
    lost = made[-1]["copies"][0]["snapshot_id"]
    forgot = env.restic_at(env.root / "site-b" / "tandarts", env.secrets / "tandarts.key",
                           "forget", lost)
    assert forgot.returncode == 0, forgot.stderr
    (env.root / "data" / "tandarts" / "night-3.txt").write_text("3")
    made.append(backup(env, "tandarts"))
    assert made[-1]["copies"][0]["snapshots_copied"] == 2
    assert originals(snapshots(env, "tandarts", "1")) == {
        run["snapshot_id"][:8] for run in made[2:]}


def test_copies_at_the_same_site_or_outside_the_eea_are_invalid(bkp_env, sshd):
    env = bkp_env
    env.sftp_tenant("kliniek", sshd)
    add_copies(env, "kliniek", sftp_copy(env, sshd, "kliniek", site="SITE-A"))
    done = env.bkp("policy", "validate")
    assert done.returncode == 3 and "copies.0.site: at the same site as destination" in \
        done.stdout, done.stdout
    assert env.bkp("backup", "kliniek").returncode == 3
    add_copies(env, "kliniek", sftp_copy(env, sshd, "kliniek", country="CH"))
    done = env.bkp("policy", "validate")
    assert done.returncode == 3 and "copies.0.country: CH is outside the EEA" in done.stdout


# ------------------------------------------------------------------ databases in a copy

def test_a_copy_drill_loads_the_dump_and_finds_its_inventory(bkp_env, postgresql):
    """In a copy the dump has another id, while its inventory still names the original's:
    the drill of the copy must pair them, not report the inventory missing."""
    from tests.integration.test_databases import database_entry

    env = bkp_env
    env.local_tenant("apotheek", databases=[database_entry(postgresql)])
    add_copies(env, "apotheek", local_copy(env, "apotheek", id="b"))
    env.bkp_json("init", "apotheek")
    run = backup(env, "apotheek")
    assert run["copies"][0]["status"] == "ok"
    assert run["copies"][0]["snapshots_copied"] == 3  # files, dump, inventory
    drill, _ = env.bkp_json("drill", "apotheek", "--copy", "b")
    [result] = drill["drills"]
    assert result["status"] == "passed", result
    assert result["copy"] == "b"
    assert [d["status"] for d in result["databases"]] == ["passed"]


def test_a_copy_server_with_another_host_key_is_refused_with_4_and_named(bkp_env, sshd):
    env = bkp_env
    env.local_tenant("fysio")
    add_copies(env, "fysio", sftp_copy(env, sshd, "fysio", id="fra"))
    env.bkp_json("init", "fysio")
    backup(env, "fysio")
    doc = yaml.safe_load((env.policies / "fysio.yaml").read_text())
    doc["copies"][0]["host_key"] = sshd.other_host_key
    (env.policies / "fysio.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    refused = backup(env, "fysio", expect=4)
    [copy] = refused["copies"]
    assert copy["status"] == "failed" and "copy fra" in copy["error"]
    assert "host_key" in copy["error"] and "refused" in copy["error"], copy
    assert refused["snapshot_id"][:8] in originals(snapshots(env, "fysio"))


def test_rest_to_rest_each_with_its_own_credential_and_certificate(bkp_env, rest,
                                                                     tmp_path_factory):
    """Two REST servers with their own self-signed certificates and htpasswd: each
    location (with its credential) reaches restic in its own variable, and restic trusts
    both certificates."""
    from tests.conftest import start_rest

    other, proc = start_rest(tmp_path_factory.mktemp("rest-copy"))
    try:
        env = bkp_env
        env.rest_tenant("kliniek", rest)
        add_copies(env, "kliniek", {
            "id": "fra", "type": "rest", "country": "DE", "site": "site-b",
            "url": f"{other.url}/{env.root.name}/kliniek",
            "credentials_file": str(other.credentials_file), "ca_file": str(other.ca_file)})
        document, _ = env.bkp_json("init", "kliniek")
        assert [c["status"] for c in document["tenants"][0]["copies"]] == ["initialised"]
        run = backup(env, "kliniek")
        assert [c["status"] for c in run["copies"]] == ["ok"], run
        assert (other.root / env.root.name / "kliniek" / "config").is_file()
        assert originals(snapshots(env, "kliniek", "fra")) == {run["snapshot_id"][:8]}
        said = json.dumps(document) + json.dumps(run)
        assert other.password not in said and rest.password not in said
    finally:
        stop(proc)
