"""Round two of the adversary: what a bad night, a careless operator and an attacker tried
after issues 8, 9 and 10 were built. Each test failed before its fix (or is marked xfail,
strict, with what is still open)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import read_only_view

pytestmark = pytest.mark.integration


def one_clear_line(done: subprocess.CompletedProcess, *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    message = next(line for line in done.stderr.splitlines() if line.startswith("bkp:"))
    for word in words:
        assert word in message, (word, done.stderr)


def snapshot_ids(env, tenant: str) -> list[str]:
    listed = env.restic(tenant, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    return sorted(s["id"] for s in json.loads(listed.stdout))


# ---------------------------------------------------------------- bkp restic under legal hold

@pytest.fixture
def held(bkp_env):
    """A tenant under legal hold with three snapshots."""
    env = bkp_env
    env.local_tenant("held", retention={"last": 1, "legal_hold": True})
    env.bkp_json("init", "held")
    for n in range(3):
        (env.root / "data" / "held" / f"day-{n}.txt").write_text(f"day {n}\n")
        env.bkp_json("backup", "held")
    return env


@pytest.mark.parametrize("args", [
    ["-o", "local.connections=2", "forget", "--keep-last", "1", "--prune"],
    ["--cache-dir", "/tmp/bkp-adversary-cache", "forget", "--keep-last", "1"],
    ["--limit-upload", "100", "forget", "--keep-last", "1"],
    ["--option=local.connections=2", "forget", "--keep-last", "1"],
    ["-q", "-o", "local.connections=2", "prune"],
    ["key", "--host", "elsewhere", "remove", "0" * 64],
    ["key", "--user", "x", "passwd"],
    ["unlock", "--remove-all=true"],
], ids=["-o before forget", "--cache-dir before forget", "--limit-upload before forget",
        "--option= before forget", "-o before prune", "key --host remove", "key --user passwd",
        "unlock --remove-all=true"])
def test_restic_options_before_the_command_do_not_get_around_a_legal_hold(held, args):
    before = snapshot_ids(held, "held")
    done = held.bkp("restic", "held", "--", *args)
    assert done.returncode == 4, (done.returncode, done.stdout, done.stderr)
    one_clear_line(done, "legal hold")
    assert snapshot_ids(held, "held") == before
    refused = [e for e in held.bkp_json("audit", "log", "--tenant", "held")[0]["events"]
               if e["action"] == "restic"]
    assert refused[-1]["outcome"] == "refused"


@pytest.mark.parametrize("args", [
    ["-r/tmp/elsewhere", "snapshots"],
    ["-qr/tmp/elsewhere", "snapshots"],
    ["-p/tmp/other.key", "snapshots"],
    ["--from-key-hint=abc", "snapshots"],
])
def test_glued_short_options_cannot_point_restic_elsewhere(held, args):
    done = held.bkp("restic", "held", "--", *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    one_clear_line(done, "bkp sets the repository")


def test_ordinary_restic_commands_still_run(held):
    done = held.bkp("restic", "held", "--", "snapshots", "--json", "-o", "local.connections=2")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3
    found = held.bkp("restic", "held", "--", "find", "forget")  # a file name, not a command
    assert found.returncode == 0, found.stderr


# ---------------------------------------------------------------- an emptied catalog

@pytest.mark.parametrize("blank", ["zero bytes", "a database without tables"])
def test_an_emptied_catalog_is_not_an_intact_trail_nor_a_fresh_start(bkp_env, blank):
    env = bkp_env
    env.local_tenant("emptied")
    env.bkp_json("init", "emptied")
    env.bkp_json("backup", "emptied")
    catalog = env.home / "catalog.db"
    catalog.unlink()
    for leftover in env.home.glob("catalog.db-*"):
        leftover.unlink()
    if blank == "zero bytes":
        catalog.write_bytes(b"")  # `> catalog.db`, or a crash of whatever rewrote it
    else:
        sqlite3.connect(catalog).close()
        conn = sqlite3.connect(catalog)
        conn.execute("vacuum")
        conn.close()
    verify = env.bkp("audit", "verify", "--json")
    assert verify.returncode == 5, verify.stdout + verify.stderr
    assert not json.loads(verify.stdout)["valid"]
    backup = env.bkp("backup", "emptied")
    assert backup.returncode == 1, backup.stdout + backup.stderr
    one_clear_line(backup, "bkp catalog init")
    assert catalog.read_bytes() == b"" or blank != "zero bytes"
    env.bkp_json("catalog", "init", "--reason", "the catalog was emptied; no evidence copy")
    env.bkp_json("backup", "emptied")
    assert env.bkp_json("audit", "verify")[0]["valid"]


# ---------------------------------------------------------------- a read-only BKP_HOME

@pytest.mark.parametrize("kind", ["local", "sftp"])
def test_snapshots_read_from_a_read_only_home(bkp_env, sshd, kind):
    env = bkp_env
    if kind == "local":
        env.local_tenant("frozen")
    else:
        env.sftp_tenant("frozen", sshd)
    env.bkp_json("init", "frozen")
    env.bkp_json("backup", "frozen")
    env.bkp_json("snapshots", "frozen")  # the cache under BKP_HOME now exists
    with read_only_view(env.home):
        listed = env.bkp("snapshots", "frozen", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert len(json.loads(listed.stdout)["snapshots"]) == 1


# ---------------------------------------------------------------- a tampered evidence copy

EVIDENCE_TAGS = ("bkp-tags=2", "tenant=_evidence", "purpose=bkp%20evidence",
                 "classification=sensitive")


@pytest.fixture
def evidence(bkp_env):
    """An installation with an evidence copy on a local destination, after a backup and a
    certified sanitization: (env, config env, evidence repository, its password file)."""
    env = bkp_env
    key = env.secrets / "evidence.key"
    key.write_text("evidence repository password 9876\n")
    key.chmod(0o600)
    repo = env.root / "evidence-offsite"
    (env.root / "bkp.yaml").write_text(yaml.safe_dump({
        "organization": "Example Hosting bv",
        "evidence": {"destination": {"type": "local", "country": "NL", "path": str(repo)},
                     "password_file": str(key)}}))
    extra = {"BKP_CONFIG": str(env.root / "bkp.yaml")}
    env.local_tenant("kept")
    env.bkp_json("init", "kept", **extra)
    env.bkp_json("backup", "kept", **extra)
    image = env.root / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    env.bkp_json("media", "register", "--serial", "DISK-0001", "--type", "ssd")
    env.bkp_json("sanitize", str(image), "--serial", "DISK-0001", "--yes", "--method", "zero",
                 **extra)
    env.bkp_json("evidence", "backup", **extra)
    return env, extra, repo, key


def rewrite_latest_copy(env, repo: Path, key: Path, change, snapshot: str = "latest") -> None:
    """What someone with the evidence password can do without deleting anything: restore a
    copy, change it, and back it up again as the newest snapshot."""
    work = env.root / "attacker"
    shutil.rmtree(work, ignore_errors=True)
    done = env.restic_at(repo, key, "restore", snapshot, "--target", str(work))
    assert done.returncode == 0, done.stderr
    (folder,) = [m.parent for m in work.rglob("manifest.json")]
    change(folder)
    done = subprocess.run(["restic", "-r", str(repo), "backup", "--host", "elsewhere",
                           *[a for t in EVIDENCE_TAGS for a in ("--tag", t)], "."],
                          cwd=folder, capture_output=True, text=True,
                          env={**env.env(), "RESTIC_PASSWORD_FILE": str(key)})
    assert done.returncode == 0, done.stderr


def execute(folder: Path, sql: str) -> None:
    conn = sqlite3.connect(folder / "catalog.db")
    conn.executescript(sql)
    conn.commit()
    conn.close()
    for leftover in folder.glob("catalog.db-*"):
        leftover.unlink()


def rehash(folder: Path) -> None:
    """The manifest made to match whatever the folder now holds."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(folder.rglob("*"))
                         if p.is_file() and p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def lose_the_host(env) -> None:
    shutil.rmtree(env.home)
    env.home.mkdir(mode=0o700)


