"""Fixtures with real parts: restic, an OpenSSH sshd on a loopback port, moto's S3 server.

A missing tool is a failure, never a skip: scripts/install.sh installs every one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests import contract

REPO_ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str, path: str | None = None) -> str:
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run scripts/install.sh --dev (tests never skip "
                    f"a missing tool)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20,
                  log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = (log.read_text(errors="replace") if log else
                   proc.stdout.read().decode(errors="replace") if proc.stdout else "")
            pytest.fail(f"{what} exited with {proc.returncode}: {out[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not listen on port {port} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------ sshd

@dataclass
class SshServer:
    host: str
    port: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA..." as pinned in a policy
    identity_file: Path
    root: Path  # a directory on the "server" where repositories go
    other_host_key: str = ""  # a valid key of another server, for mismatch tests


def _keygen(path: Path, kind: str = "ed25519") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "bkp-test", "-f",
                    str(path)], check=True)
    path.chmod(0o600)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def start_sshd(base: Path) -> tuple[SshServer, subprocess.Popen]:
    """A real OpenSSH sshd on a loopback port, with its own host and client keys under
    `base`. The session's `sshd` is one; a test that stops a server starts its own."""
    sshd_bin = require_tool("sshd", "/usr/sbin/sshd")
    require_tool("ssh")
    host_key = _keygen(base / "host_ed25519")
    other_host_key = _keygen(base / "other_host_ed25519")
    client_pub = _keygen(base / "client_ed25519")
    authorized = base / "authorized_keys"
    authorized.write_text(client_pub + "\n")
    authorized.chmod(0o600)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    port = free_port()
    config = base / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {base / 'host_ed25519'}",
        f"AuthorizedKeysFile {authorized}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp",
        f"PidFile {base / 'sshd.pid'}", "LogLevel ERROR", "MaxStartups 100:30:200",
        "MaxSessions 100", ""]))
    log = base / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    wait_for_port(port, proc, "sshd", log=log)
    root = base / "srv"
    root.mkdir()
    return (SshServer("127.0.0.1", port, "root", host_key, base / "client_ed25519", root,
                      other_host_key), proc)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SshServer:
    server, proc = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop(proc)


# ------------------------------------------------------------------ S3 (moto server)

@dataclass
class S3Server:
    endpoint: str
    credentials_file: Path
    access_key: str = "AKIDBKPTEST00000000"
    secret_key: str = "bkp-test-secret-key-never-printed-0001"

    def client(self, region: str = "eu-central-1"):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=region,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)

    def create_bucket(self, name: str, region: str) -> None:
        self.client(region).create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})


def start_s3(base: Path) -> tuple[S3Server, subprocess.Popen]:
    """moto's S3 server on a loopback port, with a credentials file under `base`. The
    session's `s3` is one; a test that stops a server starts its own."""
    moto = require_tool("moto_server", str(Path(sys.executable).parent / "moto_server"))
    port = free_port()
    # Its log goes to a file: a pipe nobody reads fills up after some hundred requests,
    # and the server then hangs on its next log line.
    log = base / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT)
    wait_for_port(port, proc, "moto_server", log=log)
    server = S3Server(f"http://127.0.0.1:{port}", base / "credentials")
    server.credentials_file.write_text(
        f"[default]\naws_access_key_id = {server.access_key}\n"
        f"aws_secret_access_key = {server.secret_key}\n")
    server.credentials_file.chmod(0o600)
    return server, proc


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    server, proc = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    stop(proc)


# ------------------------------------------------------------------ a bkp installation

