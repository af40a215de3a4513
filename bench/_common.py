"""Shared helpers of the benchmarks: timing, a clean child environment, tenant policies,
raw restic argv built independently of bkp, a loopback sshd and a restic-counting shim.

Standard library only: the benchmarks drive bkp through its CLI (`.venv/bin/bkp`), exactly
as cron does, and never import it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
BKP = Path(os.environ.get("BKP_BENCH_BKP", REPO_ROOT / ".venv" / "bin" / "bkp"))
RESTIC = shutil.which("restic") or "restic"
PASSWORD = "bench password, not a secret 4711"
HOST = socket.gethostname()


def die(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr)
    sys.exit(1)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that could redirect restic or bkp."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RESTIC_", "AWS_", "BKP_"))}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Measure:
    """Wall time, and CPU time (user + system) of the process and every child it waited
    for: the CPU figure holds up better than wall time when the machine is shared."""

    wall: float
    cpu: float

    def __add__(self, other: Measure) -> Measure:
        return Measure(self.wall + other.wall, self.cpu + other.cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], what: str, *, sync: bool = True,
          check: bool = True) -> tuple[Measure, subprocess.CompletedProcess]:
    """Time one process. Dirty pages of the previous step are flushed first (untimed) so
    one side never pays for the other's writeback."""
    if sync:
        os.sync()
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    measure = Measure(time.perf_counter() - started, _children_cpu() - cpu)
    if check and done.returncode != 0:
        die(f"{what} failed (exit {done.returncode}): {argv}\n{done.stdout[-2000:]}\n"
            f"{done.stderr[-2000:]}")
    return measure, done


def bkp_json(argv: list[str], env: dict[str, str], what: str) -> tuple[Measure, dict]:
    """Time `bkp ... --json` and check every tenant in it came back ok."""
    measure, done = timed([str(BKP), *argv, "--json"], env, what)
    try:
        doc = json.loads(done.stdout)
    except json.JSONDecodeError:
        die(f"{what}: bkp printed no JSON document:\n{done.stdout[-2000:]}")
    bad = [r for r in doc.get("runs", []) if r.get("status") != "ok"]
    if bad:
        die(f"{what}: {len(bad)} tenant(s) not ok, first: {bad[0]}")
    return measure, doc


def write_secret(path: Path, text: str) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- tenants

RETENTION = {"last": 3, "daily": 7}
EXCLUDE = ["*.tmp"]


@dataclass
class Tenant:
    """One tenant as bkp sees it (a policy) and as an operator runs restic by hand."""

    name: str
    sources: list[str]
    destination: dict
    password_file: Path

    def policy(self) -> dict:
        return {
            "tenant": self.name,
            "description": f"benchmark tenant {self.name}",
            "purpose": "benchmark",
            "classification": "normal",
            "sources": self.sources,
            "exclude": EXCLUDE,
            "destination": self.destination,
            "password_file": str(self.password_file),
            "schedule": {"backup": "0 2 * * *"},  # no drill: `bkp run` only backs up
            "retention": RETENTION,
            "rpo_hours": 26,
        }

    def write_policy(self, policies: Path) -> Path:
        policies.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = policies / f"{self.name}.yaml"
        path.write_text(json.dumps(self.policy(), indent=2) + "\n")  # JSON is valid YAML
        return path

    def tags(self) -> list[str]:
        return [f"tenant={self.name}", "purpose=benchmark", "classification=normal"]


@dataclass
class RawRepo:
    """A repository driven by plain restic, with the same flags bkp passes."""

    url: str
    password_file: Path
    cache_dir: Path
    options: tuple[str, ...] = ()

    def argv(self, *args: str) -> list[str]:
        argv = [RESTIC, "--repo", self.url]
        for option in self.options:
            argv += ["--option", option]
        return [*argv, "--cache-dir", str(self.cache_dir), *args]

    def env(self) -> dict[str, str]:
        return clean_env(RESTIC_PASSWORD_FILE=str(self.password_file))

    def init(self) -> None:
        timed(self.argv("init"), self.env(), "restic init", sync=False)

    def backup_argv(self, tenant: Tenant) -> list[str]:
        args = ["backup", "--json", "--host", HOST]
        for tag in tenant.tags():
            args += ["--tag", tag]
        for pattern in EXCLUDE:
            args += ["--exclude", pattern]
        return self.argv(*args, "--", *tenant.sources)

    def forget_argv(self, tenant: Tenant) -> list[str]:
        args = ["forget", "--json", "--prune", "--group-by", "", "--tag", f"tenant={tenant.name}"]
        for rule, count in RETENTION.items():
            args += [f"--keep-{rule}", str(count)]
        return self.argv(*args)

    def nightly(self, tenant: Tenant, sync: bool = True) -> Measure:
        """restic backup + restic forget --prune, as an operator would script it."""
        env = self.env()
        first, _ = timed(self.backup_argv(tenant), env, f"raw restic backup {tenant.name}",
                         sync=sync)
        second, _ = timed(self.forget_argv(tenant), env, f"raw restic forget {tenant.name}",
                          sync=False)
        return first + second


# ---------------------------------------------------------------- sshd on loopback

