"""One suite, every destination: the same scenarios through the real CLI against a local
disk, a real OpenSSH sftp server, moto's S3 server and rclone's restic REST server with TLS
on loopback (restic's own model: one suite run against every backend).

A destination kind is one entry in KINDS: a factory that places a tenant there, plus the
little only that kind knows (where its objects lie and how to damage one, how it is put
outside the EEA, how it stops). A kind is one class in KINDS.

Expensive things are shared: one source tree for every tenant, and per kind one module-wide
tenant that lives through init, four backups and retention, which the read-only scenarios
(snapshots, restore, drill, status) then look at. Scenarios that break something get a
tenant of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import boto3
import pytest

from tests.adversarial.test_home_faults import small_filesystem
from tests.conftest import (
    BkpEnv,
    S3Server,
    new_bkp_env,
    start_rest,
    start_s3,
    start_sshd,
    stop,
)
from tests.helpers import big_file, popen_bkp, restic_doing, wait_until

pytestmark = pytest.mark.integration

KEEP_LAST = 3
NIGHTS = KEEP_LAST + 1  # one backup more than `last` keeps: forget must remove one


# ---------------------------------------------------------------- destination kinds

class Kind:
    """What the suite needs to know about one kind of destination."""

    name: str
    pins_host_key = False  # sftp: a changed server key must be refused (4)
    has_credentials = False  # sftp, s3: the server checks who connects
    # What the error of a backup whose destination stopped names, and the policy it needs.
    stopped_cause = "unreachable"
    stoppable_policy: ClassVar[dict] = {}

    def __init__(self, request: pytest.FixtureRequest):
        self.request = request

    def tenant(self, env: BkpEnv, tenant: str, **overrides) -> None:
        raise NotImplementedError

    def outside_eea(self, env: BkpEnv, tenant: str) -> None:
        """A tenant whose destination lies outside the EEA (an invalid policy)."""
        self.tenant(env, tenant)
        dest = env.tenants[tenant]["destination"]
        env.write_policy(tenant, {**dest, "country": "US"})

    def untouched(self, env: BkpEnv, tenant: str) -> bool:
        """Nothing of the tenant's repository exists at the destination."""
        raise NotImplementedError

    def objects(self, env: BkpEnv, tenant: str, folder: str) -> dict[str, int]:
        """The repository's objects under `folder` (data, snapshots, ...): name -> size."""
        raise NotImplementedError

    def read(self, env: BkpEnv, tenant: str, name: str) -> bytes:
        raise NotImplementedError

    def write(self, env: BkpEnv, tenant: str, name: str, content: bytes) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def checking_credentials(self, env: BkpEnv, tenant: str):
        """A tenant on a destination that checks who connects. Yields a function that gives
        the tenant a credential the destination refuses (other than the repository
        password) and returns the words the error must carry."""
        raise NotImplementedError

    @contextlib.contextmanager
    def stoppable(self, env: BkpEnv, tenant: str, **overrides):
        """A tenant on a destination of its own, which the yielded function stops."""
        raise NotImplementedError


class FileKind(Kind):
    """A repository that is a directory on this machine's disks (local; the sftp server's
    directory on loopback)."""

    def repo(self, env: BkpEnv, tenant: str) -> Path:
        return Path(env.tenants[tenant]["destination"]["path"])

    def untouched(self, env, tenant):
        return not self.repo(env, tenant).exists()

    def objects(self, env, tenant, folder):
        base = self.repo(env, tenant)
        return {str(p.relative_to(base)): p.stat().st_size
                for p in (base / folder).rglob("*") if p.is_file() and "-tmp-" not in p.name}

    def read(self, env, tenant, name):
        return (self.repo(env, tenant) / name).read_bytes()

    def write(self, env, tenant, name, content):
        path = self.repo(env, tenant) / name
        path.chmod(0o600)  # restic leaves its files read-only
        path.write_bytes(content)


