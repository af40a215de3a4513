"""A Secret file as Kubernetes mounts it in a pod of bkp's manifest is accepted, and nothing
looser: 0400 owned by this user (as on a host), or 0440 root:FSGROUP when the manifest declared
that group (BKP_SECRET_GROUP) and the process is in it.

Each check runs in a child process whose groups are set as a pod's are (extra_groups), so the
rule sees real ownership, real modes and real process groups."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

POD_GROUP = 4711  # the fsGroup of the manifest
OTHER_GROUP = 4712

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown and setgroups need root")

CHECK = ("import sys; from pathlib import Path; from bkp.secrets import secret_file_problem;"
         "p = secret_file_problem(Path(sys.argv[1]), 'password_file');"
         "print(p.message if p else 'accepted')")


def verdict(path: Path, groups: list[int], declared: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "BKP_SECRET_GROUP"}
    if declared is not None:
        env["BKP_SECRET_GROUP"] = declared
    done = subprocess.run([sys.executable, "-c", CHECK, str(path)], env=env, text=True,
                          capture_output=True, extra_groups=groups, check=True)
    return done.stdout.strip()


def secret(tmp_path: Path, mode: int, gid: int, uid: int = 0) -> Path:
    path = tmp_path / f"key-{mode:o}-{gid}-{uid}"
    path.write_text("pod-secret-value\n")
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def test_what_the_manifest_sets_is_accepted(tmp_path):
    assert verdict(secret(tmp_path, 0o400, 0), [], None) == "accepted"
    assert verdict(secret(tmp_path, 0o440, POD_GROUP), [POD_GROUP], str(POD_GROUP)) == "accepted"


@pytest.mark.parametrize("mode", [0o640, 0o444, 0o460, 0o450, 0o540, 0o660, 0o400 | 0o004])
def test_anything_looser_than_0440_for_the_pod_group_is_refused(tmp_path, mode):
    problem = verdict(secret(tmp_path, mode, POD_GROUP), [POD_GROUP], str(POD_GROUP))
    assert "accessible by group or others" in problem


def test_0440_needs_the_declared_group_and_membership(tmp_path):
    path = secret(tmp_path, 0o440, POD_GROUP)
    assert "accessible by group" in verdict(path, [POD_GROUP], None)  # a host: no manifest
    assert "accessible by group" in verdict(path, [POD_GROUP, OTHER_GROUP], str(OTHER_GROUP))
    assert "accessible by group" in verdict(path, [], str(POD_GROUP))  # not in the group
    assert "accessible by group" in verdict(path, [POD_GROUP], "04711")
    assert "accessible by group" in verdict(path, [POD_GROUP], "x")
    root_group = secret(tmp_path, 0o440, 0)
    assert "accessible by group" in verdict(root_group, [0], "0")


def test_0440_owned_by_someone_else_is_refused(tmp_path):
    path = secret(tmp_path, 0o440, POD_GROUP, uid=12345)
    assert "accessible by group" in verdict(path, [POD_GROUP], str(POD_GROUP))
