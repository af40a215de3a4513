"""Attacks on the immutability proof, `bkp maintain` and the rest destination: servers that
lie about a deletion, canaries forged or removed, credentials echoed back in errors. Every
server is a real `rclone serve restic`; where a server must lie, a small HTTP front on
loopback forwards to it and changes only the answer under test."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import BkpEnv, RestServer, start_rest, stop

pytestmark = pytest.mark.integration

# What a front does with one request: None forwards it and passes the answer on; a status
# answers that instead (after forwarding the request when `forward` is true).
Fault = Callable[[str, str], "tuple[int, bool] | None"]


@contextmanager
def lying_front(upstream: RestServer, fault: Fault, *, any_user: bool = False):
    """A plain-http REST front on loopback before `upstream` (served without TLS). With
    `any_user`, every request reaches upstream as its own user (a server that lets the
    maintenance credential in through the append-only door)."""
    target = upstream.url.split("://", 1)[1]
    token = base64.b64encode(f"{upstream.user}:{upstream.password}".encode()).decode()

    def forwarded(headers) -> dict:
        out = {k: v for k, v in headers.items() if k.lower() != "host"}
        if any_user and "Authorization" in out:
            out["Authorization"] = f"Basic {token}"
        return out

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            decision = fault(self.command, self.path)
            status, reason, answer, headers = None, "", b"", {}
            if decision is None or decision[1]:
                upstream_conn = http.client.HTTPConnection(target, timeout=60)
                upstream_conn.request(self.command, self.path, body=body or None,
                                      headers=forwarded(self.headers))
                reply = upstream_conn.getresponse()
                status, reason, answer = reply.status, reply.reason, reply.read()
                headers = {k: v for k, v in reply.getheaders()
                           if k.lower() not in ("transfer-encoding", "connection")}
                upstream_conn.close()
            if decision is not None:
                status, reason, answer, headers = decision[0], "", b"", {}
            self.send_response(status, reason or None)
            if self.command != "HEAD" or "Content-Length" not in headers:
                headers["Content-Length"] = str(len(answer))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer)

        do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = _any

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


SNAPSHOT_DELETE = re.compile(r"/snapshots/[0-9a-f]{64}$")


def deleting_snapshot(method: str, path: str) -> bool:
    return method == "DELETE" and bool(SNAPSHOT_DELETE.search(path))


@pytest.fixture
def plain_server(tmp_path_factory):
    """A server that deletes what it is told, over plain http on loopback."""
    server, proc = start_rest(tmp_path_factory.mktemp("plain-rest"), tls=False)
    yield server
    stop(proc)


def fronted_tenant(env: BkpEnv, tenant: str, server: RestServer, front: str,
                   **overrides) -> Path:
    """An append_only rest tenant whose url is the front before `server`."""
    env.rest_tenant(tenant, server)
    dest = {k: v for k, v in env.tenants[tenant]["destination"].items() if k != "ca_file"}
    dest.update(url=f"{front}/{env.root.name}/{tenant}", append_only=True,
                maintenance_credentials_file=str(env.secrets / f"{tenant}.rest-admin"))
    return env.write_policy(tenant, dest, **overrides)


def snapshot_files(server: RestServer, env: BkpEnv, tenant: str) -> list[str]:
    folder = server.root / env.root.name / tenant / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def drill_rows(env: BkpEnv, tenant: str) -> list[dict]:
    db = sqlite3.connect(env.home / "catalog.db")
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute(
        "select * from runs where tenant = ? and kind = 'drill' order by id", [tenant])]


# ------------------------------------------------------------------ false verdicts


def test_a_server_failing_every_deletion_with_500_proves_nothing(bkp_env, plain_server):
    """restic retries a 500 and finally says "unable to remove ... from the repository",
    which is also what it says for a refusal: a broken server is not an append-only one."""
    env = bkp_env

    def fault(method, path):
        return (500, False) if deleting_snapshot(method, path) else None

    with lying_front(plain_server, fault) as front:
        fronted_tenant(env, "broken", plain_server, front)
        env.bkp_json("init", "broken")
        env.bkp_json("backup", "broken")
        done = env.bkp("drill", "broken", "--json", timeout=900)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    drill = json.loads(done.stdout)["drills"][0]
    assert drill["status"] == "failed" and "could not prove" in drill["error"], drill
    assert "Traceback" not in done.stderr


def test_a_server_that_deletes_but_answers_403_is_caught_by_looking(bkp_env, plain_server):
    env = bkp_env

    def fault(method, path):
        return (403, True) if deleting_snapshot(method, path) else None

    with lying_front(plain_server, fault) as front:
        fronted_tenant(env, "liar", plain_server, front)
        env.bkp_json("init", "liar")
        env.bkp_json("backup", "liar")
        done = env.bkp("drill", "liar", "--json")
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    proof = json.loads(done.stdout)["drills"][0]["immutability"]
    assert proof["deletion"] == "succeeded", proof
    assert proof["canary"] not in snapshot_files(plain_server, env, "liar")


def test_a_server_that_answers_200_but_keeps_the_file_proves_nothing(bkp_env, plain_server):
    env = bkp_env

    def fault(method, path):
        return (200, False) if deleting_snapshot(method, path) else None

    with lying_front(plain_server, fault) as front:
        fronted_tenant(env, "keeper", plain_server, front)
        env.bkp_json("init", "keeper")
        env.bkp_json("backup", "keeper")
        done = env.bkp("drill", "keeper", "--json")
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    drill = json.loads(done.stdout)["drills"][0]
    assert "could not prove" in drill["error"], drill
    assert json.loads(drill_rows(env, "keeper")[-1]["immutability"] or "null") is None


def test_a_canary_tag_on_a_tenant_snapshot_never_makes_the_drill_delete_it(bkp_env, rest):
    """`restic tag --add bkp-canary` on a tenant's snapshot (a deleting server: the tag
    rewrites the snapshot and removes the old file). The drill must not take that tenant
    snapshot for its canary and delete it."""
    env = bkp_env
    env.rest_tenant("tagged", rest)
    env.write_policy("tagged", {**env.tenants["tagged"]["destination"], "append_only": True,
                                "maintenance_credentials_file": str(env.secrets / "t.admin")})
    env.bkp_json("init", "tagged")
    report, _ = env.bkp_json("backup", "tagged")
    snapshot = report["runs"][0]["snapshot_id"]
    done = env.restic("tagged", "tag", "--add", "bkp-canary", snapshot)
    assert done.returncode == 0, done.stderr
    listed, _ = env.bkp_json("snapshots", "tagged")
    [tenant_snapshot] = [s["id"] for s in listed["snapshots"]]  # rewritten, still the tenant's
    done = env.bkp("drill", "tagged", "--json")
    assert done.returncode == 5, (done.stdout, done.stderr)  # the server deletes: exit 5
    proof = json.loads(done.stdout)["drills"][0]["immutability"]
    assert proof["canary"] != tenant_snapshot and proof["canary_written"] is True, proof
    listed, _ = env.bkp_json("snapshots", "tagged")
    assert [s["id"] for s in listed["snapshots"]] == [tenant_snapshot]  # tenant data stays


def test_a_canary_deleted_between_drills_is_written_again_and_tried(bkp_env, tmp_path_factory):
    env = bkp_env
    server, proc = start_rest(tmp_path_factory.mktemp("ao"), append_only=True)
    try:
        env.rest_tenant("vanish", server)
        env.write_policy("vanish", {**env.tenants["vanish"]["destination"],
                                    "append_only": True,
                                    "maintenance_credentials_file": str(env.secrets / "v")})
        env.bkp_json("init", "vanish")
        env.bkp_json("backup", "vanish")
        first, _ = env.bkp_json("drill", "vanish")
        canary = first["drills"][0]["immutability"]["canary"]
        (server.root / env.root.name / "vanish" / "snapshots" / canary).unlink()  # on the host
        second, _ = env.bkp_json("drill", "vanish")
        proof = second["drills"][0]["immutability"]
        assert proof["canary"] != canary and proof["canary_written"] is True, proof
        assert proof["deletion"] == "refused", proof
        assert proof["canary"] in snapshot_files(server, env, "vanish")
    finally:
        stop(proc)


# ------------------------------------------------------------------ bkp maintain


def admin_credentials(env: BkpEnv, tenant: str) -> Path:
    path = env.secrets / f"{tenant}.rest-admin"
    path.write_text("bkp-maintenance:Maint-pw-never-printed-4242\n")
    path.chmod(0o600)
    return path


def test_maintain_through_the_append_only_door_fails_and_claims_nothing(
        bkp_env, tmp_path_factory):
    """No maintenance_url: maintenance goes to url, the append-only server, which lets the
    maintenance credential in but refuses every deletion. Nothing was forgotten."""
    env = bkp_env
    server, proc = start_rest(tmp_path_factory.mktemp("ao"), append_only=True, tls=False)
    try:
        with lying_front(server, lambda method, path: None, any_user=True) as front:
            fronted_tenant(env, "nodoor", server, front, retention={"last": 1})
            admin_credentials(env, "nodoor")
            env.bkp_json("init", "nodoor")
            for night in range(2):
                (env.root / "data" / "nodoor" / f"n{night}").write_text(str(night))
                env.bkp_json("backup", "nodoor")
            done = env.bkp("maintain", "nodoor", "--json", timeout=900)
            # restic was stopped at the first refusal: its lock does not block the night
            after, _ = env.bkp_json("backup", "nodoor")
    finally:
        stop(proc)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    entry = json.loads(done.stdout)["tenants"][0]
    assert entry["status"] == "failed" and not entry["snapshots_forgotten"], entry
    assert len(snapshot_files(server, env, "nodoor")) == 3
    assert after["runs"][0]["status"] == "ok", after
    assert "Traceback" not in done.stderr
    assert "Maint-pw" not in done.stdout + done.stderr
    assert "refused to delete" in entry["error"] and "append-only" in entry["error"], entry


# ------------------------------------------------------------------ S3 Object Lock


def test_governance_mode_the_nightly_credential_may_bypass_fails_the_drill(bkp_env, s3):
    """GOVERNANCE locks yield to a credential with s3:BypassGovernanceRetention (on moto,
    every credential): a thief sends the bypass header, so the proof must send it too."""
    from tests.integration.test_append_only import locked_bucket, object_lock_tenant

    env = bkp_env
    bucket = locked_bucket(s3, env, "bypass", "GOVERNANCE", years=1)
    object_lock_tenant(env, s3, "bypass", bucket)
    env.bkp_json("init", "bypass")
    report, _ = env.bkp_json("backup", "bypass")
    kept = report["runs"][0]["snapshot_id"][:8]
    done = env.bkp("drill", "bypass", "--json")
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    proof = json.loads(done.stdout)["drills"][0]["immutability"]
    assert proof["deletion"] == "succeeded", proof
    listed, _ = env.bkp_json("snapshots", "bypass")
    assert [s["id"][:8] for s in listed["snapshots"]] == [kept]


def test_damage_found_stays_exit_5_when_the_proof_cannot_be_made(bkp_env, plain_server):
    """The restored content differs from an unchanged source (a finding, 5) and the server
    then fails the deletion attempt (could not prove, 1): the finding must not be hidden
    behind "the drill could not run"."""
    import os

    env = bkp_env

    def fault(method, path):
        return (500, False) if deleting_snapshot(method, path) else None

    with lying_front(plain_server, fault) as front:
        fronted_tenant(env, "rotten", plain_server, front, drill={"sample": 0,
                                                                  "rto_minutes": 60})
        env.bkp_json("init", "rotten")
        env.bkp_json("backup", "rotten")
        source = env.root / "data" / "rotten" / "patients" / "a.txt"
        stat = source.stat()
        source.write_bytes(b"X" * stat.st_size)  # same size, same mtime: not a change
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        done = env.bkp("drill", "rotten", "--json")
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    drill = json.loads(done.stdout)["drills"][0]
    kinds = [p["kind"] for p in drill["problems"]]
    assert "content" in kinds and "immutability" in kinds, drill
    assert drill["immutability"] is None, drill
