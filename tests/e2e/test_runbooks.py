"""Every runbook step marked `sh runnable` runs as written, so a step that stops working
fails CI (docs/commands.md, "Runnable runbook steps").

Each page runs in a sandbox: its marked blocks, in order, in one bash session with
`set -euo pipefail`. The paths a page names (/etc/bkp, /var/lib/bkp, /srv, ...) are moved
under a temporary directory, the off-site server is a real OpenSSH sshd on a loopback port
that trusts the key the onboarding generates (standing in for the server admin's step), and
/opt/bkp is this checkout. Pages that start from a working installation run the onboarding
runbook first, exactly as an operator would have.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import docs
from tests.conftest import _keygen, free_port, require_tool, stop, wait_for_port

pytestmark = pytest.mark.e2e

RUNBOOKS = docs.REPO_ROOT / "runbooks"
ONBOARDING = RUNBOOKS / "onboard-tenant.md"


@dataclass
class Sandbox:
    root: Path
    port: int
    device: str = "/dev/sdX"  # the disk a media page wipes: a loop device in the sandbox
    # The append-only REST server's two doors (rclone serve restic on loopback ports).
    append_port: int = 8000
    maintain_port: int = 8001

    def substitutions(self) -> dict[str, str]:
        """What a page says -> what the sandbox uses. Only whole path prefixes and names."""
        root = str(self.root)
        return {
            "/opt/bkp/.venv/bin": str(Path(sys.executable).parent),
            "/opt/bkp": str(docs.REPO_ROOT),
            "/etc/bkp": f"{root}/etc/bkp",
            "/etc/cron.d": f"{root}/etc/cron.d",
            "/etc/logrotate.d": f"{root}/etc/logrotate.d",
            "/var/lib/bkp": f"{root}/var/lib/bkp",
            "/srv/": f"{root}/srv/",
            "/media/escrow": f"{root}/media/escrow",
            "/tmp/": f"{root}/tmp/",
            # The off-site server: the sandbox's sshd, whose only account is root.
            "backup01.offsite.example.nl": "127.0.0.1",
            "PORT=22": f"PORT={self.port}",
            "2222": str(self.port),
            "user: bkp": "user: root",
            "/dev/sdX": self.device,
            # The append-only server (off-site host) is this machine, its doors free ports.
            "/etc/rclone-restic": f"{root}/etc/rclone-restic",
            "backup02.offsite.example.de": "localhost",
            "8000": str(self.append_port),
            "8001": str(self.maintain_port),
            # The record id the operator reads off sanitize's output: the sandbox's first.
            "certificate 17": "certificate 1",
            "validate 17": "validate 1",
        }

    def script(self, pages: list[Path]) -> str:
        table = self.substitutions()
        keys = sorted(table, key=len, reverse=True)
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(k) for k in keys) + ")")
        parts = ["set -euo pipefail"]
        for page in pages:
            for block in docs.blocks(page):
                if block.runnable:
                    parts.append(f"echo '=== {block.where}' >&2")
                    # In one pass, so a replacement is never replaced again.
                    text = pattern.sub(lambda m: table[m.group(1)], block.text)
                    # bkp@SERVER: the server's name was replaced, the user follows it.
                    text = text.replace("bkp@127.0.0.1", "root@127.0.0.1")
                    parts.append(text)
        parts.append("echo '=== every runnable step ran' >&2")
        return "\n".join(parts) + "\n"

    def run(self, pages: list[Path], cwd: Path | None = None,
            typed: str | None = None) -> subprocess.CompletedProcess:
        script = self.root / "runbook.sh"
        script.write_text(self.script(pages))
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(self.root / "root"), "LC_ALL": "C.UTF-8", "TERM": "dumb",
               # Safety net: bkp's own defaults point at the real /etc/bkp and /var/lib/bkp.
               # (BKP_CONFIG is optional only at its default path; the pages set it.)
               "BKP_POLICIES": f"{self.root}/etc/bkp/policies",
               "BKP_HOME": f"{self.root}/var/lib/bkp",
               "TMPDIR": str(self.root / "tmp")}
        if typed is None:
            return subprocess.run(["bash", str(script)], cwd=cwd or self.root / "work",
                                  env=env, capture_output=True, text=True, timeout=900,
                                  stdin=subprocess.DEVNULL)
        # What the operator types goes to a terminal, as bkp asks for confirmations only
        # there: util-linux `script` gives the page a pty (its output then comes on stdout).
        done = subprocess.run(["script", "-qec", f"bash {script}", "/dev/null"],
                              cwd=cwd or self.root / "work", env=env, capture_output=True,
                              text=True, timeout=900, input=typed)
        done.stderr = done.stdout.replace("\r\n", "\n") + done.stderr
        return done


@pytest.fixture
def sandbox(tmp_path):
    """Directories a fresh bkp host and its off-site server already have, the tenant's data,
    and an sshd that trusts whatever key the sandbox's /etc/bkp/keys/id_ed25519.pub holds."""
    require_tool("restic")
    sshd_bin = require_tool("sshd", "/usr/sbin/sshd")
    root = tmp_path
    for folder in ("root", "work", "tmp", "srv/backup", "etc/cron.d", "etc/logrotate.d",
                   "var/lib", "sshd"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    data = root / "srv/tenants/acme-zorg/files"
    (data / "patients").mkdir(parents=True)
    for index in range(30):
        (data / "patients" / f"p{index}.txt").write_text(f"patient {index}\nBSN {index:09d}\n")
    port = free_port()
    _keygen(root / "sshd/host_ed25519")
    config = root / "sshd/sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'sshd/host_ed25519'}",
        f"AuthorizedKeysFile {root / 'etc/bkp/keys/id_ed25519.pub'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        "Subsystem sftp internal-sftp", f"PidFile {root / 'sshd/sshd.pid'}",
        "LogLevel ERROR", ""]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, "sshd")
    yield Sandbox(root, port)
    stop(proc)