def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bkp-bench", "-f",
                    str(path)], check=True)
    path.chmod(0o600)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    proc: subprocess.Popen
    port: int
    host_key: str
    identity_file: Path
    root: Path
    base: Path

    def destination(self, tenant: str, path: str) -> dict:
        return {"type": "sftp", "country": "NL", "host": "127.0.0.1", "port": self.port,
                "user": "root", "path": path, "host_key": self.host_key,
                "identity_file": str(self.identity_file)}

    def raw_repo(self, tenant: str, path: str, password_file: Path, cache: Path) -> RawRepo:
        """restic's sftp backend through OpenSSH with a pinned known_hosts, bkp's approach."""
        alias = f"raw-{tenant}"
        folder = self.base / "raw-ssh" / tenant
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(f"{alias} {self.host_key}\n")
        config = folder / "ssh_config"
        config.write_text("\n".join([
            f"Host {alias}", "  HostName 127.0.0.1", f"  Port {self.port}", "  User root",
            f"  IdentityFile {self.identity_file}", "  IdentitiesOnly yes",
            f"  HostKeyAlias {alias}", f"  UserKnownHostsFile {known_hosts}",
            "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes",
            "  BatchMode yes", "  LogLevel ERROR", ""]))
        config.chmod(0o600)
        return RawRepo(f"sftp:{alias}:{path}", password_file, cache,
                       (f"sftp.command=ssh -F {config} {alias} -s sftp",))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_sshd(base: Path) -> Sshd:
    sshd = "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK) or not shutil.which("ssh"):
        die("sshd (/usr/sbin/sshd) and ssh are needed for the sftp destination")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    host_key = keygen(base / "host_ed25519")
    authorized = base / "authorized_keys"
    authorized.write_text(keygen(base / "client_ed25519") + "\n")
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
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            die(f"sshd exited with {proc.returncode}; run it by hand: {sshd} -D -e -f {config}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                die(f"sshd did not listen on port {port}")
            time.sleep(0.05)
    root = base / "srv"
    root.mkdir(exist_ok=True)
    return Sshd(proc, port, host_key, base / "client_ed25519", root, base)


# ---------------------------------------------------------------- watching restic processes

def restic_shim(folder: Path) -> tuple[Path, Path]:
    """A `restic` for the front of PATH that runs the real one and logs, per process, its
    start and end (ns, the clock time.time_ns() reads) and its arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "calls.log"
    shim = folder / "restic"
    shim.write_text("\n".join([
        "#!/bin/sh", "s=$(date +%s%N)", f'"{RESTIC}" "$@"', "rc=$?",
        f'printf "%s %s %s\\n" "$s" "$(date +%s%N)" "$*" >> "{log}"', "exit $rc", ""]))
    shim.chmod(0o755)
    return folder, log


def shim_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    return {**env, "PATH": f"{folder}{os.pathsep}{env.get('PATH', '')}"}


SUBCOMMANDS = {"backup", "forget", "prune", "unlock", "snapshots", "init", "version", "check",
               "stats", "cat", "list", "restore", "ls", "key", "tag", "rebuild-index",
               "dump", "copy"}
_WITH_VALUE = {"--repo", "-r", "--option", "-o", "--cache-dir", "--password-file",
               "--password-command"}


def _subcommand(words: list[str]) -> str:
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in _WITH_VALUE:
            skip = True
        elif word in SUBCOMMANDS:
            return word
    return "?"


def timeline(log: Path, started_ns: int, ended_ns: int) -> dict:
    """Where the wall time of one sequential bkp process went: inside restic processes,
    before the first, between them, after the last (all seconds)."""
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        start, end, *words = line.split()
        calls.append((int(start), int(end), _subcommand(words)))
    calls.sort()
    if not calls:
        return {"processes": 0, "subcommands": []}
    inside = sum(e - s for s, e, _ in calls)
    gaps = sum(max(0, calls[i + 1][0] - calls[i][1]) for i in range(len(calls) - 1))
    return {
        "processes": len(calls), "subcommands": [c for _, _, c in calls],
        "wall_s": (ended_ns - started_ns) / 1e9, "inside_restic_s": inside / 1e9,
        "outside_restic_s": (ended_ns - started_ns - inside) / 1e9,
        "before_first_s": (calls[0][0] - started_ns) / 1e9, "between_s": gaps / 1e9,
        "after_last_s": (ended_ns - calls[-1][1]) / 1e9,
        "seconds_per_process": [round((e - s) / 1e9, 3) for s, e, _ in calls],
    }


def watched(argv: list[str], env: dict[str, str], folder: Path, what: str) -> dict:
    """Run one bkp command with the shim on PATH; its timeline."""
    shim, log = restic_shim(folder)
    log.unlink(missing_ok=True)
    started = time.time_ns()
    timed(argv, shim_env(env, shim), what, sync=False)
    return timeline(log, started, time.time_ns())


def write_results(name: str, doc: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def environment_info() -> dict:
    version = subprocess.run([RESTIC, "version"], capture_output=True, text=True).stdout.strip()
    return {"host": HOST, "cpus": os.cpu_count(), "restic": version, "bkp": str(BKP),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": os.getloadavg()}


def load_warning(env: dict) -> str:
    """Other work on the machine skews every figure: say so next to them."""
    env["loadavg_end"] = os.getloadavg()
    busy = max(env["loadavg_start"][0], env["loadavg_end"][2])
    if busy > 0.5:
        return (f"note: load average was {busy:.1f} on {os.cpu_count()} cpus around this "
                f"benchmark (other work on the machine); expect noise")
    return ""


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"