class LocalKind(FileKind):
    name = "local"
    stopped_cause = "read-only"

    def tenant(self, env, tenant, **overrides):
        env.local_tenant(tenant, **overrides)

    @contextlib.contextmanager
    def stoppable(self, env, tenant, **overrides):
        # The backup disk turns read-only under a running backup (a failing disk, an
        # ext4 errors=remount-ro): a tmpfs of its own, remounted read-only.
        with small_filesystem(env.root / "backupdisk", size="512m") as disk:
            env.write_policy(tenant, {"type": "local", "country": "NL",
                                      "path": str(disk / tenant)}, **overrides)
            yield lambda: wait_until(lambda: remounted_read_only(disk), timeout=120,
                                     what="the backup disk to remount read-only")


class SftpKind(FileKind):
    name = "sftp"
    pins_host_key = True
    has_credentials = True
    stopped_cause = "cannot reach sftp destination"

    def tenant(self, env, tenant, **overrides):
        env.sftp_tenant(tenant, self.request.getfixturevalue("sshd"), **overrides)

    @contextlib.contextmanager
    def checking_credentials(self, env, tenant):
        self.tenant(env, tenant)

        def unauthorised_identity() -> str:
            stranger = env.root / f"{tenant}-stranger"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(stranger)], check=True)
            dest = env.tenants[tenant]["destination"]
            env.write_policy(tenant, {**dest, "identity_file": str(stranger)})
            return "refused identity_file"

        yield unauthorised_identity

    @contextlib.contextmanager
    def stoppable(self, env, tenant, **overrides):
        base = env.root / "own-sshd"
        base.mkdir()
        server, proc = start_sshd(base)
        try:
            env.sftp_tenant(tenant, server, **overrides)
            yield lambda: kill_with_descendants(proc.pid)
        finally:
            stop(proc)


class S3Kind(Kind):
    name = "s3"
    has_credentials = True
    # restic 0.14 (and the minio client inside it) retries a vanished S3 endpoint for about
    # six minutes before it gives up; the policy's timeout bounds that here.
    stopped_cause = "did not finish within"
    stoppable_policy: ClassVar[dict] = {"timeout_minutes": 1}

    @property
    def server(self):
        return self.request.getfixturevalue("s3")

    def tenant(self, env, tenant, **overrides):
        env.s3_tenant(tenant, self.server, **overrides)

    def outside_eea(self, env, tenant):
        # A real bucket in London: the policy alone must stop bkp before it asks S3.
        env.s3_tenant(tenant, self.server, region="eu-west-2")

    def _where(self, env, tenant):
        """A client of the tenant's S3 server (the shared one or a test's own), its bucket
        and the repository's prefix."""
        dest = env.tenants[tenant]["destination"]
        client = S3Server(dest["endpoint"], Path()).client(dest["region"])
        return client, dest["bucket"], dest["prefix"].strip("/")

    def untouched(self, env, tenant):
        client, bucket, _ = self._where(env, tenant)
        return client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0

    def objects(self, env, tenant, folder):
        client, bucket, prefix = self._where(env, tenant)
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/{folder}/")
        return {obj["Key"].removeprefix(f"{prefix}/"): obj["Size"]
                for page in pages for obj in page.get("Contents", [])}

    def read(self, env, tenant, name):
        client, bucket, prefix = self._where(env, tenant)
        return client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()

    def write(self, env, tenant, name, content):
        client, bucket, prefix = self._where(env, tenant)
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=content)

    @contextlib.contextmanager
    def checking_credentials(self, env, tenant):
        # moto accepts any key unless told to check: a server of its own that checks.
        base = env.root / "own-s3"
        base.mkdir()
        server, proc = start_s3(base)
        try:
            env.s3_tenant(tenant, checking_keys(server))

            def wrong_secret_key() -> str:
                wrong = env.root / f"{tenant}-credentials"
                wrong.write_text(f"[default]\naws_access_key_id = {server.access_key}\n"
                                 f"aws_secret_access_key = not-the-secret-key-000000000000\n")
                wrong.chmod(0o600)
                dest = env.tenants[tenant]["destination"]
                env.write_policy(tenant, {**dest, "credentials_file": str(wrong)})
                return "refused the credentials"

            yield wrong_secret_key
        finally:
            stop(proc)

    @contextlib.contextmanager
    def stoppable(self, env, tenant, **overrides):
        base = env.root / "own-s3"
        base.mkdir()
        server, proc = start_s3(base)
        try:
            env.s3_tenant(tenant, server, **overrides)
            yield proc.kill
        finally:
            stop(proc)


