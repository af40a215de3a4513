"""Fixtures with real parts: restic, an OpenSSH sshd on a loopback port, moto's S3 server,
rclone's restic REST server with TLS.

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
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests import contract
from tests.cheap_keys import cheapen

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

    def write_credentials(self) -> None:
        """The credentials file a policy names (an AWS shared-credentials file, mode 600)."""
        self.credentials_file.write_text(
            f"[default]\naws_access_key_id = {self.access_key}\n"
            f"aws_secret_access_key = {self.secret_key}\n")
        self.credentials_file.chmod(0o600)

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
    server.write_credentials()
    return server, proc


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    server, proc = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    stop(proc)


# ------------------------------------------------------------------ REST (rclone serve restic)

@dataclass
class RestServer:
    url: str  # https://127.0.0.1:PORT; a tenant's repository is a path below it
    credentials_file: Path  # user:password, mode 600
    ca_file: Path  # the server's self-signed certificate
    other_ca_file: Path  # a certificate of another server, for unknown-CA tests
    root: Path  # the directory rclone serves: repositories lie under it
    user: str = "bkp-nightly"
    # Characters a URL must encode, so a mistake in building restic's location shows.
    password: str = "Rest:pw@/#%20-never-printed-0815"
    append_only: bool = False


def self_signed_certificate(base: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 and localhost."""
    cert, key = base / f"{name}.pem", base / f"{name}.key"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj",
                    f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def htpasswd_line(user: str, password: str) -> str:
    # The password on stdin: never in the argv of a process.
    done = subprocess.run([require_tool("openssl"), "passwd", "-apr1", "-stdin"],
                          input=password + "\n", capture_output=True, text=True, check=True)
    return f"{user}:{done.stdout.strip()}\n"


def start_rest(base: Path, append_only: bool = False,
               tls: bool = True) -> tuple[RestServer, subprocess.Popen]:
    """`rclone serve restic` over TLS on a loopback port, checking an htpasswd file, with
    the certificate and a credentials file under `base`. The session's `rest` is one; a test
    that stops a server (or needs --append-only, or plain http) starts its own."""
    rclone = require_tool("rclone")
    cert, key = self_signed_certificate(base, "rest-server")
    other, _ = self_signed_certificate(base, "other-server")
    root = base / "srv"
    root.mkdir()
    port = free_port()
    server = RestServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}",
                        base / "rest-credentials", cert, other, root, append_only=append_only)
    server.credentials_file.write_text(f"{server.user}:{server.password}\n")
    server.credentials_file.chmod(0o600)
    htpasswd = base / "htpasswd"
    htpasswd.write_text(htpasswd_line(server.user, server.password))
    (base / "rclone.conf").write_text("")
    log = base / "rclone.log"  # a file: a pipe nobody reads would stop the server
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [rclone, "serve", "restic", str(root), "--addr", f"127.0.0.1:{port}",
             *(["--cert", str(cert), "--key", str(key)] if tls else []),
             "--htpasswd", str(htpasswd),
             *(["--append-only"] if append_only else [])],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "RCLONE_CONFIG": str(base / "rclone.conf")})
    wait_for_port(port, proc, "rclone serve restic", log=log)
    return server, proc


