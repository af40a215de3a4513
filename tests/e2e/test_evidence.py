"""Evidence that survives the server: bkp.yaml, `evidence backup|recover`, `catalog sync`,
and the whole disaster through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
import yaml

pytestmark = pytest.mark.e2e


def write_config(env, evidence_destination: dict, **extra) -> None:
    key = env.secrets / "evidence.key"
    key.write_text("evidence repository password 9876\n")
    key.chmod(0o600)
    doc = {"organization": "Example Hosting bv",
           "evidence": {"destination": evidence_destination, "password_file": str(key)},
           **extra}
    (env.root / "bkp.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def config_env(env) -> dict:
    return {"BKP_CONFIG": str(env.root / "bkp.yaml")}


def local_evidence(env) -> dict:
    return {"type": "local", "country": "NL", "path": str(env.root / "evidence-offsite")}


def sftp_evidence(env, sshd) -> dict:
    return {"type": "sftp", "country": "DE", "host": sshd.host, "port": sshd.port,
            "user": sshd.user, "path": str(sshd.root / env.root.name / "evidence"),
            "host_key": sshd.host_key, "identity_file": str(sshd.identity_file)}


def sanitize_an_image(env) -> tuple[int, str]:
    """A medium sanitized and certified before the disaster: (record id, certificate)."""
    image = env.root / "disk.img"
    image.write_bytes(os.urandom(4 << 20))
    env.bkp_json("media", "register", "--serial", "DISK-0001", "--type", "ssd")
    result, _ = env.bkp_json("sanitize", str(image), "--serial", "DISK-0001", "--yes",
                             "--method", "zero")
    kept = env.root / "filed-certificate.json"  # what the auditor filed, outside BKP_HOME
    shutil.copy(result["certificate"]["json"], kept)
    return result["record_id"], str(kept)


def test_catalog_sync_rebuilds_status_after_losing_bkp_home(bkp_env):
    env = bkp_env
    env.local_tenant("synced")
    env.bkp_json("init", "synced")
    env.bkp_json("backup", "synced")
    env.bkp_json("backup", "synced")
    shutil.rmtree(env.home)
    env.home.mkdir(mode=0o700)
    before, _ = env.bkp_json("status", "synced")
    assert before["tenants"][0]["state"] == "never"
    assert "catalog sync synced" in before["tenants"][0]["hint"]
    synced, _ = env.bkp_json("catalog", "sync", "--all")
    row = synced["tenants"][0]
    assert (row["status"], row["snapshots"], row["added"]) == ("ok", 2, 2)
    again, _ = env.bkp_json("catalog", "sync", "synced")
    assert again["tenants"][0]["added"] == 0  # idempotent
    status, _ = env.bkp_json("status", "synced")
    tenant = status["tenants"][0]
    assert tenant["rpo_ok"] is True and tenant["state"] == "ok", tenant
    assert tenant["last_backup"]["snapshot_id"][:8] == row["latest"]["id"][:8]
    assert tenant["snapshot_count"] == 2
    verified, _ = env.bkp_json("audit", "verify")
    assert verified["valid"]  # rows from the repository are covered by the sync's event


@pytest.mark.parametrize("where", ["local", "sftp"])
def test_the_whole_disaster(bkp_env, sshd, where):
    env = bkp_env
    destination = local_evidence(env) if where == "local" else sftp_evidence(env, sshd)
    write_config(env, destination)
    extra = config_env(env)
    validated = env.bkp("policy", "validate", **extra)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    env.local_tenant("survivor")
    env.bkp_json("init", "survivor", **extra)
    env.bkp_json("backup", "survivor", **extra)
    record_id, filed = sanitize_an_image(env)
    anchor, _ = env.bkp_json("audit", "head")
    copied, _ = env.bkp_json("evidence", "backup", **extra)
    assert copied["status"] == "ok" and copied["snapshot_id"]
    env.bkp_json("backup", "survivor", **extra)  # made after the copy: catalog sync finds it

    shutil.rmtree(env.home)  # the bkp host is lost
    env.home.mkdir(mode=0o700)

    recovered, _ = env.bkp_json("evidence", "recover", **extra)
    assert recovered["status"] == "recovered" and recovered["events"] >= anchor["events"]
    anchored, _ = env.bkp_json("audit", "verify", "--anchor", anchor["head"])
    assert anchored["valid"] and anchored["anchor_found"] is True
    certificate = env.bkp("certificate", "verify", filed, "--json")
    assert certificate.returncode == 0, certificate.stdout + certificate.stderr
    assert json.loads(certificate.stdout)["record_id"] == record_id
    media, _ = env.bkp_json("media", "list")
    assert [(m["serial"], m["state"]) for m in media["media"]] == [("DISK-0001", "sanitized")]
    env.bkp_json("catalog", "sync", "--all", **extra)
    status, _ = env.bkp_json("status", **extra)
    assert status["tenants"][0]["rpo_ok"] is True
    night, _ = env.bkp_json("backup", "survivor", **extra)
    assert night["runs"][0]["status"] == "ok"
    again = env.bkp("evidence", "recover", **extra)
    assert again.returncode == 4, again.stdout + again.stderr
    assert env.bkp_json("audit", "verify")[0]["valid"]


def test_a_run_copies_the_evidence_and_status_shows_it(bkp_env):
    env = bkp_env
    write_config(env, local_evidence(env))
    extra = config_env(env)
    env.local_tenant("nightly")
    env.bkp_json("init", "nightly", **extra)
    night, _ = env.bkp_json("run", **extra)
    assert night["evidence"]["status"] == "ok", night
    quiet, _ = env.bkp_json("run", **extra)
    assert "evidence" not in quiet  # nothing recorded since the copy: nothing to copy
    status, _ = env.bkp_json("status", **extra)
    assert status["evidence"]["last"]["status"] == "ok"
    assert status["evidence"]["last"]["snapshot_id"] == night["evidence"]["snapshot_id"]


def test_the_copy_never_holds_a_private_key(bkp_env):
    env = bkp_env
    write_config(env, local_evidence(env))
    extra = config_env(env)
    sanitize_an_image(env)  # creates the signing key
    env.bkp_json("evidence", "backup", **extra)
    restored = env.root / "restored"
    env.bkp_json("evidence", "backup", **extra)
    done = env.restic_at(env.root / "evidence-offsite", env.secrets / "evidence.key",
                         "restore", "latest", "--target", str(restored))
    assert done.returncode == 0, done.stderr
    files = [p for p in restored.rglob("*") if p.is_file()]
    assert any(p.name == "catalog.db" for p in files)
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in files)


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(country="CH"), "outside the EEA"),
    (lambda d: d.update(type="s3", endpoint="https://s3.eu-west-2.amazonaws.com",
                        bucket="b", region="eu-west-2", credentials_file="/nonexistent",
                        path=None), "London"),
])
def test_an_evidence_destination_outside_the_eea_is_invalid(bkp_env, change, words):
    env = bkp_env
    destination = local_evidence(env)
    change(destination)
    write_config(env, {k: v for k, v in destination.items() if v is not None})
    done = env.bkp("policy", "validate", "--json", **config_env(env))
    assert done.returncode == 3, done.stdout
    config = next(p for p in json.loads(done.stdout)["policies"] if p["tenant"] is None)
    assert any(words in e["message"] and e["path"].startswith("evidence.destination")
               for e in config["errors"]), config


def test_a_world_readable_evidence_password_is_invalid(bkp_env):
    env = bkp_env
    write_config(env, local_evidence(env))
    (env.secrets / "evidence.key").chmod(0o644)
    done = env.bkp("policy", "validate", "--json", **config_env(env))
    assert done.returncode == 3
    run = env.bkp("run", **config_env(env))
    assert run.returncode == 3 and "evidence.password_file" in run.stderr


def test_checks_never_touch_the_recovered_catalog(bkp_env):
    env = bkp_env
    write_config(env, local_evidence(env))
    extra = config_env(env)
    env.local_tenant("looked-at")
    env.bkp_json("init", "looked-at", **extra)
    env.bkp_json("evidence", "backup", **extra)
    shutil.rmtree(env.home)
    env.home.mkdir(mode=0o700)
    env.bkp_json("evidence", "recover", **extra)
    conn = sqlite3.connect(env.home / "catalog.db")
    before = conn.execute("select count(*), max(seq) from audit_log").fetchone()
    for args in (("status",), ("audit", "verify"), ("audit", "head"), ("media", "list")):
        env.bkp(*args, **extra)
    assert conn.execute("select count(*), max(seq) from audit_log").fetchone() == before


def test_a_key_made_before_the_recovery_does_not_push_out_the_recovered_keys(bkp_env):
    env = bkp_env
    write_config(env, local_evidence(env))
    extra = config_env(env)
    _, filed = sanitize_an_image(env)
    env.bkp_json("evidence", "backup", **extra)
    shutil.rmtree(env.home)
    env.home.mkdir(mode=0o700)
    env.bkp_json("certificate", "key", "create")  # someone signed-in first on the new host
    env.bkp_json("evidence", "recover", "--force", **extra)
    certificate = env.bkp("certificate", "verify", filed, "--json")
    assert certificate.returncode == 0, certificate.stdout + certificate.stderr
    ring, _ = env.bkp_json("certificate", "public-key", "--all")
    assert len(ring["keys"]) == 2


def test_a_certificate_goes_off_site_at_once(bkp_env):
    env = bkp_env
    write_config(env, local_evidence(env))
    extra = config_env(env)
    image = env.root / "usb.img"
    image.write_bytes(os.urandom(1 << 20))
    env.bkp_json("media", "register", "--serial", "USB-0001", "--type", "usb", **extra)
    result, _ = env.bkp_json("sanitize", str(image), "--serial", "USB-0001", "--yes", **extra)
    assert result["evidence"]["status"] == "ok", result
    head, _ = env.bkp_json("audit", "head")
    status, _ = env.bkp_json("status", **extra)
    assert status["evidence"]["last"]["snapshot_id"] == result["evidence"]["snapshot_id"]
    assert head["events"] >= 4  # register, sanitize started/erased, certificate, evidence