class RestKind(FileKind):
    """rclone serve restic keeps each repository as a directory under what it serves."""

    name = "rest"
    has_credentials = True
    # restic 0.14 retries a vanished REST server with backoff for minutes, as it does S3;
    # the policy's timeout bounds that here.
    stopped_cause = "did not finish within"
    stoppable_policy: ClassVar[dict] = {"timeout_minutes": 1}

    def tenant(self, env, tenant, **overrides):
        env.rest_tenant(tenant, self.request.getfixturevalue("rest"), **overrides)

    def repo(self, env, tenant):
        # The served root, then the URL's path (the env's folder name, the tenant).
        url = env.tenants[tenant]["destination"]["url"]
        server_root = Path(env.tenants[tenant]["destination"]["ca_file"]).parent / "srv"
        return server_root / url.split("/", 3)[3]

    @contextlib.contextmanager
    def checking_credentials(self, env, tenant):
        self.tenant(env, tenant)

        def wrong_password() -> str:
            wrong = env.root / f"{tenant}-rest-credentials"
            user = env.tenants[tenant]["destination"]["credentials_file"]
            wrong.write_text(Path(user).read_text().split(":", 1)[0] + ":not-the-password\n")
            wrong.chmod(0o600)
            dest = env.tenants[tenant]["destination"]
            env.write_policy(tenant, {**dest, "credentials_file": str(wrong)})
            return "refused the credentials"

        yield wrong_password

    @contextlib.contextmanager
    def stoppable(self, env, tenant, **overrides):
        base = env.root / "own-rest"
        base.mkdir()
        server, proc = start_rest(base)
        try:
            env.rest_tenant(tenant, server, **overrides)
            yield proc.kill
        finally:
            stop(proc)


KINDS = [LocalKind, SftpKind, S3Kind, RestKind]


def kinds(only=lambda kind: True) -> list:
    return [pytest.param(kind, id=kind.name) for kind in KINDS if only(kind)]


@pytest.fixture(scope="module", params=kinds())
def kind(request) -> Kind:
    return request.param(request)


@pytest.fixture(scope="module", params=kinds(lambda k: k.pins_host_key))
def pinned_kind(request) -> Kind:
    return request.param(request)


@pytest.fixture(scope="module", params=kinds(lambda k: k.has_credentials))
def credentialed_kind(request) -> Kind:
    return request.param(request)


def checking_keys(server: S3Server) -> S3Server:
    """Make moto check credentials from now on (it accepts any by default), for an IAM user
    with every right; the server as that user sees it, with a credentials file of its own."""
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id=server.access_key,
                       aws_secret_access_key=server.secret_key)
    iam.create_user(UserName="bkp")
    iam.put_user_policy(UserName="bkp", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="bkp")["AccessKey"]
    # moto's switch: how many more requests go unchecked (none).
    urllib.request.urlopen(urllib.request.Request(
        f"{server.endpoint}/moto-api/reset-auth", data=b"0",
        headers={"Content-Type": "text/plain"})).close()
    checked = S3Server(server.endpoint, server.credentials_file.with_name("iam-credentials"),
                       key["AccessKeyId"], key["SecretAccessKey"])
    checked.write_credentials()
    return checked


# ---------------------------------------------------------------- stopping a destination