def assert_refused_as_damage(env, extra) -> None:
    done = env.bkp("evidence", "recover", "--json", **extra)
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 5
    assert not (env.home / "catalog.db").exists()  # nothing damaged was installed


def test_recover_refuses_a_copy_whose_audit_chain_was_changed(evidence):
    env, extra, repo, key = evidence
    rewrite_latest_copy(env, repo, key, lambda f: (
        execute(f, "update audit_log set operator = 'mallory' where seq = 2"), rehash(f)))
    lose_the_host(env)
    assert_refused_as_damage(env, extra)


def test_recover_refuses_a_copy_whose_trail_was_cut_short(evidence):
    env, extra, repo, key = evidence
    rewrite_latest_copy(env, repo, key, lambda f: (
        execute(f, "delete from audit_log where seq > 2; delete from certificates; "
                   "delete from sanitizations; delete from records"), rehash(f)))
    lose_the_host(env)
    assert_refused_as_damage(env, extra)


def test_recover_refuses_an_older_copy_replayed_as_the_newest(evidence):
    env, extra, repo, key = evidence
    first = json.loads(env.restic_at(repo, key, "snapshots", "--json").stdout)[0]["id"]
    env.bkp_json("backup", "kept", **extra)
    env.bkp_json("evidence", "backup", **extra)  # the honest newest copy
    rewrite_latest_copy(env, repo, key, lambda f: None, snapshot=first)
    lose_the_host(env)
    assert_refused_as_damage(env, extra)
    named = env.bkp("evidence", "recover", "--snapshot", first[:8], "--json", **extra)
    assert named.returncode == 0, named.stdout + named.stderr  # asked for by name: fine


def test_recover_of_an_untouched_copy_still_works(evidence):
    env, extra, _, _ = evidence
    lose_the_host(env)
    recovered, _ = env.bkp_json("evidence", "recover", **extra)
    assert recovered["status"] == "recovered"
    assert env.bkp_json("audit", "verify")[0]["valid"]


# ---------------------------------------------------------------- records removed, trail kept

