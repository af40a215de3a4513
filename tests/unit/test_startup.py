"""What every bkp command pays before it does anything: a thousand pods a night pay it each,
and so does every `bkp status`."""

import subprocess
import sys

PROBE = """
import sys
started = []
sys.addaudithook(lambda event, args: started.append(args[1]) if event == "subprocess.Popen"
                 else None)
import bkp.cli, bkp.tenants.backup, bkp.tenants.status, bkp.tenants.drill
import bkp.tenants.schedule
import bkp.clock
bkp.clock.state()  # the kernel's clock state, asked through libc
print(repr(started))
"""


def test_importing_bkp_starts_no_process():
    # croniter runs `file -b` on the interpreter at import (bkp.cron keeps it from doing so);
    # ctypes' find_library runs `ldconfig -p` (bkp.clock names glibc first)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_cron_expressions_are_still_judged_by_croniter():
    from bkp.cron import croniter

    assert croniter.is_valid("0 2 * * *")
    assert not croniter.is_valid("0 25 * * *")


def test_a_pods_backup_leaves_the_ssh_key_formats_unimported():
    # cryptography's serialization package (with the SSH formats and bcrypt) costs a pod
    # more start-up than all of its signing; a pod reads and signs with Ed25519 alone.
    probe = ("import sys, bkp.cli, bkp.tenants.backup, bkp.evidence.pod_results as p, "
             "bkp.catalog; print(sorted(m for m in sys.modules if m.startswith("
             "'cryptography.hazmat.primitives.serialization') or m == 'sqlite_utils'))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
