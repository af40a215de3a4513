"""SIGKILL at several stages, for each destination type: the record says `interrupted`
(never ok), the next run is green, and the repository checks clean."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.helpers import big_file, gone, popen_bkp, restic_doing, restic_pids, wait_until

pytestmark = pytest.mark.integration


def make_tenant(env, kind: str, tenant: str, sshd, s3) -> None:
    if kind == "local":
        env.local_tenant(tenant)
    elif kind == "sftp":
        env.sftp_tenant(tenant, sshd)
    else:
        env.s3_tenant(tenant, s3)


@pytest.mark.parametrize("kind", ["local", "sftp", "s3"])
@pytest.mark.parametrize("stage, command, subcommand", [
    ("mid-backup", "backup", "backup"),
    ("mid-drill restore", "drill", "restore"),
])
def test_sigkill_leaves_honest_records_and_a_green_next_night(bkp_env, sshd, s3, kind, stage,
                                                               command, subcommand):
    env = bkp_env
    tenant = f"kill-{kind}-{command}"
    make_tenant(env, kind, tenant, sshd, s3)
    big_file(env.root / "data" / tenant / "big.bin", 120)
    env.bkp_json("init", tenant)
    if command == "drill":
        env.bkp_json("backup", tenant)
    victim = popen_bkp(env, command, tenant)
    wait_until(lambda: restic_doing(subcommand, tenant) or victim.poll() is not None,
               what=f"restic {subcommand}")
    assert victim.poll() is None, victim.communicate()
    doing = restic_pids(subcommand, tenant)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    # Reaped, not only dead: a zombie restic's lock is a live one to restic's unlock.
    wait_until(lambda: gone(doing), timeout=30, what="restic to die with bkp")

    status, _ = env.bkp_json("status", tenant)
    key = "last_backup" if command == "backup" else "last_drill"
    assert status["tenants"][0][key]["status"] == "interrupted", status
    # The next command that acts records it, and its own work goes through.
    again, code = env.bkp_json(command, tenant, expect=None)
    assert code == 0, again
    events = env.bkp_json("audit", "log", "--tenant", tenant)[0]["events"]
    assert (command, "interrupted") in [(e["action"], e["outcome"]) for e in events]
    verified, _ = env.bkp_json("audit", "verify")
    assert verified["valid"], verified
    check = env.restic(tenant, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    if command == "drill":
        assert not any((env.home / "scratch").iterdir())  # the dead drill's scratch is gone
        assert json.loads(env.bkp("drill", tenant, "--json").stdout)["drills"][0]["status"] \
            == "passed"