def _assert_ran(done: subprocess.CompletedProcess) -> None:
    last = [line for line in done.stderr.splitlines() if line.startswith("=== ")]
    assert done.returncode == 0 and last and last[-1] == "=== every runnable step ran", (
        f"runbook step failed (exit {done.returncode}) in {last[-1] if last else '?'}\n"
        f"--- stderr (end)\n{done.stderr[-4000:]}\n--- stdout (end)\n{done.stdout[-3000:]}")


def _runnable(page: Path) -> int:
    return sum(block.runnable for block in docs.blocks(page))


def test_the_runbooks_mark_runnable_steps():
    # A page whose markers vanished would pass vacuously.
    for page in RUNBOOKS.glob("*.md"):
        assert _runnable(page) >= 3, f"{page.name} has fewer than 3 runnable steps"


def test_substitutions_name_what_the_pages_say(tmp_path):
    said = "\n".join(block.text for page in docs.PAGES for block in docs.blocks(page)
                     if block.runnable)
    unused = [key for key in Sandbox(tmp_path, 1).substitutions() if key not in said]
    assert not unused, f"substitutions no runnable step uses any more: {unused}"


def test_onboarding(sandbox):
    done = sandbox.run([ONBOARDING])
    _assert_ran(done)
    assert (sandbox.root / "etc/bkp/policies/acme-zorg.yaml").exists()
    assert list((sandbox.root / "srv/backup/acme-zorg/snapshots").iterdir())


@pytest.mark.parametrize("page", ["nightly-operations.md", "restore-drill.md",
                                  "kubernetes.md", "offboard-tenant.md"])
def test_runbook_on_an_onboarded_host(sandbox, page):
    _assert_ran(sandbox.run([ONBOARDING, RUNBOOKS / page]))


