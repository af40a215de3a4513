"""Copies at other sites (`copies:` in a policy) against real servers: every snapshot a copy
lacks reaches it after each backup, each side of `restic copy` keeps its own transport
(sftp to sftp across two sshd with their own ports and keys, s3 to s3 with their own
credentials), a failed copy fails the run but keeps the destination's snapshot and the next
night fills the hole, retention applies to each copy, and no credential shows anywhere."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.conftest import BkpEnv, S3Server, SshServer, free_port, start_s3, start_sshd, stop

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ helpers

def local_copy(env: BkpEnv, tenant: str, site: str = "site-b", **keys) -> dict:
    (env.root / "site-b").mkdir(exist_ok=True)
    return {"type": "local", "country": "NL", "site": site,
            "path": str(env.root / "site-b" / tenant), **keys}


def sftp_copy(env: BkpEnv, server: SshServer, tenant: str, site: str = "site-b",
              **keys) -> dict:
    return {"type": "sftp", "country": "DE", "site": site, "host": server.host,
            "port": server.port, "user": server.user,
            "path": str(server.root / env.root.name / f"{tenant}-copy"),
            "host_key": server.host_key, "identity_file": str(server.identity_file), **keys}


def s3_copy(env: BkpEnv, server: S3Server, tenant: str, site: str = "site-b",
            region: str = "eu-central-1", **keys) -> dict:
    bucket = f"{env.root.name[:20]}-{tenant}-copy".lower().replace("_", "-")
    server.create_bucket(bucket, region)
    return {"type": "s3", "country": "DE", "site": site, "endpoint": server.endpoint,
            "bucket": bucket, "region": region, "prefix": "bkp",
            "credentials_file": str(server.credentials_file), **keys}


def add_copies(env: BkpEnv, tenant: str, *copies: dict, site: str = "site-a",
               **overrides) -> None:
    """Give an already written policy copies (and its destination a site)."""
    path = env.policies / f"{tenant}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["destination"]["site"] = site
    doc["copies"] = list(copies)
    doc.update(overrides)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env.tenants[tenant] = doc


def snapshots(env: BkpEnv, tenant: str, copy: str | None = None) -> list[dict]:
    args = ["snapshots", tenant, *(["--copy", copy] if copy else [])]
    return env.bkp_json(*args)[0]["snapshots"]


def originals(items: list[dict]) -> set[str]:
    return {(s.get("original") or s["id"])[:8] for s in items}


def backup(env: BkpEnv, tenant: str, expect: int = 0) -> dict:
    document, _ = env.bkp_json("backup", tenant, expect=expect)
    return document["runs"][0]


# ------------------------------------------------------------------ local to local

def test_a_local_copy_gets_every_snapshot_and_works_like_a_destination(bkp_env):
    env = bkp_env
    env.local_tenant("acme")
    add_copies(env, "acme", local_copy(env, "acme", id="b"))
    document, _ = env.bkp_json("init", "acme")
    [entry] = document["tenants"]
    assert entry["status"] == "initialised"
    assert entry["copies"] == [{"id": "b", "status": "initialised",
                                "repository": str(env.root / "site-b" / "acme"),
                                "error": None}]
    run = backup(env, "acme")
    [copy] = run["copies"]
    assert copy["status"] == "ok" and copy["id"] == "b" and copy["error"] is None
    assert copy["snapshot_id"] and copy["snapshot_id"][:8] != run["snapshot_id"][:8]
    listed = snapshots(env, "acme", "b")
    assert [s["id"][:8] for s in listed] == [copy["snapshot_id"][:8]]
    assert originals(listed) == {run["snapshot_id"][:8]}
    # By position too, and the drill restores and verifies the copy itself.
    assert snapshots(env, "acme", "1") == listed
    drill, _ = env.bkp_json("drill", "acme", "--copy", "b")
    [result] = drill["drills"]
    assert result["status"] == "passed", result
    assert result["snapshot_id"][:8] == copy["snapshot_id"][:8]
    # Same chunker parameters: the copy deduplicates like the destination.
    primary = env.restic_at(env.root / "offsite" / "acme", env.secrets / "acme.key",
                            "cat", "config")
    second = env.restic_at(env.root / "site-b" / "acme", env.secrets / "acme.key",
                           "cat", "config")
    assert (json.loads(primary.stdout)["chunker_polynomial"]
            == json.loads(second.stdout)["chunker_polynomial"])
    unknown = env.bkp("snapshots", "acme", "--copy", "c")
    assert unknown.returncode == 2 and "its copies are b" in unknown.stderr
