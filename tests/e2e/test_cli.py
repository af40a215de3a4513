"""The CLI as an operator meets it: clear messages, the right exit codes, never a traceback,
never a secret in the argument list of a process bkp starts."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e


def no_traceback(done) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr


def test_help_lists_every_command_fast(bkp_env):
    done = bkp_env.bkp("--help")
    assert done.returncode == 0
    for command in ("policy", "init", "backup", "snapshots", "restore", "drill", "run",
                    "schedule", "status", "audit"):
        assert f"  {command} " in done.stdout
    for command in ("backup", "drill", "restore", "run", "status"):
        sub = bkp_env.bkp(command, "--help")
        assert sub.returncode == 0 and "--json" in sub.stdout


@pytest.mark.parametrize("args, code, words", [
    (["backup"], 2, "name one or more tenants, or give --all"),
    (["backup", "x", "--all"], 2, "name one or more tenants, or give --all"),
    (["backup", "--jobs", "0", "--all"], 2, "--jobs"),
    (["frobnicate"], 2, "No such command"),
    (["audit", "log", "--since", "yesterday"], 2, "ISO 8601"),
    (["drill", "--due", "--all"], 2, "--due"),
])
def test_usage_errors_exit_2_with_a_message(bkp_env, args, code, words):
    bkp_env.local_tenant("someone")
    done = bkp_env.bkp(*args)
    assert done.returncode == code, done.stderr
    assert words in done.stderr
    no_traceback(done)


def test_unknown_tenant_and_missing_policies_dir_exit_3(bkp_env):
    bkp_env.local_tenant("known-one")
    done = bkp_env.bkp("backup", "nobody")
    assert done.returncode == 3 and "known-one" in done.stderr
    no_traceback(done)
    missing = bkp_env.bkp("backup", "--all", BKP_POLICIES=str(bkp_env.root / "nowhere"))
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    no_traceback(missing)


def test_broken_yaml_gives_file_line_and_exit_3(bkp_env):
    bkp_env.local_tenant("good")
    broken = bkp_env.policies / "broken.yaml"
    broken.write_text("tenant: broken\nsources:\n  - /srv\n destination: [\n")
    done = bkp_env.bkp("policy", "validate")
    assert done.returncode == 3
    line = next(ln for ln in done.stdout.splitlines() if "broken.yaml:" in ln)
    assert f"{broken}:4" in line or f"{broken}:5" in line
    no_traceback(done)
    # the good tenant still backs up while the broken one is reported
    bkp_env.bkp_json("init", "good")
    runs, _ = bkp_env.bkp_json("backup", "--all", expect=3)
    status = {r["tenant"]: r["status"] for r in runs["runs"]}
    assert status == {"good": "ok", "broken": "failed"}


def test_world_readable_password_file_refused(bkp_env):
    bkp_env.local_tenant("leaky")
    key = bkp_env.secrets / "leaky.key"
    key.chmod(0o644)
    done = bkp_env.bkp("policy", "validate", "--json")
    assert done.returncode == 3
    report = json.loads(done.stdout)["policies"][0]
    assert any(e["path"] == "password_file" and "chmod 600" in e["message"]
               for e in report["errors"])
    backup = bkp_env.bkp("backup", "leaky")
    assert backup.returncode == 3 and "chmod 600" in backup.stdout
    no_traceback(backup)


@pytest.mark.parametrize("region, city", [("eu-west-2", "London"), ("eu-central-2", "Zurich")])
def test_non_eea_region_refused(bkp_env, region, city):
    bkp_env.write_policy("abroad", {
        "type": "s3", "country": "NL", "endpoint": "https://s3.amazonaws.com",
        "bucket": "b", "region": region, "credentials_file": str(bkp_env.secrets / "c")})
    done = bkp_env.bkp("policy", "validate", "--json")
    assert done.returncode == 3
    errors = json.loads(done.stdout)["policies"][0]["errors"]
    assert any(e["path"] == "destination.region" for e in errors), errors


def test_schema_describes_every_key(bkp_env):
    done = bkp_env.bkp("policy", "schema")
    schema = json.loads(done.stdout)
    for key in ("tenant", "purpose", "classification", "sources", "destination",
                "password_file", "schedule", "retention", "drill", "rpo_hours"):
        assert schema["properties"][key]["description"]
        assert "examples" in schema["properties"][key]


def test_example_policies_validate(bkp_env):
    done = bkp_env.bkp("policy", "validate", "--json",
                       BKP_POLICIES=str(REPO_ROOT / "policies"))
    assert done.returncode == 0, done.stdout
    tenants = {p["tenant"]: p["valid"] for p in json.loads(done.stdout)["policies"]}
    assert tenants == {"acme-zorg": True, "bakkerij-jansen": True, "huisarts-noord": True,
                       "tandarts-oost": True}


def restic_shim(folder: Path) -> Path:
    """restic itself, with every argument list written down first."""
    log = folder / "argv.log"
    shim = folder / "restic"
    real = shutil.which("restic")
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return log


def test_no_secret_in_any_argv(bkp_env, s3):
    shim_dir = bkp_env.root / "shim"
    shim_dir.mkdir()
    log = restic_shim(shim_dir)
    bkp_env.s3_tenant("by-env", s3, password_file=None)
    doc = dict(bkp_env.tenants["by-env"])
    doc.pop("password_file")
    doc["password_env"] = "BKP_PW_BY_ENV"
    import yaml
    (bkp_env.policies / "by-env.yaml").write_text(yaml.safe_dump(doc))
    env = {"PATH": f"{shim_dir}:{os.environ['PATH']}", "BKP_PW_BY_ENV": bkp_env.password}
    for args in (["init", "by-env"], ["backup", "by-env"], ["drill", "by-env"]):
        done = bkp_env.bkp(*args, "--json", **env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert bkp_env.password not in done.stdout + done.stderr
    argv = log.read_text()
    assert argv.count("\n") >= 5  # init, backup, forget, ls, restore, check
    assert bkp_env.password not in argv and s3.secret_key not in argv
    assert s3.access_key not in argv


def test_json_failures_still_print_one_json_document(bkp_env):
    bkp_env.local_tenant("jsonish")
    done = bkp_env.bkp("snapshots", "nobody", "--json")
    assert done.returncode == 3
    assert json.loads(done.stdout) == {"error": json.loads(done.stdout)["error"], "exit_code": 3}