@pytest.mark.parametrize("sql, words", [
    ("delete from runs where kind = 'backup' and status = 'failed'", "names run"),
    ("delete from media_events; delete from media where serial = 'DISK-0002'", "DISK-0002"),
], ids=["a failed night removed", "a medium removed from the register"])
def test_records_removed_behind_an_intact_chain_are_found(bkp_env, sql, words):
    env = bkp_env
    env.local_tenant("hidden")
    env.bkp_json("init", "hidden")
    env.bkp_json("backup", "hidden")
    shutil.rmtree(env.root / "data" / "hidden")  # the night the source was gone
    failed = env.bkp("backup", "hidden")
    assert failed.returncode != 0
    env.bkp_json("media", "register", "--serial", "DISK-0002", "--type", "hdd")
    assert env.bkp_json("audit", "verify")[0]["valid"]
    conn = sqlite3.connect(env.home / "catalog.db")
    conn.executescript(sql)
    conn.commit()
    conn.close()
    verify = env.bkp("audit", "verify", "--json")
    assert verify.returncode == 5, verify.stdout
    report = json.loads(verify.stdout)
    assert not report["valid"] and any(words in p for p in report["problems"]), report


# ---------------------------------------------------------------- typed free text

@pytest.mark.parametrize("args, env_extra", [
    (["status"], {"BKP_OPERATOR": "evil\n    99 2030-01-01T00:00:00Z admin  forged"}),
    (["--operator", "x" * 5000, "status"], {}),
    (["--operator", "red\x1b[31m", "status"], {}),
    (["media", "register", "--serial", "S-1", "--type", "ssd", "--vendor", "a\nb"], {}),
    (["destroy", "--serial", "S-1", "--method", "shred", "--witness", "w\r\nitness"], {}),
    (["catalog", "init", "--reason", "\x07"], {}),
], ids=["operator with a forged log line", "operator of 5000 characters",
        "operator with a terminal escape", "vendor with a newline", "witness with CRLF",
        "reason with a bell"])
def test_free_text_with_control_characters_is_refused_where_typed(bkp_env, args, env_extra):
    bkp_env.local_tenant("typed")
    done = bkp_env.bkp(*args, "--json", **env_extra)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert json.loads(done.stdout)["exit_code"] == 2
    assert "Traceback" not in done.stderr
    assert not (bkp_env.home / "catalog.db").exists()


def test_a_unicode_operator_is_recorded_as_typed(bkp_env):
    bkp_env.local_tenant("typed")
    bkp_env.bkp_json("media", "register", "--serial", "S-2", "--type", "ssd",
                     BKP_OPERATOR="Jürgen Ødegård-Müller")
    events = bkp_env.bkp_json("audit", "log")[0]["events"]
    assert events[-1]["operator"] == "Jürgen Ødegård-Müller"


# ---------------------------------------------------------------- an anchor that is none

@pytest.mark.parametrize("anchor", ["", "   ", "zz", "1ce45f9d"])
def test_an_anchor_that_is_no_head_hash_is_a_usage_error_not_a_pass(bkp_env, anchor):
    """`bkp audit verify --anchor "$ANCHOR"` with the variable empty must not pass."""
    bkp_env.local_tenant("anchored")
    bkp_env.bkp_json("init", "anchored")
    done = bkp_env.bkp("audit", "verify", "--anchor", anchor, "--json")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert json.loads(done.stdout)["exit_code"] == 2


# ---------------------------------------------------------------- a dry run that tells the truth

def test_run_dry_run_fails_as_the_run_would_on_invalid_settings(bkp_env):
    env = bkp_env
    env.local_tenant("previewed")
    (env.root / "bkp.yaml").write_text("evidence: [\n")
    extra = {"BKP_CONFIG": str(env.root / "bkp.yaml")}
    night = env.bkp("run", "--json", **extra)
    preview = env.bkp("run", "--dry-run", "--json", **extra)
    assert night.returncode == 3, night.stdout + night.stderr
    assert preview.returncode == night.returncode, preview.stdout + preview.stderr
    assert "Problem(" not in preview.stderr  # one sentence per problem, no Python repr


def test_restic_cannot_replace_itself_through_bkp(held, tmp_path):
    """`self-update` would swap the restic every tenant uses for a download from GitHub,
    outside the package manager (--output keeps this test from touching the real one)."""
    done = held.bkp("restic", "held", "--", "self-update", "--output", str(tmp_path / "r"))
    assert done.returncode == 4, (done.returncode, done.stdout, done.stderr)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, deleting, writing", [
    (["snapshots"], False, False),
    (["-o", "snapshots", "forget", "--keep-last", "1"], True, True),  # -o takes "snapshots"
    (["--cache-dir", "ls", "prune"], True, True),
    (["key", "list"], False, False),
    (["key", "--host", "list", "remove", "abc"], True, True),
    (["key", "add"], False, True),
    (["find", "forget"], False, False),
])
def test_the_command_is_found_as_restic_finds_it(args, deleting, writing):
    """The role check (writes) and the legal-hold check (deletes) read the same command
    restic will run, past the values of its global options."""
    from bkp.tenants.passthrough import deletes, writes

    assert (deletes(args), writes(args)) == (deleting, writing)