def remounted_read_only(path: Path) -> bool:
    # The kernel refuses (EBUSY) while restic holds a file open for writing: try again.
    return subprocess.run(["mount", "-o", "remount,ro", str(path)],
                          capture_output=True).returncode == 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name may hold blanks and parentheses: read after the last ")"
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_with_descendants(pid: int) -> None:
    """The sshd listener and every session it forked: the server is gone, not only closed
    to new connections."""
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


# ---------------------------------------------------------------- shared sources

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """One tree of varied files every tenant backs up (never changed by a test)."""
    root = tmp_path_factory.mktemp("source") / "patients"
    files = {
        "dossier/scan.bin": os.urandom(3 << 20),
        "dossier/notes.txt": b"BSN 123456782\n" * 200,
        "dossier/empty.txt": b"",
        "brieven/verwijzing-\u00e9\u00e8n.txt": "verwijzing \u20ac\n".encode(),
        **{f"agenda/{i:02}.txt": f"afspraak {i}\n".encode() * (i + 1) for i in range(12)},
    }
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    """Enough data that a backup is still writing when its destination stops."""
    root = tmp_path_factory.mktemp("big")
    big_file(root / "archive.bin", 160)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------- a tenant's life

@dataclass
class Life:
    """A tenant that went through init (twice) and NIGHTS backups, with what bkp said."""

    env: BkpEnv
    kind: Kind
    tenant: str
    sources: list[Path]
    inits: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    files: list[int] = field(default_factory=list)  # in the sources, at each backup


@pytest.fixture(scope="module")
def life(kind, source, tmp_path_factory) -> Life:
    env = new_bkp_env(tmp_path_factory.mktemp(f"life-{kind.name}"))
    tenant = f"life-{kind.name}"
    own = env.root / "data" / tenant  # changes every night, unlike the shared source
    kind.tenant(env, tenant, sources=[str(source), str(own)],
                retention={"last": KEEP_LAST}, drill={"sample": 0, "rto_minutes": 60})
    result = Life(env, kind, tenant, [source, own])
    for _ in range(2):
        result.inits.append(env.bkp_json("init", tenant)[0]["tenants"][0])
    for night in range(NIGHTS):
        (own / f"night-{night}.txt").write_text(f"changes of night {night}\n")
        result.files.append(sum(len(tree(root)) for root in result.sources))
        report, _ = env.bkp_json("backup", tenant)
        result.runs.append(report["runs"][0])
    return result


def test_init_prepares_the_repository_once(life):
    first, again = life.inits
    assert first["tenant"] == life.tenant and first["status"] == "initialised", first
    assert again["status"] == "exists", again
    assert first["repository"] and first["repository"] == again["repository"]
    assert life.kind.objects(life.env, life.tenant, "keys"), "no key in the repository"


def test_every_backup_is_recorded_ok_with_its_numbers(life):
    first, second = life.runs[:2]
    for run in life.runs:
        assert run["tenant"] == life.tenant and run["status"] == "ok", run
        assert run["error"] is None and run["duration_s"] >= 0
        assert len(run["snapshot_id"]) >= 8 and int(run["snapshot_id"], 16) >= 0
    assert [run["files"] for run in life.runs] == life.files
    assert first["bytes_added"] > 3 << 20  # the scan, at least
    # The second night stores only what changed: one small file, not the tree again.
    assert 0 < second["bytes_added"] < 1 << 20
    assert len({run["snapshot_id"] for run in life.runs}) == NIGHTS


def short(snapshot_id: str) -> str:
    return snapshot_id[:8]


def test_retention_keeps_what_last_says_in_bkp_and_in_restic(life):
    kept = sorted(short(run["snapshot_id"]) for run in life.runs[-KEEP_LAST:])
    assert life.runs[-1]["snapshots_kept"] == KEEP_LAST
    listed, _ = life.env.bkp_json("snapshots", life.tenant)
    assert sorted(short(s["id"]) for s in listed["snapshots"]) == kept
    plain = life.env.restic(life.tenant, "snapshots", "--json")  # restic's own view
    assert plain.returncode == 0, plain.stderr
    assert sorted(short(s["id"]) for s in json.loads(plain.stdout)) == kept
    assert len(life.kind.objects(life.env, life.tenant, "snapshots")) == KEEP_LAST


