"""Destinations that refuse, fill up or turn read-only: the cause in one sentence and the
right exit code, every time, without minutes of retries and without a traceback."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.adversarial.test_home_faults import remount_read_only, small_filesystem

pytestmark = pytest.mark.integration


def test_a_read_only_backup_disk_is_called_read_only_not_locked(bkp_env):
    with small_filesystem(bkp_env.root / "backupdisk") as disk:
        bkp_env.write_policy("rodisk", {"type": "local", "country": "NL",
                                        "path": str(disk / "rodisk")})
        bkp_env.bkp_json("init", "rodisk")
        remount_read_only(disk)
        report, _ = bkp_env.bkp_json("backup", "rodisk", expect=1)
    run = report["runs"][0]
    assert "read-only" in run["error"] and "locked" not in run["error"], run
    assert run["restic_calls"] == 0  # refused before restic could retry its lock for minutes


def test_a_full_backup_disk_is_called_full(bkp_env):
    with small_filesystem(bkp_env.root / "fulldisk", size="6m") as disk:
        bkp_env.write_policy("fulldisk", {"type": "local", "country": "NL",
                                          "path": str(disk / "fulldisk")})
        source = bkp_env.root / "data" / "fulldisk"
        (source / "big.bin").write_bytes(__import__("os").urandom(12 << 20))
        bkp_env.bkp_json("init", "fulldisk")
        report, _ = bkp_env.bkp_json("backup", "fulldisk", expect=1)
    error = report["runs"][0]["error"]
    assert "no space left" in error, error


def authorise_nothing(bkp_env, sshd, tenant: str) -> None:
    """An identity the server has never seen."""
    key = bkp_env.root / f"{tenant}-stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    policy = bkp_env.policies / f"{tenant}.yaml"
    policy.write_text(policy.read_text().replace(str(sshd.identity_file), str(key)))


def test_an_unauthorised_key_is_named_every_time(bkp_env, sshd):
    bkp_env.sftp_tenant("stranger", sshd)
    bkp_env.bkp_json("init", "stranger")
    authorise_nothing(bkp_env, sshd, "stranger")
    for _ in range(3):  # it used to read "unreachable" one time in three
        report, _ = bkp_env.bkp_json("backup", "stranger", expect=1)
        assert "refused identity_file" in report["runs"][0]["error"], report


@pytest.mark.parametrize("make, words", [
    (["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase"], "passphrase protected"),
    (["ssh-keygen", "-q", "-t", "dsa", "-N", ""], "type bkp does not use"),
    (None, "not an SSH private key"),
])
def test_an_identity_bkp_cannot_use_is_named(bkp_env, sshd, make, words):
    key = bkp_env.root / "identity"
    if make:
        subprocess.run([*make, "-f", str(key)], check=True)
    else:
        key.write_text("this is not a key\n")
    key.chmod(0o600)
    bkp_env.sftp_tenant("badkey", sshd)
    policy = bkp_env.policies / "badkey.yaml"
    policy.write_text(policy.read_text().replace(str(sshd.identity_file), str(key)))
    done = bkp_env.bkp("init", "badkey", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert words in json.loads(done.stdout)["tenants"][0]["error"]