@pytest.fixture(scope="session")
def rest(tmp_path_factory) -> RestServer:
    server, proc = start_rest(tmp_path_factory.mktemp("rest"))
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
    # REST servers' URLs and the directories they serve (see cheapen_keys)
    rest_roots: dict = field(default_factory=dict)

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
        if (args and args[0] == "init" and done.returncode == 0
                and not os.environ.get("BKP_TEST_RESTIC_KDF")):  # set: restic's own cost
            self.cheapen_keys()
        return done

    def cheapen_keys(self) -> None:
        """Every repository of the tenants on this machine's disk (local, and sftp served
        from it) gets a cheap key derivation (tests/cheap_keys.py): the suite's CPU."""
        for doc in self.tenants.values():
            places = [doc.get("destination"), *(doc.get("copies") or [])]
            for place in places:
                path = self._path_on_disk(place) if isinstance(place, dict) else None
                if path is not None and path.is_dir():
                    cheapen(path, self.password)

    def _path_on_disk(self, place: dict) -> Path | None:
        if place.get("type") in ("local", "sftp"):
            return Path(str(place.get("path")))
        for url, root in self.rest_roots.items():
            if place.get("type") == "rest" and str(place.get("url")).startswith(url + "/"):
                return root / str(place["url"])[len(url) + 1:]
        return None

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

    def rest_tenant(self, tenant: str, server: RestServer, **overrides) -> Path:
        self.rest_roots[server.url] = server.root
        return self.write_policy(tenant, {
            "type": "rest", "country": "DE", "url": f"{server.url}/{self.root.name}/{tenant}",
            "credentials_file": str(server.credentials_file), "ca_file": str(server.ca_file)},
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
        elif dest["type"] == "rest":
            user, password = Path(dest["credentials_file"]).read_text().strip().split(":", 1)
            url = urllib.parse.urlsplit(dest["url"])
            extra["RESTIC_REPOSITORY"] = (
                f"rest:{url.scheme}://{urllib.parse.quote(user, safe='')}:"
                f"{urllib.parse.quote(password, safe='')}@{url.netloc}{url.path}")
            repo = None
            options = ["--cacert", dest["ca_file"]] if dest.get("ca_file") else []
        elif dest["type"] == "s3":
            repo = f"s3:{dest['endpoint']}/{dest['bucket']}/{dest['prefix']}"
            extra.update(AWS_ACCESS_KEY_ID=S3Server.access_key,
                         AWS_SECRET_ACCESS_KEY=S3Server.secret_key)
            options = ["-o", f"s3.region={dest['region']}"]
        else:
            config = self.home / "ssh" / tenant / "ssh_config"
            repo = f"sftp:bkp-{tenant}:{dest['path']}"
            options = ["-o", f"sftp.command=ssh -F {config} bkp-{tenant} -s sftp"]
        where = ["-r", repo] if repo else []
        return subprocess.run(["restic", *where, *options, *args], capture_output=True,
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


# ------------------------------------------------------------------ database servers
#
# The tenant's "production" databases that bkp dumps from: a real PostgreSQL and a real
# MariaDB, each with a read-only role that has a password, and a database `zorgapp` whose
# values are what breaks naive dump parsers (commas, quotes, newlines, NULLs, binary).
# PostgreSQL refuses root and cannot reach a 0700 pytest directory, so the data directory
# and the socket live under /var/tmp (short socket path, at most 107 bytes) owned by the
# distribution's service user; logs and the password file stay under `base`.

@dataclass
class DatabaseServer:
    kind: str  # "postgresql" | "mariadb"
    socket: Path  # PostgreSQL: the socket directory; MariaDB: the socket file
    host: str
    port: int
    user: str  # the read-only role bkp dumps with
    password_file: Path  # the password alone, mode 0600, as a policy names it
    database: str
    files: Path  # data directory and socket, removed by stop()
    log: Path
    proc: subprocess.Popen = field(repr=False)

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def admin_argv(self, database: str | None = None) -> list[str]:
        """The superuser's client over the socket (to write rows during a dump, make
        databases): SQL goes on its stdin or after -c/-e."""
        if self.kind == "postgresql":
            return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                    str(self.socket), "-p", str(self.port), "-U", "postgres", "-d",
                    database or self.database]
        return ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root",
                "--batch", "--skip-column-names", "--raw", database or self.database]

    def admin(self, sql: str, database: str | None = None) -> str:
        done = subprocess.run(self.admin_argv(database), input=sql, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def reader_env(self) -> dict[str, str]:
        """The environment a client needs to connect as the read-only role over the socket
        (the password in the client's own variable, never in argv)."""
        if self.kind == "postgresql":
            return {"PGHOST": str(self.socket), "PGPORT": str(self.port), "PGUSER": self.user,
                    "PGDATABASE": self.database, "PGPASSWORD": self.password}
        return {"MYSQL_PWD": self.password}

    def reader_argv(self) -> list[str]:
        """Connection options of the read-only role for mariadb/mariadb-dump."""
        return ["--no-defaults", f"--socket={self.socket}", f"--user={self.user}"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.files, ignore_errors=True)


def _service_dir(prefix: str, owner: str) -> Path:
    import pwd
    import tempfile

    files = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    entry = pwd.getpwnam(owner)
    os.chown(files, entry.pw_uid, entry.pw_gid)
    return files


def _password_file(base: Path, password: str) -> Path:
    path = base / "db-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def _wait_for_socket(path: Path, proc: subprocess.Popen, what: str, log: Path,
                     timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: "
                        f"{log.read_text(errors='replace')[-2000:]}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    pytest.fail(f"{what} did not listen on {path} within {timeout}s")


POSTGRESQL_SEED = r"""
CREATE ROLE zorgapp_owner;
CREATE ROLE bkp_reader LOGIN PASSWORD :'password';
GRANT pg_read_all_data TO bkp_reader;
CREATE DATABASE zorgapp OWNER zorgapp_owner;
\connect zorgapp
SET ROLE zorgapp_owner;
CREATE TABLE patients (id serial PRIMARY KEY, bsn text NOT NULL, name text, notes text,
                       photo bytea, born date);
INSERT INTO patients (bsn, name, notes, photo, born)
SELECT lpad((100000000 + i)::text, 9, '0'),
       CASE i % 5 WHEN 0 THEN 'O''Brien, Jr.' WHEN 1 THEN 'de "Vries"' WHEN 2 THEN NULL
                  WHEN 3 THEN E'line one\nline two\r\nline three' ELSE 'tab	and \ backslash' END,
       CASE WHEN i % 3 = 0 THEN NULL ELSE 'allergies: (penicillin), ''x''; ),( ' || i END,
       CASE WHEN i % 4 = 0 THEN NULL ELSE decode('00ff0a0d275c2c28', 'hex') END,
       date '1950-01-01' + i
FROM generate_series(1, 57) AS i;
CREATE TABLE appointments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                           patient_id int REFERENCES patients(id), at timestamptz,
                           reason text);
INSERT INTO appointments (patient_id, at, reason)
SELECT 1 + i % 57, timestamptz '2024-01-01 09:00+01' + i * interval '1 hour', 'controle, ' || i
FROM generate_series(1, 123) AS i;
CREATE TABLE empty_table (id int);
CREATE TABLE measurements (taken date NOT NULL, value numeric) PARTITION BY RANGE (taken);
CREATE TABLE measurements_2023 PARTITION OF measurements
  FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE measurements_2024 PARTITION OF measurements
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO measurements SELECT date '2023-06-01' + i * 3, i FROM generate_series(1, 100) i;
CREATE VIEW adults AS SELECT id, name FROM patients WHERE born < date '2000-01-01';
CREATE MATERIALIZED VIEW patient_count AS SELECT count(*) FROM patients;
CREATE SCHEMA archief;
CREATE TABLE archief."Patiënten 2019" (id int, "weird ""name"" col" text);
INSERT INTO archief."Patiënten 2019" VALUES (1, 'a'), (2, NULL), (3, E'\\x00?');
"""


def start_postgresql(base: Path) -> DatabaseServer:
    """A real PostgreSQL as the `postgres` system user, on a private socket and a loopback
    port, with database `zorgapp` and the read-only role `bkp_reader` (password in a file
    under `base`). The superuser `postgres` has trust on the socket only (for the tests'
    admin statements); `bkp_reader` always needs its password."""
    bindir = Path("/usr/lib/postgresql")
    versions = sorted((int(p.name) for p in bindir.iterdir() if p.name.isdigit()),
                      reverse=True) if bindir.is_dir() else []
    if not versions:
        pytest.fail("PostgreSQL server is not installed: run scripts/install.sh --dev")
    bindir = bindir / str(versions[0]) / "bin"
    files = _service_dir("bkp-test-pg-", "postgres")
    password = "reader-" + os.urandom(8).hex()
    log = base / "postgresql.log"
    initdb = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(files / "data"),
         "-U", "postgres", "-A", "scram-sha-256", "--auth-local=trust", "-E", "UTF8",
         "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
        cwd=files, capture_output=True, text=True, timeout=120)
    assert initdb.returncode == 0, initdb.stderr
    # Only postgres on the socket without a password; everyone else with one.
    (files / "data" / "pg_hba.conf").write_text(
        "local all postgres trust\nlocal all all scram-sha-256\n"
        "host all all 127.0.0.1/32 scram-sha-256\n")
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(bindir / "postgres"), "-D",
             str(files / "data"), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
             "-c", f"unix_socket_directories={files}", "-c", "fsync=off"],
            cwd=files, stdout=out, stderr=subprocess.STDOUT)
    _wait_for_socket(files / f".s.PGSQL.{port}", proc, "PostgreSQL", log)
    server = DatabaseServer("postgresql", files, "127.0.0.1", port, "bkp_reader",
                            _password_file(base, password), "zorgapp", files, log, proc)
    seed = subprocess.run([*server.admin_argv("postgres"), "-v", f"password={password}"],
                          input=POSTGRESQL_SEED, capture_output=True, text=True, timeout=120)
    if seed.returncode != 0:
        server.stop()
        pytest.fail(f"seeding PostgreSQL failed: {seed.stderr}")
    return server