def test_snapshots_lists_each_with_time_paths_and_tags(life):
    listed, _ = life.env.bkp_json("snapshots", life.tenant)
    snapshots = listed["snapshots"]
    assert [s["time"] for s in snapshots] == sorted(s["time"] for s in snapshots)
    for snapshot in snapshots:
        assert sorted(snapshot["paths"]) == sorted(str(p) for p in life.sources), snapshot
        assert f"tenant={life.tenant}" in snapshot["tags"], snapshot
        assert "classification=sensitive" in snapshot["tags"], snapshot


def test_restore_brings_back_every_byte(life, tmp_path):
    target = tmp_path / "restored"
    restored, _ = life.env.bkp_json("restore", life.tenant, "--target", str(target))
    expected = {f"{root}/{name}": content for root in life.sources
                for name, content in tree(root).items()}
    assert restored["tenant"] == life.tenant and restored["target"] == str(target)
    assert short(restored["snapshot_id"]) == short(life.runs[-1]["snapshot_id"])
    assert restored["files"] == len(expected)
    assert restored["bytes"] == sum(len(c) for c in expected.values())
    got = {f"/{name}": content for name, content in tree(target).items()}
    assert got.keys() == expected.keys()
    for name, content in expected.items():
        assert got[name] == content, f"{name} differs after restore"


def test_restore_of_an_older_snapshot_has_only_what_it_held(life, tmp_path):
    oldest_kept = life.runs[-KEEP_LAST]["snapshot_id"]
    target = tmp_path / "older"
    life.env.bkp_json("restore", life.tenant, "--target", str(target), "--snapshot",
                      short(oldest_kept))
    nights = sorted(p.name for p in (target / str(life.sources[1]).lstrip("/")).iterdir()
                    if p.name.startswith("night-"))
    assert nights == [f"night-{n}.txt" for n in range(NIGHTS - KEEP_LAST + 1)]


def test_restore_into_a_non_empty_target_is_refused(life, tmp_path):
    (tmp_path / "occupied.txt").write_text("someone else's file\n")
    report, _ = life.env.bkp_json("restore", life.tenant, "--target", str(tmp_path),
                                  expect=4)
    assert "not empty" in report["error"], report
    assert [p.name for p in tmp_path.iterdir()] == ["occupied.txt"]


def test_drill_passes_on_a_good_repository(life):
    report, _ = life.env.bkp_json("drill", life.tenant)
    drill = report["drills"][0]
    assert drill["tenant"] == life.tenant and drill["status"] == "passed", drill
    assert drill["problems"] == []
    assert short(drill["snapshot_id"]) == short(life.runs[-1]["snapshot_id"])
    assert drill["files_checked"] == sum(len(tree(root)) for root in life.sources)
    assert drill["bytes_restored"] > 3 << 20 and drill["duration_s"] >= 0


def test_status_reads_the_life_as_it_was(life):
    report, _ = life.env.bkp_json("status", life.tenant)
    status = report["tenants"][0]
    assert status["tenant"] == life.tenant and status["destination"] == life.kind.name
    assert status["last_backup"]["status"] == "ok" and status["rpo_ok"] is True, status
    assert short(status["last_backup"]["snapshot_id"]) == short(life.runs[-1]["snapshot_id"])
    assert "error" not in status, status


# ---------------------------------------------------------------- damage

