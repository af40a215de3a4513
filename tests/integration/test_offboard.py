"""Offboarding and erasure requests against real parts: restic, a local disk, an OpenSSH
sftp server, moto's S3 server (a versioned bucket), the real CLI.

"Nothing is left" is proven from outside bkp: the tree is walked, every object version of
the bucket is listed, plain restic is asked to open the repository. Every refusal leaves
the repository as it was: plain `restic snapshots` still lists every snapshot.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tests.conftest import BkpEnv, S3Server, free_port
from tests.e2e import test_who_may_act as who_may_act

pytestmark = pytest.mark.integration

# Real OS users with their own keys, and a desk with them registered (who may act).
people, desk = who_may_act.people, who_may_act.desk


# ---------------------------------------------------------------- helpers

def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir()) \
        if path.exists() else []


def backed_up(env: BkpEnv, tenant: str, nights: int = 2) -> list[str]:
    """`nights` snapshots of the tenant, each with a file of its own; their ids."""
    env.bkp_json("init", tenant)
    for night in range(nights):
        (env.root / "data" / tenant / f"night-{night}.txt").write_bytes(os.urandom(20_000))
        env.bkp_json("backup", tenant)
    return snapshot_ids(env, tenant)


def snapshot_ids(env: BkpEnv, tenant: str) -> list[str]:
    done = env.restic(tenant, "snapshots", "--json")
    assert done.returncode == 0, done.stderr
    return [s["id"] for s in json.loads(done.stdout)]


def versions_under(server: S3Server, bucket: str, prefix: str) -> list[str]:
    client = server.client()
    found = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
        found += [f"{v['Key']}@{v['VersionId']}" for v in page.get("Versions", [])]
        found += [f"{m['Key']}@{m['VersionId']} (marker)" for m in page.get("DeleteMarkers", [])]
    return found


def certificate_checks(env: BkpEnv, record_id: int) -> None:
    """The certificate verifies as JSON and as the issued PDF; any edit is exit 5."""
    done = env.bkp("certificate", str(record_id), "--format", "json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["certificate"]["kind"] == "erasure"
    path = env.root / f"erasure-{record_id}.json"
    path.write_text(done.stdout)
    verified, _ = env.bkp_json("certificate", "verify", str(path))
    assert verified["valid"] is True
    pdf = env.root / f"erasure-{record_id}.pdf"
    assert env.bkp("certificate", str(record_id), "--format", "pdf", "--output",
                   str(pdf)).returncode == 0
    verified, _ = env.bkp_json("certificate", "verify", str(pdf))
    assert verified["valid"] is True
    edited = dict(document)
    edited["certificate"] = {**document["certificate"], "destinations": [
        {**d, "objects_removed": (d["objects_removed"] or 0) + 1}
        for d in document["certificate"]["destinations"]]}
    path.write_text(json.dumps(edited))
    assert env.bkp("certificate", "verify", str(path)).returncode == 5
    raw = bytearray(pdf.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    pdf.write_bytes(bytes(raw))
    assert env.bkp("certificate", "verify", str(pdf)).returncode == 5


def audit_intact(env: BkpEnv) -> list[dict]:
    report, _ = env.bkp_json("audit", "verify")
    assert report["valid"], report["problems"]
    events, _ = env.bkp_json("audit", "log")
    return events["events"]


# ---------------------------------------------------------------- offboarding leaves nothing

def test_offboard_a_local_tenant_leaves_nothing_and_certifies_it(bkp_env):
    bkp_env.local_tenant("acme-zorg")
    ids = backed_up(bkp_env, "acme-zorg")
    repository = bkp_env.root / "offsite" / "acme-zorg"
    assert files_under(repository)

    data, _ = bkp_env.bkp_json("offboard", "acme-zorg", "--yes", "--reason",
                               "contract ended 2026-11-30", "--witness", "Anne Bakker")

    assert data["status"] == "erased" and data["snapshots_erased"] == len(ids)
    [place] = data["destinations"]
    assert place["status"] == "erased" and place["keys_removed"] == 1
    assert place["objects_removed"] > 2 and place["left"] == []
    assert files_under(repository) == []
    assert bkp_env.restic("acme-zorg", "snapshots").returncode != 0
    assert not (bkp_env.home / "cache" / "acme-zorg").exists()
    certificate_checks(bkp_env, data["record_id"])
    # the tenant is offboarded: no new backups until its policy is removed
    refused, _ = bkp_env.bkp_json("backup", "acme-zorg", expect=4)
    assert refused["runs"][0]["result"] == "refused"
    assert not repository.exists() or files_under(repository) == []
    status, _ = bkp_env.bkp_json("status", "acme-zorg")
    assert status["tenants"][0]["state"] == "offboarded"
    report, _ = bkp_env.bkp_json("policy", "validate")
    assert any("was offboarded" in w["message"] for w in report["policies"][0]["warnings"])
    events = audit_intact(bkp_env)
    assert [e["outcome"] for e in events if e["action"] == "offboard"] == \
        ["requested", "started", "keys removed", "erased"]


def test_offboard_an_sftp_tenant_leaves_nothing_on_the_server(bkp_env, sshd):
    bkp_env.sftp_tenant("sftp-zorg", sshd)
    backed_up(bkp_env, "sftp-zorg")
    on_server = Path(bkp_env.tenants["sftp-zorg"]["destination"]["path"])
    assert any(name.startswith("keys/") for name in files_under(on_server))

    data, _ = bkp_env.bkp_json("offboard", "sftp-zorg", "--yes")

    assert data["status"] == "erased"
    assert files_under(on_server) == []
    assert bkp_env.restic("sftp-zorg", "snapshots").returncode != 0
    certificate_checks(bkp_env, data["record_id"])


def test_offboard_an_s3_tenant_leaves_no_version_and_no_delete_marker(bkp_env, s3):
    bkp_env.s3_tenant("s3-zorg", s3)
    bucket = bkp_env.tenants["s3-zorg"]["destination"]["bucket"]
    s3.client().put_bucket_versioning(Bucket=bucket,
                                      VersioningConfiguration={"Status": "Enabled"})
    s3.client().put_object(Bucket=bucket, Key="not-the-tenants/readme.txt", Body=b"kept")
    backed_up(bkp_env, "s3-zorg", nights=2)
    # restic removes its lock files, which a versioned bucket keeps as old versions
    assert any("(marker)" in v for v in versions_under(s3, bucket, "bkp/"))

    data, _ = bkp_env.bkp_json("offboard", "s3-zorg", "--yes")

    assert data["status"] == "erased"
    assert versions_under(s3, bucket, "bkp/") == []
    assert versions_under(s3, bucket, "not-the-tenants/")  # outside the prefix: not ours
    assert bkp_env.restic("s3-zorg", "snapshots").returncode != 0
    certificate_checks(bkp_env, data["record_id"])


# ---------------------------------------------------------------- refusals touch nothing

def intact(env: BkpEnv, tenant: str, ids: list[str], repository: Path, files: list[str]):
    assert snapshot_ids(env, tenant) == ids
    assert files_under(repository) == files


@pytest.mark.parametrize("retention, says", [
    ({"last": 3, "legal_hold": True}, "legal hold"),
    ({"last": 3, "keep_until": "2999-12-31"}, "must be kept until 2999-12-31"),
])
def test_the_law_keeps_what_offboard_and_erase_would_erase(bkp_env, retention, says):
    bkp_env.local_tenant("kept-zorg")
    ids = backed_up(bkp_env, "kept-zorg")
    repository = bkp_env.root / "offsite" / "kept-zorg"
    files = files_under(repository)
    bkp_env.local_tenant("kept-zorg", retention=retention)

    for args in (("offboard", "kept-zorg", "--yes"),
                 ("erase", "kept-zorg", "--snapshot", ids[0], "--yes")):
        done = bkp_env.bkp(*args)
        assert done.returncode == 4, done.stderr
        assert says in done.stderr and "Nothing was touched" in done.stderr
        intact(bkp_env, "kept-zorg", ids, repository, files)
    events = audit_intact(bkp_env)
    assert [e["action"] for e in events if e["outcome"] == "refused"] == ["offboard", "erase"]


def test_keep_until_in_the_past_lets_the_offboarding_go(bkp_env):
    bkp_env.local_tenant("old-zorg", retention={"last": 3, "keep_until": "2020-01-31"})
    backed_up(bkp_env, "old-zorg", nights=1)
    data, _ = bkp_env.bkp_json("offboard", "old-zorg", "--yes")
    assert data["status"] == "erased"


def test_an_unconfirmed_offboarding_is_refused_without_a_terminal(bkp_env):
    bkp_env.local_tenant("unsure-zorg")
    ids = backed_up(bkp_env, "unsure-zorg")
    repository = bkp_env.root / "offsite" / "unsure-zorg"
    files = files_under(repository)

    done = subprocess.run(
        [*_bkp_argv(), "offboard", "unsure-zorg"], input="unsure-zorg\n",
        capture_output=True, text=True, env=bkp_env.env(), timeout=120)

    assert done.returncode == 4, done.stderr
    assert "not confirmed" in done.stderr
    intact(bkp_env, "unsure-zorg", ids, repository, files)


def _bkp_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "bkp"]


def test_a_held_lock_refuses_the_offboarding(bkp_env):
    from bkp.locks import tenant_lock

    bkp_env.local_tenant("busy-zorg")
    ids = backed_up(bkp_env, "busy-zorg")
    repository = bkp_env.root / "offsite" / "busy-zorg"
    files = files_under(repository)

    with tenant_lock(bkp_env.home / "locks", "busy-zorg"):  # as a running backup holds it
        done = bkp_env.bkp("offboard", "busy-zorg", "--yes")

    assert done.returncode == 4, done.stderr
    assert "holds the lock" in done.stderr
    intact(bkp_env, "busy-zorg", ids, repository, files)


def test_another_repository_inside_the_location_refuses_the_offboarding(bkp_env):
    bkp_env.local_tenant("outer-zorg")
    ids = backed_up(bkp_env, "outer-zorg", nights=1)
    bkp_env.write_policy("inner-zorg", {"type": "local", "country": "NL", "path": str(
        bkp_env.root / "offsite" / "outer-zorg" / "nested")})
    done = bkp_env.bkp("offboard", "outer-zorg", "--yes")
    assert done.returncode == 4, done.stderr
    assert "inner-zorg" in done.stderr
    assert snapshot_ids(bkp_env, "outer-zorg") == ids


# ---------------------------------------------------------------- a failure halfway

class StoppingProxy:
    """An S3 endpoint in front of moto that stops for good at the request named: the
    endpoint going away halfway through an erasure, at a point chosen by what bkp sends,
    not by time. `healed()` starts forwarding again (the endpoint is back)."""

    def __init__(self, upstream: str, stop_at: str, nth: int):
        self.upstream = upstream.removeprefix("http://")
        self.stop_at, self.nth, self.seen, self.stopped = stop_at, nth, 0, False
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.stop_at in self.path:
                    proxy.seen += 1
                    if proxy.seen >= proxy.nth:
                        proxy.stopped = True
                if proxy.stopped:
                    self.connection.shutdown(socket.SHUT_RDWR)  # no answer, ever
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
                upstream.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items()})
                answer = upstream.getresponse()
                content = answer.read()
                self.send_response(answer.status)
                head = self.command == "HEAD"  # its Content-Length is the object's
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection") and \
                            (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if not head:
                    self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healed(self) -> None:
        self.stopped, self.nth = False, 10 ** 9

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_endpoint_that_stops_halfway_fails_named_and_a_rerun_finishes(bkp_env, s3):
    bkp_env.s3_tenant("half-zorg", s3)
    destination = bkp_env.tenants["half-zorg"]["destination"]
    bucket = destination["bucket"]
    s3.client().put_bucket_versioning(Bucket=bucket,
                                      VersioningConfiguration={"Status": "Enabled"})
    ids = backed_up(bkp_env, "half-zorg", nights=2)
    # bkp reaches the bucket through an endpoint that stops at the second multi-object
    # delete: the keys are gone (first delete), the rest is not
    proxy = StoppingProxy(s3.endpoint, "?delete", nth=2)
    try:
        destination["endpoint"] = proxy.endpoint
        (bkp_env.policies / "half-zorg.yaml").write_text(
            yaml.safe_dump(bkp_env.tenants["half-zorg"], sort_keys=False))

        failed, _ = bkp_env.bkp_json("offboard", "half-zorg", "--yes", expect=1)

        assert proxy.stopped, failed
        assert failed["status"] == "failed" and failed["certificate"] is None
        [place] = failed["destinations"]
        assert place["status"] == "failed" and place["id"] == "destination"
        assert place["error"].startswith("destination (s3:") and bucket in place["error"]
        assert failed["error"] == place["error"]
        left = versions_under(s3, bucket, "bkp/")
        assert left and not any(v.startswith("bkp/keys/") for v in left)
        status, _ = bkp_env.bkp_json("status", "half-zorg")
        assert status["tenants"][0]["state"] == "offboarded"
        assert status["tenants"][0]["erasures"][0]["status"] == "failed"
        assert bkp_env.bkp("backup", "half-zorg").returncode == 4

        proxy.healed()
        done, _ = bkp_env.bkp_json("offboard", "half-zorg", "--yes")
    finally:
        proxy.close()

    assert done["status"] == "erased" and done["record_id"] == failed["record_id"]
    assert done["attempt"] == 2 and done["snapshots_erased"] == len(ids)
    assert versions_under(s3, bucket, "bkp/") == []
    certificate_checks(bkp_env, done["record_id"])
    events = audit_intact(bkp_env)
    assert [e["outcome"] for e in events if e["action"] == "offboard"
            and e["outcome"] in ("failed", "erased")] == ["failed", "erased"]


# ---------------------------------------------------------------- erasure of snapshots

def raw_data_bytes(env: BkpEnv, tenant: str) -> int:
    done = env.restic(tenant, "stats", "--mode", "raw-data", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["total_size"]


def test_erase_one_of_three_snapshots_leaves_the_other_two_and_prunes_its_data(bkp_env):
    bkp_env.local_tenant("gdpr-zorg")
    bkp_env.make_data("gdpr-zorg")
    bkp_env.bkp_json("init", "gdpr-zorg")
    source = bkp_env.root / "data" / "gdpr-zorg"
    ids = []
    for night in range(3):
        unique = source / "subject.bin"
        unique.write_bytes(os.urandom(400_000))  # only this snapshot holds these bytes
        bkp_env.bkp_json("backup", "gdpr-zorg")
        ids = snapshot_ids(bkp_env, "gdpr-zorg")
        assert len(ids) == night + 1
    before = raw_data_bytes(bkp_env, "gdpr-zorg")
    erased = ids[1]

    data, _ = bkp_env.bkp_json("erase", "gdpr-zorg", "--snapshot", erased[:8], "--yes",
                               "--reason", "data subject request 2026-117")

    assert data["status"] == "erased" and data["snapshots_erased"] == 1
    assert snapshot_ids(bkp_env, "gdpr-zorg") == [ids[0], ids[2]]
    assert before - raw_data_bytes(bkp_env, "gdpr-zorg") > 300_000  # its data pruned
    assert bkp_env.restic("gdpr-zorg", "check").returncode == 0
    certificate_checks(bkp_env, data["record_id"])
    # erasing snapshots does not offboard: the next backup goes ahead
    bkp_env.bkp_json("backup", "gdpr-zorg")


def test_erase_of_an_unknown_snapshot_is_a_usage_error(bkp_env):
    bkp_env.local_tenant("typo-zorg")
    ids = backed_up(bkp_env, "typo-zorg", nights=1)
    done = bkp_env.bkp("erase", "typo-zorg", "--snapshot", "deadbeef", "--yes")
    assert done.returncode == 2, done.stderr
    assert snapshot_ids(bkp_env, "typo-zorg") == ids


def test_erase_of_single_paths_says_restic_cannot(bkp_env):
    bkp_env.local_tenant("path-zorg")
    ids = backed_up(bkp_env, "path-zorg", nights=1)
    done = bkp_env.bkp("erase", "path-zorg", "--snapshot", ids[0], "--path", "/x", "--yes")
    assert done.returncode == 2
    assert "rewrite" in done.stderr
    assert snapshot_ids(bkp_env, "path-zorg") == ids


# ---------------------------------------------------------------- two people

def test_offboarding_waits_for_a_second_persons_signed_approval(desk, people):
    source = desk.root / "data"
    source.mkdir()
    (source / "dossier.txt").write_text("BSN 123456782\n")
    password = desk.root / "acme.key"
    password.write_text("a repository password of acme\n")
    password.chmod(0o600)
    repository = desk.root / "offsite" / "acme-zorg"
    repository.parent.mkdir()
    (desk.root / "policies" / "acme-zorg.yaml").write_text(yaml.safe_dump({
        "tenant": "acme-zorg", "purpose": "zorgdossiers", "classification": "sensitive",
        "sources": [str(source)], "password_file": str(password),
        "destination": {"type": "local", "country": "NL", "path": str(repository)},
        "retention": {"last": 3}}))
    desk.json("alice", "init", "acme-zorg")
    desk.json("alice", "backup", "acme-zorg")
    files = files_under(repository)

    # an auditor may not even ask
    assert desk.bkp("audrey", "offboard", "acme-zorg", "--yes").returncode == 4
    # Alice asks: a request waits, nothing is touched
    asked = desk.json("alice", "offboard", "acme-zorg", "--yes", "--reason", "left us")
    assert asked["status"] == "pending_approval"
    record = asked["record_id"]
    assert files_under(repository) == files
    status = desk.json(None, "status")
    assert [(a["kind"], a["subject"]) for a in status["approvals"]] == \
        [("offboard", str(record))]
    # running it again before the approval changes nothing
    assert desk.json("alice", "offboard", "acme-zorg", "--yes")["status"] == \
        "pending_approval"
    assert files_under(repository) == files
    # Alice cannot approve her own request, with her own key
    text = desk.bkp("alice", "approve", str(record), "--message").stdout
    own = desk.bkp("alice", "approve", str(record), "--signature", str(desk.sign("alice", text)))
    assert own.returncode == 4, own.stderr
    # Victor approves with his key; Alice runs the same command again
    approved = desk.json("vic", "approve", str(record), "--signature",
                         str(desk.sign("vic", text)))
    assert approved["approved_by"] == "Victor de Wit"
    done = desk.json("alice", "offboard", "acme-zorg", "--yes")

    assert done["status"] == "erased" and done["record_id"] == record
    assert files_under(repository) == []
    certificate = desk.json(None, "certificate", str(record))["certificate"]
    assert certificate["person_performing"]["name"] == "Alice Jansen"
    approval = certificate["validation"]["approval"]
    assert approval["approved_by"] == "Victor de Wit"
    assert approval["key_fingerprint"].startswith("SHA256:")
    issued = desk.home / "certificates" / f"certificate-1-record-{record}.pdf"
    verified = desk.json(None, "certificate", "verify", str(issued))
    assert verified["validation"] == {"state": "approved", "validator": "Victor de Wit",
                                      "checked": True}


def test_an_object_lock_still_holding_the_objects_refuses_naming_the_date(bkp_env, s3):
    from tests.integration.test_append_only import locked_bucket, object_lock_tenant

    bucket = locked_bucket(s3, bkp_env, "vault", "COMPLIANCE", days=30)
    object_lock_tenant(bkp_env, s3, "vault", bucket)
    bkp_env.bkp_json("init", "vault")
    bkp_env.bkp_json("backup", "vault")
    ids = snapshot_ids(bkp_env, "vault")
    before = versions_under(s3, bucket, "bkp/")

    done = bkp_env.bkp("offboard", "vault", "--yes")

    assert done.returncode == 4, done.stderr
    assert "S3 Object Lock retention in bucket" in done.stderr
    assert "the erasure is possible from then on" in done.stderr
    # the date named: the last object written plus the bucket's 30 days of retention
    written = max(v["LastModified"] for v in s3.client().list_object_versions(
        Bucket=bucket, Prefix="bkp/")["Versions"])
    assert (written + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ") in done.stderr
    assert versions_under(s3, bucket, "bkp/") == before  # not a version more or less
    erase = bkp_env.bkp("erase", "vault", "--snapshot", ids[0], "--yes")
    assert erase.returncode == 4 and "Object Lock" in erase.stderr, erase.stderr
    assert versions_under(s3, bucket, "bkp/") == before
    assert snapshot_ids(bkp_env, "vault") == ids


def test_offboard_an_append_only_rest_tenant_through_the_maintenance_door(
        bkp_env, tmp_path_factory):
    from tests.conftest import start_rest, stop
    from tests.integration.test_append_only import (
        admin_credentials,
        append_only_tenant,
        start_maintenance_server,
    )

    server, append_proc = start_rest(tmp_path_factory.mktemp("append-only"),
                                     append_only=True)
    url, _, maintenance_proc = start_maintenance_server(
        server, tmp_path_factory.mktemp("maintenance"))
    try:
        append_only_tenant(bkp_env, "rest-zorg", server)
        bkp_env.write_policy("rest-zorg", {
            **bkp_env.tenants["rest-zorg"]["destination"],
            "maintenance_url": f"{url}/{bkp_env.root.name}/rest-zorg",
            "maintenance_credentials_file": str(admin_credentials(bkp_env, "rest-zorg"))})
        backed_up(bkp_env, "rest-zorg")
        bkp_env.bkp_json("drill", "rest-zorg")  # writes the immutability canary too
        on_server = server.root / bkp_env.root.name / "rest-zorg"
        assert any(name.startswith("keys/") for name in files_under(on_server))

        data, _ = bkp_env.bkp_json("offboard", "rest-zorg", "--yes")

        assert data["status"] == "erased", data
        assert data["destinations"][0]["location"] == f"rest:{url}/{bkp_env.root.name}/rest-zorg"
        assert files_under(on_server) == []  # empty folders may stay: no object does
        assert bkp_env.restic("rest-zorg", "snapshots").returncode != 0
        certificate_checks(bkp_env, data["record_id"])
    finally:
        stop(maintenance_proc)
        stop(append_proc)


def test_offboard_erases_the_copies_too_and_erase_finds_a_snapshot_in_each(bkp_env):
    offsite = bkp_env.root / "offsite"
    offsite.mkdir()
    copy_path = bkp_env.root / "second-site" / "copied-zorg"
    copy_path.parent.mkdir()
    bkp_env.write_policy("copied-zorg", {
        "type": "local", "country": "NL", "site": "ams-dc1",
        "path": str(offsite / "copied-zorg")}, copies=[{
            "id": "fra", "type": "local", "country": "DE", "site": "fra-dc1",
            "path": str(copy_path)}])
    ids = backed_up(bkp_env, "copied-zorg", nights=2)
    assert files_under(copy_path)

    erased, _ = bkp_env.bkp_json("erase", "copied-zorg", "--snapshot", ids[0], "--yes")
    assert [(d["id"], d["status"], d["snapshots"]) for d in erased["destinations"]] == \
        [("destination", "erased", 1), ("fra", "erased", 1)]
    assert snapshot_ids(bkp_env, "copied-zorg") == ids[1:]
    listed, _ = bkp_env.bkp_json("snapshots", "copied-zorg", "--copy", "fra")
    assert len(listed["snapshots"]) == 1

    data, _ = bkp_env.bkp_json("offboard", "copied-zorg", "--yes")
    assert [(d["id"], d["status"]) for d in data["destinations"]] == \
        [("destination", "erased"), ("fra", "erased")]
    assert files_under(offsite / "copied-zorg") == [] and files_under(copy_path) == []
    certificate_checks(bkp_env, data["record_id"])
