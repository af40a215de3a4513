"""The suite's cheap key derivation (tests/cheap_keys.py) really re-wraps restic's key:
restic opens the repository with the same password and the same master key, refuses a
wrong password, and the key file carries the cheap parameters. If the re-wrap silently
did nothing, the suite would only get slow; if it got the format wrong, restic would not
open the repositories at all."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cheap_keys import CHEAP, cheapen

pytestmark = pytest.mark.integration


def restic(repo, password, *args):
    return subprocess.run(["restic", "-r", str(repo), *args], capture_output=True, text=True,
                          env={"RESTIC_PASSWORD": password, "PATH": "/usr/bin:/bin"})


def test_a_rewrapped_key_opens_the_same_repository_cheaply(tmp_path):
    repo = tmp_path / "repo"
    assert restic(repo, "pw 4711", "init").returncode == 0
    config_before = restic(repo, "pw 4711", "cat", "config").stdout
    master_before = json.loads(restic(repo, "pw 4711", "cat", "masterkey").stdout)

    assert cheapen(repo, "pw 4711") is True
    [key_file] = list((repo / "keys").iterdir())
    key = json.loads(key_file.read_text())
    assert (key["N"], key["r"], key["p"]) == (CHEAP["N"], CHEAP["r"], CHEAP["p"])
    assert restic(repo, "pw 4711", "cat", "config").stdout == config_before
    assert json.loads(restic(repo, "pw 4711", "cat", "masterkey").stdout) == master_before
    assert restic(repo, "wrong", "cat", "config").returncode != 0
    assert cheapen(repo, "pw 4711") is False  # already cheap: left alone


def test_a_wrong_password_touches_nothing(tmp_path):
    repo = tmp_path / "repo"
    assert restic(repo, "pw 4711", "init").returncode == 0
    before = {p.name: p.read_bytes() for p in (repo / "keys").iterdir()}
    assert cheapen(repo, "not the password") is False
    assert {p.name: p.read_bytes() for p in (repo / "keys").iterdir()} == before