def flip_a_byte_in_the_largest_pack(kind: Kind, env: BkpEnv, tenant: str) -> str:
    packs = kind.objects(env, tenant, "data")
    name = max(packs, key=packs.get)
    content = bytearray(kind.read(env, tenant, name))
    content[len(content) // 2] ^= 0x01
    kind.write(env, tenant, name, bytes(content))
    assert kind.read(env, tenant, name) == content  # the destination really holds the flip
    return name


def test_a_flipped_byte_in_a_pack_fails_the_drill_with_5(kind, bkp_env, source):
    env = bkp_env
    kind.tenant(env, "flipped", sources=[str(source)], drill={"sample": 0, "rto_minutes": 60})
    env.bkp_json("init", "flipped")
    env.bkp_json("backup", "flipped")
    flip_a_byte_in_the_largest_pack(kind, env, "flipped")
    done = env.bkp("drill", "flipped", "--json")
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)  # never 0 or 1
    drill = json.loads(done.stdout)["drills"][0]
    assert drill["status"] == "failed" and drill["problems"], drill
    assert "Traceback" not in done.stderr
    status, _ = env.bkp_json("status", "flipped")
    assert status["tenants"][0]["last_drill"]["status"] == "failed", status


# ---------------------------------------------------------------- wrong keys and places

def test_a_wrong_repository_password_is_named(kind, bkp_env):
    env = bkp_env
    kind.tenant(env, "forgotten")
    env.bkp_json("init", "forgotten")
    (env.secrets / "forgotten.key").write_text("not the password at all\n")
    report, _ = env.bkp_json("backup", "forgotten", expect=1)
    run = report["runs"][0]
    assert run["status"] == "failed" and "wrong repository password" in run["error"], run
    report, _ = env.bkp_json("drill", "forgotten", expect=1)
    drill = report["drills"][0]
    assert drill["status"] == "failed" and "wrong repository password" in drill["error"]
    assert env.password not in json.dumps(report)
    status, _ = env.bkp_json("status", "forgotten")
    assert "wrong repository password" in status["tenants"][0]["error"], status


def test_a_credential_the_destination_refuses_is_named(credentialed_kind, bkp_env):
    env, kind = bkp_env, credentialed_kind
    with kind.checking_credentials(env, "refused") as refuse:
        env.bkp_json("init", "refused")
        env.bkp_json("backup", "refused")  # the right credential is accepted
        words = refuse()
        report, _ = env.bkp_json("backup", "refused", expect=1)
        assert words in report["runs"][0]["error"], report
        report, _ = env.bkp_json("drill", "refused", expect=1)
        assert words in report["drills"][0]["error"], report
        status, _ = env.bkp_json("status", "refused")
        assert words in status["tenants"][0]["error"], status


def test_a_changed_host_key_is_refused_with_4_and_nothing_touched(pinned_kind, bkp_env):
    env, kind = bkp_env, pinned_kind
    kind.tenant(env, "swapped")
    env.bkp_json("init", "swapped")
    env.bkp_json("backup", "swapped")
    before = {folder: kind.objects(env, "swapped", folder)
              for folder in ("data", "index", "snapshots", "locks", "keys")}
    dest = env.tenants["swapped"]["destination"]
    env.write_policy("swapped", {**dest, "host_key": kind.request.getfixturevalue(
        "sshd").other_host_key})
    for command in (["backup"], ["snapshots"], ["drill"],
                    ["restore", "--target", str(env.root / "restored")]):
        done = env.bkp(*command[:1], "swapped", *command[1:], "--json")
        assert done.returncode == 4, (command, done.stdout, done.stderr)
        assert "host key" in done.stdout.replace("host_key", "host key"), done.stdout
    after = {folder: kind.objects(env, "swapped", folder) for folder in before}
    assert after == before


def test_a_destination_outside_the_eea_is_refused_before_anything(kind, bkp_env):
    env = bkp_env
    kind.outside_eea(env, "abroad")
    for command in ("init", "backup"):
        done = env.bkp(command, "abroad", "--json")
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        assert "outside the EEA" in done.stdout + done.stderr
    assert kind.untouched(env, "abroad")