def test_append_only_server_second_site_and_maintenance(sandbox):
    sandbox.append_port, sandbox.maintain_port = free_port(), free_port()
    try:
        _assert_ran(sandbox.run([RUNBOOKS / "append-only-server.md",
                                 RUNBOOKS / "second-site.md",
                                 RUNBOOKS / "maintenance-host.md"]))
    finally:  # the doors the pages start by hand, should a step fail before stopping them
        for pid_file in (sandbox.root / "tmp").glob("rest-*.pid"):
            subprocess.run(["kill", pid_file.read_text().strip()], check=False,
                           capture_output=True)
    assert (sandbox.root / "etc/cron.d/bkp-maintain").exists()
    assert list((sandbox.root / "srv/restic/acme-zorg/snapshots").iterdir())


@pytest.fixture
def loop_device(tmp_path):
    """A 16 MiB disk on a loop device, which reports no serial (as some USB bridges)."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.write(b"tenant data " * (16 << 16))
        fh.truncate(16 << 20)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "--detach", device], check=False)


def test_decommission_media(sandbox, loop_device):
    sandbox.device = loop_device
    for name in ("photo-before.jpg", "photo-after.jpg", "service-cert.pdf"):
        (sandbox.root / "work" / name).write_bytes(f"evidence {name}".encode())
    # The operator types the serial when sanitize asks for it.
    done = sandbox.run([ONBOARDING, RUNBOOKS / "decommission-media.md"],
                       typed="WD-WCC4N1234567\n")
    _assert_ran(done)
    with open(loop_device, "rb") as disk:
        assert disk.read(1 << 20) == bytes(1 << 20)  # wiped with zeros


# The old host's life before the disaster, in the sandbox: an evidence repository on the
# off-site server (bkp.yaml), a night's evidence copy, an anchor the auditor keeps, and the
# key escrow; then the host's records are lost.
BEFORE_THE_DISASTER = """
(umask 077; head -c 32 /dev/urandom | base64 > /etc/bkp/secrets/evidence.key)
cat > /etc/bkp/bkp.yaml <<EOF
organization: Example Hosting bv
evidence:
  destination:
    type: sftp
    country: NL
    host: $H
    port: $PORT
    user: bkp
    path: /srv/backup/_evidence
    host_key: "$(cut -d' ' -f2,3 /tmp/$H.hostkey)"
    identity_file: /etc/bkp/keys/id_ed25519
  password_file: /etc/bkp/secrets/evidence.key
EOF
export BKP_CONFIG=/etc/bkp/bkp.yaml
bkp init --all && bkp backup --all
bkp media register --serial OLD-DISK-1 --type ssd
bkp audit head > /media/escrow/audit-anchor
bkp evidence backup
cp -r /etc/bkp/bkp.yaml /etc/bkp/policies /etc/bkp/secrets /etc/bkp/keys /media/escrow/
rm -rf /etc/bkp /var/lib/bkp /tmp/*.hostkey
unset BKP_CONFIG RESTIC_REPOSITORY RESTIC_PASSWORD_FILE
"""


def test_disaster_recovery(sandbox):
    (sandbox.root / "media/escrow").mkdir(parents=True)
    before = sandbox.root / "before-the-disaster.md"
    before.write_text(f"```sh runnable\n{BEFORE_THE_DISASTER}```\n")
    _assert_ran(sandbox.run([ONBOARDING, before, RUNBOOKS / "disaster-recovery.md"]))
    restored = sandbox.root / "srv/restore/acme-zorg" / str(sandbox.root).lstrip("/")
    assert (restored / "srv/tenants/acme-zorg/files/patients/p7.txt").exists()


def test_operators_and_approvals(sandbox):
    keys = sandbox.root / "etc/bkp/operators"
    keys.mkdir(parents=True)
    (keys / "victor.pub").write_text(_keygen(sandbox.root / "victor_ed25519") + " Victor\n")
    try:
        done = sandbox.run([ONBOARDING, RUNBOOKS / "operators-and-approvals.md"])
        _assert_ran(done)
        assert "1 operator registered (1 validator)" in done.stdout
    finally:
        subprocess.run(["userdel", "-r", "victor"], capture_output=True, check=False)


def test_readme(sandbox):
    _assert_ran(sandbox.run([ONBOARDING, docs.REPO_ROOT / "README.md"],
                            cwd=docs.REPO_ROOT))