MARIADB_SEED = r"""
CREATE DATABASE zorgapp;
CREATE USER bkp_reader@localhost IDENTIFIED BY '{password}';
CREATE USER bkp_reader@'127.0.0.1' IDENTIFIED BY '{password}';
GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON zorgapp.* TO bkp_reader@localhost;
GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON zorgapp.* TO bkp_reader@'127.0.0.1';
USE zorgapp;
CREATE TABLE patients (id int AUTO_INCREMENT PRIMARY KEY, bsn char(9) NOT NULL,
                       name varchar(200), notes text, photo blob, born date);
INSERT INTO patients (bsn, name, notes, photo, born)
SELECT LPAD(100000000 + seq, 9, '0'),
       ELT(1 + seq % 6, 'O''Brien, Jr.', 'de "Vries"', NULL,
           'line one\nline two\r\nline three', 'tab\tand \\ backslash', '\'),(\'x\',1),('),
       IF(seq % 3 = 0, NULL, CONCAT('allergies: (penicillin), ''x''; ),( ', seq)),
       IF(seq % 4 = 0, NULL, UNHEX('00FF0A0D275C2C28291A22')),
       DATE_ADD('1950-01-01', INTERVAL seq DAY)
FROM seq_1_to_57;
CREATE TABLE appointments (id bigint AUTO_INCREMENT PRIMARY KEY, patient_id int,
                           at datetime, reason varchar(200));
INSERT INTO appointments (patient_id, at, reason)
SELECT 1 + seq % 57, DATE_ADD('2024-01-01 09:00', INTERVAL seq HOUR), CONCAT('controle, ', seq)
FROM seq_1_to_1234;
CREATE TABLE empty_table (id int);
CREATE TABLE `odd ``name`` table` (id int, doc json);
INSERT INTO `odd ``name`` table` VALUES (1, '{{"a": "b,(c)"}}'), (2, NULL);
CREATE TABLE audit_log (id int AUTO_INCREMENT PRIMARY KEY, note varchar(100));
CREATE TABLE versioned (id int, v text) WITH SYSTEM VERSIONING;
INSERT INTO versioned VALUES (1, 'old'), (2, 'two');
UPDATE versioned SET v = 'new' WHERE id = 1;
CREATE SEQUENCE invoice_numbers;
CREATE VIEW adults AS SELECT id, name FROM patients WHERE born < '2000-01-01';
DELIMITER ;;
CREATE TRIGGER patients_audit AFTER INSERT ON patients FOR EACH ROW
INSERT INTO audit_log (note) VALUES (CONCAT('new patient (', NEW.id, ')'));;
CREATE PROCEDURE touch_patient(IN p int)
BEGIN
INSERT INTO audit_log (note) VALUES ('touched'), ('twice');
END;;
DELIMITER ;
"""