@dataclass
class BkpEnv:
    """A policies directory, a BKP_HOME and tenant data, driven through the real CLI."""

    root: Path
    policies: Path
    home: Path
    secrets: Path
    password: str = "correct horse battery staple 4711"
    tenants: dict = field(default_factory=dict)

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RESTIC_", "AWS_", "BKP_"))}
        env.update(BKP_POLICIES=str(self.policies), BKP_HOME=str(self.home),
                   BKP_OPERATOR="test-operator")
        env.update(extra)
        return env

    def bkp(self, *args: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "bkp", *args], capture_output=True,
                              text=True, env=self.env(**env), timeout=timeout)
        contract.check(list(args), done.stdout)
        return done

    def bkp_json(self, *args: str, expect: int | None = 0, **env) -> tuple[dict, int]:
        done = self.bkp(*args, "--json", **env)
        if expect is not None:
            assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
        return json.loads(done.stdout), done.returncode

    def make_data(self, tenant: str, files: dict[str, bytes] | None = None) -> Path:
        source = self.root / "data" / tenant
        source.mkdir(parents=True, exist_ok=True)
        for name, content in (files or {"patients/a.txt": b"BSN 123456782\n",
                                        "patients/b.txt": b"medical record\n" * 100}).items():
            path = source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return source

    def password_file(self, tenant: str) -> Path:
        path = self.secrets / f"{tenant}.key"
        path.write_text(self.password + "\n")
        path.chmod(0o600)
        return path

    def write_policy(self, tenant: str, destination: dict, **overrides) -> Path:
        source = self.make_data(tenant)
        doc = {
            "tenant": tenant,
            "description": f"test tenant {tenant}",
            "purpose": "zorgdossiers",
            "classification": "sensitive",
            "sources": [str(source)],
            "exclude": ["*.tmp"],
            "destination": destination,
            "password_file": str(self.password_file(tenant)),
            "schedule": {"backup": "0 2 * * *", "drill": "0 6 1 * *"},
            "retention": {"last": 3, "daily": 7},
            "drill": {"sample": 5, "rto_minutes": 60},
            "rpo_hours": 26,
        }
        doc.update(overrides)
        path = self.policies / f"{tenant}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.tenants[tenant] = doc
        return path

    def local_tenant(self, tenant: str, **overrides) -> Path:
        (self.root / "offsite").mkdir(exist_ok=True)  # the "mounted backup disk"
        return self.write_policy(tenant, {"type": "local", "country": "NL",
                                          "path": str(self.root / "offsite" / tenant)},
                                 **overrides)

    def sftp_tenant(self, tenant: str, server: SshServer, **overrides) -> Path:
        return self.write_policy(tenant, {
            "type": "sftp", "country": "NL", "host": server.host, "port": server.port,
            "user": server.user, "path": str(server.root / self.root.name / tenant),
            "host_key": server.host_key, "identity_file": str(server.identity_file)},
            **overrides)

    def s3_tenant(self, tenant: str, server: S3Server, region: str = "eu-central-1",
                  bucket: str | None = None, create: bool = True, **overrides) -> Path:
        bucket = bucket or f"{self.root.name[:20]}-{tenant}".lower().replace("_", "-")
        if create:
            server.create_bucket(bucket, region)
        return self.write_policy(tenant, {
            "type": "s3", "country": "DE", "endpoint": server.endpoint, "bucket": bucket,
            "region": region, "prefix": "bkp", "credentials_file": str(server.credentials_file)},
            **overrides)

    def restic_at(self, repo: Path, password_file: Path, *args: str) -> subprocess.CompletedProcess:
        """Plain restic against a local repository that is not a tenant's."""
        return subprocess.run(["restic", "-r", str(repo), *args], capture_output=True,
                              text=True, env={**self.env(),
                                              "RESTIC_PASSWORD_FILE": str(password_file)},
                              timeout=300)

    def restic(self, tenant: str, *args: str, **env) -> subprocess.CompletedProcess:
        """Plain restic against a tenant's repository, as an operator would run it."""
        dest = self.tenants[tenant]["destination"]
        extra = {"RESTIC_PASSWORD_FILE": str(self.secrets / f"{tenant}.key")}
        options: list[str] = []
        if dest["type"] == "local":
            repo = dest["path"]
        elif dest["type"] == "s3":
            repo = f"s3:{dest['endpoint']}/{dest['bucket']}/{dest['prefix']}"
            extra.update(AWS_ACCESS_KEY_ID=S3Server.access_key,
                         AWS_SECRET_ACCESS_KEY=S3Server.secret_key)
            options = ["-o", f"s3.region={dest['region']}"]
        else:
            config = self.home / "ssh" / tenant / "ssh_config"
            repo = f"sftp:bkp-{tenant}:{dest['path']}"
            options = ["-o", f"sftp.command=ssh -F {config} bkp-{tenant} -s sftp"]
        return subprocess.run(["restic", "-r", repo, *options, *args], capture_output=True,
                              text=True, env={**self.env(), **extra, **env}, timeout=300)


def new_bkp_env(root: Path) -> BkpEnv:
    """An empty installation under `root` (the `bkp_env` fixture; module-scoped suites that
    share one installation between tests make theirs with this)."""
    require_tool("restic")
    env = BkpEnv(root, root / "policies", root / "home", root / "secrets")
    for d in (env.policies, env.home, env.secrets):
        d.mkdir(mode=0o700)
    return env


@pytest.fixture
def bkp_env(tmp_path) -> BkpEnv:
    return new_bkp_env(tmp_path)



@pytest.fixture
def ping_server():
    from tests.helpers import serve_pings

    with serve_pings() as served:
        yield served
