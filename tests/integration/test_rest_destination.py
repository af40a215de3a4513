"""What only the rest destination has: a credential inside the repository location, a TLS
certificate that must verify before it is sent, and append-only servers. Against `rclone
serve restic` with TLS and htpasswd on loopback (the suite every destination passes is
tests/integration/test_every_destination.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import BkpEnv, RestServer, start_rest, stop
from tests.e2e.test_cli import restic_shim
from tests.helpers import big_file, command_lines, popen_bkp, restic_doing, wait_until

pytestmark = pytest.mark.integration


def spellings(server: RestServer) -> list[str]:
    """Every form the password could take on its way to restic."""
    return [server.password, quote(server.password, safe=""),
            quote(server.password, safe="").replace("%", "%25")]


def repository(server: RestServer, env: BkpEnv, tenant: str) -> Path:
    return server.root / env.root.name / tenant


def objects(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if p.is_file()} if folder.exists() else {}




def test_the_rest_credential_is_never_in_argv_output_catalog_or_logs(bkp_env, rest):
    env = bkp_env
    shim_dir = env.root / "shim"
    shim_dir.mkdir()
    argv_log = restic_shim(shim_dir)
    log_file = env.root / "bkp.log"
    extra = {"PATH": f"{shim_dir}:{env.env()['PATH']}", "BKP_LOG_FILE": str(log_file)}
    big_file(env.root / "data" / "secretive" / "big.bin", 64)
    env.rest_tenant("secretive", rest)
    said = []
    for args in (["init", "secretive"], ["backup", "secretive"]):
        done = env.bkp(*args, "--json", **extra)
        assert done.returncode == 0, done.stdout + done.stderr
        said.append(done.stdout + done.stderr)
    # While restic works, every process's argument list is what `ps` shows anyone.
    big_file(env.root / "data" / "secretive" / "big2.bin", 64)
    backup = popen_bkp(env, "backup", "secretive", "--json")
    try:
        wait_until(lambda: backup.poll() is not None or restic_doing("backup", "secretive"),
                   what="restic to back up")
        running = command_lines()
    finally:
        out, err = backup.communicate(timeout=600)
    assert backup.returncode == 0, out + err
    said.append(out + err)
    target = env.root / "restored"
    for args in (["snapshots", "secretive"], ["drill", "secretive"], ["status", "secretive"],
                 ["restore", "secretive", "--target", str(target)]):
        done = env.bkp(*args, "--json", **extra)
        assert done.returncode == 0, done.stdout + done.stderr
        said.append(done.stdout + done.stderr)
    passthrough = env.bkp("restic", "secretive", "--", "snapshots", "--json", **extra)
    assert passthrough.returncode == 0, passthrough.stderr
    assert len(json.loads(passthrough.stdout)) == 2  # bkp restic works for rest too
    said.append(passthrough.stdout + passthrough.stderr)

    assert any("restic" in line and "backup" in line for line in running)
    argv = argv_log.read_text()
    assert argv.count("\n") >= 8 and "--cacert" in argv
    catalog = (env.home / "catalog.db").read_bytes()
    events = sqlite3.connect(env.home / "catalog.db").execute(
        "select group_concat(details) from audit_log").fetchone()[0]
    assert "rest:https://127.0.0.1" in events  # the label, without user and password
    homes = b"".join(p.read_bytes() for p in env.home.rglob("*") if p.is_file())
    for secret in spellings(rest):
        assert secret not in argv, "password in restic's argv"
        assert not any(secret in line for line in running), "password in a process's argv"
        assert not any(secret in text for text in said), "password in bkp's output"
        assert secret.encode() not in catalog and secret not in events
        assert secret.encode() not in homes, "password under BKP_HOME"
        assert secret not in log_file.read_text(), "password in the log file"
    assert "run: restic" in log_file.read_text()  # the log file did log restic's commands


def test_a_wrong_rest_password_is_refused_in_one_sentence(bkp_env, rest):
    env = bkp_env
    env.rest_tenant("wrongpw", rest)
    wrong = env.secrets / "wrongpw.rest"
    wrong.write_text(f"{rest.user}:not-{rest.password}\n")
    wrong.chmod(0o600)
    env.write_policy("wrongpw", {**env.tenants["wrongpw"]["destination"],
                                 "credentials_file": str(wrong)})
    for command in (["init"], ["backup"], ["snapshots"], ["drill"]):
        done = env.bkp(command[0], "wrongpw", "--json")
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "refused the credentials" in done.stdout and "HTTP 401" in done.stdout
        assert "Traceback" not in done.stderr
        assert rest.password not in done.stdout + done.stderr
    done = env.bkp("restic", "wrongpw", "--", "snapshots")
    assert done.returncode == 1 and "refused the credentials" in done.stderr, done.stderr
    assert not repository(rest, env, "wrongpw").exists()


def test_a_certificate_of_an_unknown_ca_is_refused_with_4_and_nothing_sent(bkp_env, rest):
    env = bkp_env
    env.rest_tenant("strange", rest)
    env.bkp_json("init", "strange")
    env.bkp_json("backup", "strange")
    before = objects(repository(rest, env, "strange"))
    dest = env.tenants["strange"]["destination"]
    env.write_policy("strange", {**dest, "ca_file": str(rest.other_ca_file)})
    for command in (["backup"], ["snapshots"], ["drill"], ["init"],
                    ["restore", "--target", str(env.root / "restored")]):
        done = env.bkp(command[0], "strange", *command[1:], "--json")
        assert done.returncode == 4, (command, done.stdout, done.stderr)
        assert "does not verify against ca_file" in done.stdout, done.stdout
        assert "Nothing was sent" in done.stdout and "Traceback" not in done.stderr
    done = env.bkp("restic", "strange", "--", "snapshots")
    assert done.returncode == 4 and "does not verify" in done.stderr, done.stderr
    assert objects(repository(rest, env, "strange")) == before
    status, _ = env.bkp_json("status", "strange")
    assert "does not verify" in status["tenants"][0]["error"], status


def test_without_ca_file_a_self_signed_server_is_refused_by_the_systems_cas(bkp_env, rest):
    env = bkp_env
    env.rest_tenant("systemca", rest)
    dest = {k: v for k, v in env.tenants["systemca"]["destination"].items() if k != "ca_file"}
    env.write_policy("systemca", dest)
    done = env.bkp("init", "systemca", "--json")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "the system's certificate authorities" in done.stdout
    assert not repository(rest, env, "systemca").exists()


def test_plain_http_to_a_remote_rest_server_is_an_invalid_policy(bkp_env, rest):
    env = bkp_env
    env.rest_tenant("plain", rest)
    dest = env.tenants["plain"]["destination"]
    env.write_policy("plain", {**dest, "url": "http://backup02.offsite.example.de:8000/plain"})
    for args in (["policy", "validate"], ["init", "plain"], ["backup", "plain"]):
        done = env.bkp(*args, "--json")
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        assert "plain http to backup02.offsite.example.de" in done.stdout


def test_two_tenants_on_one_rest_url_are_an_invalid_policy(bkp_env, rest):
    env = bkp_env
    env.rest_tenant("first", rest)
    first = env.tenants["first"]["destination"]["url"]
    # The same repository spelled another way: a doubled and a trailing slash.
    env.write_policy("second", {**env.tenants["first"]["destination"],
                                "url": first.replace("/first", "//first/")})
    done = env.bkp("policy", "validate", "--json")
    assert done.returncode == 3, done.stdout
    reports = {p["tenant"]: p for p in json.loads(done.stdout)["policies"]}
    for tenant, other in (("first", "second"), ("second", "first")):
        messages = " ".join(e["message"] for e in reports[tenant]["errors"])
        assert f"{other}.yaml" in messages and "never share a repository" in messages
    done = env.bkp("backup", "--all", "--json")
    assert done.returncode == 3, done.stdout
    assert not repository(rest, env, "first").exists()


def test_passthrough_refuses_to_skip_certificate_checks(bkp_env, rest):
    env = bkp_env
    env.rest_tenant("careful", rest)
    env.bkp_json("init", "careful")
    done = env.bkp("restic", "careful", "--", "--insecure-tls", "snapshots")
    assert done.returncode == 4 and "--insecure-tls" in done.stderr, done.stderr


@pytest.fixture
def append_only_server(tmp_path_factory):
    server, proc = start_rest(tmp_path_factory.mktemp("append-only"), append_only=True)
    yield server
    stop(proc)


def test_nightly_runs_on_an_append_only_server_keep_every_snapshot(bkp_env,
                                                                   append_only_server):
    env, server = bkp_env, append_only_server
    env.rest_tenant("immutable", server)
    env.write_policy("immutable", {
        **env.tenants["immutable"]["destination"], "append_only": True,
        "maintenance_credentials_file": "/etc/bkp/secrets/immutable.rest-admin"},
        retention={"last": 1})
    env.bkp_json("init", "immutable")
    ids = []
    for night in range(3):
        (env.root / "data" / "immutable" / f"night-{night}.txt").write_text(f"{night}\n")
        report, _ = env.bkp_json("backup", "immutable")
        run = report["runs"][0]
        assert run["status"] == "ok", run
        ids.append(run["snapshot_id"][:8])
    listed, _ = env.bkp_json("snapshots", "immutable")
    assert sorted(s["id"][:8] for s in listed["snapshots"]) == sorted(ids)
    # The server really refuses the nightly credential a deletion: forget fails, nothing goes.
    done = env.bkp("restic", "immutable", "--", "forget", ids[0])
    assert done.returncode != 0, done.stdout + done.stderr
    assert len(objects(repository(server, env, "immutable") / "snapshots")) == 3


def test_plain_http_to_a_loopback_rest_server_works(bkp_env, tmp_path_factory):
    env = bkp_env
    server, proc = start_rest(tmp_path_factory.mktemp("plain-http"), tls=False)
    try:
        env.rest_tenant("loopback", server)
        dest = {k: v for k, v in env.tenants["loopback"]["destination"].items()
                if k != "ca_file"}
        assert dest["url"].startswith("http://127.0.0.1:")
        env.write_policy("loopback", dest)
        report, _ = env.bkp_json("init", "loopback")
        assert report["tenants"][0]["status"] == "initialised", report
        report, _ = env.bkp_json("backup", "loopback")
        assert report["runs"][0]["status"] == "ok", report
        stored = objects(repository(server, env, "loopback"))
        assert "config" in stored
        # The server's own listing (REST v2, with sizes) adds up to what lies on its disk.
        status, _ = env.bkp_json("status", "loopback")
        assert status["tenants"][0]["repository_bytes"] == sum(
            size for name, size in stored.items() if name != "config"), status
    finally:
        stop(proc)