def start_mariadb(base: Path) -> DatabaseServer:
    """A real MariaDB as the `mysql` system user, on a private socket and a loopback port,
    with database `zorgapp` and the read-only user `bkp_reader` (password in a file under
    `base`). root logs in over the socket by unix_socket authentication."""
    require_tool("mariadbd", "/usr/sbin/mariadbd")
    files = _service_dir("bkp-test-my-", "mysql")
    password = "reader-" + os.urandom(8).hex()
    log = base / "mariadb.log"
    install = subprocess.run(
        ["mariadb-install-db", "--no-defaults", "--user=mysql", "--skip-test-db",
         f"--datadir={files / 'data'}"], cwd=files, capture_output=True, text=True,
        timeout=120)
    assert install.returncode == 0, install.stderr
    port = free_port()
    sock = files / "mariadb.sock"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={files / 'data'}",
             f"--socket={sock}", f"--pid-file={files / 'mariadbd.pid'}",
             "--bind-address=127.0.0.1", f"--port={port}", "--skip-name-resolve",
             "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"],
            cwd=files, stdout=out, stderr=subprocess.STDOUT)
    _wait_for_socket(sock, proc, "MariaDB", log)
    server = DatabaseServer("mariadb", sock, "127.0.0.1", port, "bkp_reader",
                            _password_file(base, password), "zorgapp", files, log, proc)
    seed = subprocess.run(server.admin_argv("mysql"), input=MARIADB_SEED.format(
        password=password), capture_output=True, text=True, timeout=120)
    if seed.returncode != 0:
        server.stop()
        pytest.fail(f"seeding MariaDB failed: {seed.stderr}")
    return server


@pytest.fixture(scope="session")
def postgresql(tmp_path_factory) -> DatabaseServer:
    server = start_postgresql(tmp_path_factory.mktemp("postgresql"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory) -> DatabaseServer:
    server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    yield server
    server.stop()


# The slowest tests (measured: each waits a minute or more on restic's retries, a policy
# timeout or a cluster night) start first, so that three workers share them instead of one
# worker finishing them alone after the rest of the suite is done.
SLOWEST_FIRST = (
    "tests/integration/test_every_destination.py::test_a_backup_disk_unmounted_mid_run",
    "tests/e2e/test_nightly.py::test_hung_destination_hits_the_policy_timeout",
    "tests/integration/test_every_destination.py::test_a_destination_that_stops_mid_backup",
    "tests/integration/test_rest_destination.py::test_nightly_runs_on_an_append_only_server",
    "tests/e2e/test_fleet_night.py::",
    "tests/adversarial/test_offboard_attacks.py::test_an_approved_erasure_erases_only",
    "tests/adversarial/test_repository_damage.py::test_every_damaged_part_fails_the_drill",
    "tests/integration/test_drill.py::test_deleted_pack_fails_the_drill",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(SLOWEST_FIRST)
                     if item.nodeid.startswith(prefix)), len(SLOWEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