def test_an_s3_bucket_that_does_not_exist_is_named(bkp_env, s3):
    env = bkp_env
    env.s3_tenant("nobucket", s3, bucket=f"{env.root.name[:20]}-never-made".lower()
                  .replace("_", "-"), create=False)
    for command in ("init", "backup"):
        done = env.bkp(command, "nobucket", "--json")
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "-never-made does not exist" in done.stdout, done.stdout


def test_an_s3_bucket_in_another_region_is_refused_with_4_at_night(bkp_env, s3):
    env = bkp_env
    env.s3_tenant("moved", s3)
    env.bkp_json("init", "moved")
    env.bkp_json("backup", "moved")
    elsewhere = f"{env.root.name[:20]}-moved-north".lower().replace("_", "-")
    s3.create_bucket(elsewhere, "eu-north-1")
    dest = env.tenants["moved"]["destination"]
    env.write_policy("moved", {**dest, "bucket": elsewhere})
    report, _ = env.bkp_json("backup", "moved", expect=4)
    assert "eu-north-1" in report["runs"][0]["error"], report
    assert s3.client("eu-north-1").list_objects_v2(Bucket=elsewhere)["KeyCount"] == 0


# ---------------------------------------------------------------- a destination that stops

def test_a_destination_that_stops_mid_backup_fails_the_run(kind, bkp_env, big_source):
    env = bkp_env
    with kind.stoppable(env, "stops", sources=[str(big_source)],
                        **kind.stoppable_policy) as stop_destination:
        env.bkp_json("init", "stops")
        backup = popen_bkp(env, "backup", "stops", "--json")
        wait_until(lambda: backup.poll() is not None or (
            restic_doing("backup", "stops") and kind_has_packs(kind, env, "stops")),
            what="the backup to write its first pack")
        assert backup.poll() is None, backup.communicate()
        stop_destination()
        out, err = backup.communicate(timeout=600)
    assert backup.returncode == 1, (backup.returncode, out, err)
    run = json.loads(out)["runs"][0]
    assert run["status"] == "failed" and run["result"] in ("failed", "interrupted"), run
    assert kind.stopped_cause in run["error"], run
    assert "Traceback" not in err
    status, _ = env.bkp_json("status", "stops")
    tenant = status["tenants"][0]
    assert tenant["last_backup"]["status"] in ("failed", "interrupted"), tenant
    assert tenant["state"] == "failed" and tenant["error"] == run["error"], tenant


def kind_has_packs(kind: Kind, env: BkpEnv, tenant: str) -> bool:
    with contextlib.suppress(OSError, FileNotFoundError):
        return bool(kind.objects(env, tenant, "data"))
    return False



def test_a_backup_disk_unmounted_mid_run_is_never_a_good_backup(bkp_env, big_source):
    """restic re-creates the folders it misses: with the disk gone it writes the rest of the
    snapshot into the bare mount point, beside no config and no keys, and exits 0."""
    env = bkp_env
    with small_filesystem(env.root / "backupdisk", size="512m") as disk:
        repo = disk / "unmounted"
        # A legal hold: no forget after the backup, which would stumble on the missing
        # config and hide what the backup itself reports.
        env.write_policy("unmounted", {"type": "local", "country": "NL", "path": str(repo)},
                         sources=[str(big_source)], retention={"last": 3, "legal_hold": True})
        env.bkp_json("init", "unmounted")
        backup = popen_bkp(env, "backup", "unmounted", "--json")
        wait_until(lambda: backup.poll() is not None or (
            restic_doing("backup", "unmounted")
            and any(p.is_file() for p in (repo / "data").rglob("*"))),
            what="the backup to write its first pack")
        assert backup.poll() is None, backup.communicate()
        subprocess.run(["umount", "-l", str(disk)], check=True)
        out, err = backup.communicate(timeout=600)
    assert backup.returncode == 1, (backup.returncode, out, err)
    run = json.loads(out)["runs"][0]
    assert run["status"] == "failed" and "unmounted" in run["error"], run
    status, _ = env.bkp_json("status", "unmounted")
    assert status["tenants"][0]["state"] == "failed", status
