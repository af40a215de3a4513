"""Attacks on `bkp offboard` and `bkp erase`: erasing what must not be erased, approvals
that approve something else, false verdicts. Each test shows a hole that was open; every
refusal is proven to have touched nothing with plain `restic snapshots`."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from tests.conftest import BkpEnv
from tests.e2e import test_who_may_act as who_may_act

pytestmark = pytest.mark.integration

# Real OS users with their own keys, and a desk with them registered (who may act).
people, desk = who_may_act.people, who_may_act.desk


def snapshot_ids(env: BkpEnv, tenant: str) -> list[str]:
    done = env.restic(tenant, "snapshots", "--json")
    assert done.returncode == 0, done.stderr
    return [s["id"] for s in json.loads(done.stdout)]


def backed_up(env: BkpEnv, tenant: str, nights: int = 2) -> list[str]:
    env.bkp_json("init", tenant)
    for night in range(nights):
        (env.root / "data" / tenant / f"night-{night}.txt").write_bytes(os.urandom(2_000))
        env.bkp_json("backup", tenant)
    return snapshot_ids(env, tenant)


# ---------------------------------------------------------------- snapshot ids

def test_an_empty_snapshot_id_erases_nothing(bkp_env):
    """"" is a prefix of every id: it named no snapshot, yet one of them was erased."""
    bkp_env.local_tenant("empty-zorg")
    ids = backed_up(bkp_env, "empty-zorg", nights=2)
    done = bkp_env.bkp("erase", "empty-zorg", "--snapshot", "", "--yes")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert snapshot_ids(bkp_env, "empty-zorg") == ids


def test_a_prefix_of_several_snapshots_erases_none_of_them(bkp_env):
    """A short id shared by two snapshots: restic calls it ambiguous; bkp erased whichever
    came last."""
    bkp_env.local_tenant("twin-zorg", retention={"last": 50})
    ids = backed_up(bkp_env, "twin-zorg", nights=2)
    source = bkp_env.root / "data" / "twin-zorg"
    shared = None
    while shared is None:  # at most 17 snapshots: 16 hex digits (pigeonhole)
        firsts = [i[0] for i in ids]
        shared = next((c for c in firsts if firsts.count(c) > 1), None)
        if shared is None:
            (source / "more.txt").write_bytes(os.urandom(100))
            bkp_env.bkp_json("backup", "twin-zorg")
            ids = snapshot_ids(bkp_env, "twin-zorg")
    done = bkp_env.bkp("erase", "twin-zorg", "--snapshot", shared, "--yes")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert snapshot_ids(bkp_env, "twin-zorg") == ids


# ---------------------------------------------------------------- approvals

def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir()) \
        if path.exists() else []


def desk_tenant(desk, tenant: str, repository) -> None:
    source = desk.root / "data" / tenant
    source.mkdir(parents=True)
    (source / "dossier.txt").write_text("BSN 123456782\n")
    password = desk.root / f"{tenant}.key"
    password.write_text(f"a repository password of {tenant}\n")
    password.chmod(0o600)
    repository.parent.mkdir(parents=True, exist_ok=True)
    (desk.root / "policies" / f"{tenant}.yaml").write_text(yaml.safe_dump({
        "tenant": tenant, "purpose": "zorgdossiers", "classification": "sensitive",
        "sources": [str(source)], "password_file": str(password),
        "destination": {"type": "local", "country": "NL", "path": str(repository)},
        "retention": {"last": 3}}))


def approved_offboarding(desk, tenant: str) -> int:
    asked = desk.json("alice", "offboard", tenant, "--yes", "--reason", "left us")
    assert asked["status"] == "pending_approval"
    record = asked["record_id"]
    text = desk.bkp("alice", "approve", str(record), "--message").stdout
    desk.json("vic", "approve", str(record), "--signature", str(desk.sign("vic", text)))
    return record


def test_an_approval_does_not_carry_over_to_a_destination_edited_afterwards(desk, people):
    """Victor approved erasing acme's repository; the policy was then pointed at acme's
    older repository (kept for the law, its own password opens it) and the approved run
    erased that one, which nobody approved."""
    kept = desk.root / "offsite" / "acme-zorg-2019"
    desk_tenant(desk, "acme-zorg", kept)
    desk.json("alice", "init", "acme-zorg")
    desk.json("alice", "backup", "acme-zorg")
    policy = desk.root / "policies" / "acme-zorg.yaml"
    document = yaml.safe_load(policy.read_text())
    approved_place = desk.root / "offsite" / "acme-zorg"
    document["destination"]["path"] = str(approved_place)
    policy.write_text(yaml.safe_dump(document))
    desk.json("alice", "init", "acme-zorg")
    desk.json("alice", "backup", "acme-zorg")
    record = approved_offboarding(desk, "acme-zorg")

    document["destination"]["path"] = str(kept)
    policy.write_text(yaml.safe_dump(document))
    kept_files = files_under(kept)
    done = desk.json("alice", "offboard", "acme-zorg", "--yes")

    # nothing is erased: the new place waits for an approval of its own, saying why
    assert done["status"] == "pending_approval" and done["record_id"] == record
    assert str(kept) in done["message"] and "changed since request" in done["message"]
    assert files_under(kept) == kept_files
    assert files_under(approved_place)

# ---------------------------------------------------------------- not the tenant's repository

def test_offboard_refuses_a_repository_the_tenants_password_does_not_open(bkp_env):
    """The policy points at a repository that is not the tenant's (another password: a
    former customer's, whose policy is gone): offboarding wiped it, "0 snapshots erased"."""
    bkp_env.local_tenant("former-zorg")
    theirs = backed_up(bkp_env, "former-zorg", nights=1)
    former = bkp_env.tenants["former-zorg"]["destination"]["path"]
    (bkp_env.policies / "former-zorg.yaml").unlink()
    bkp_env.write_policy("acme-zorg", {"type": "local", "country": "NL", "path": former})
    (bkp_env.secrets / "acme-zorg.key").write_text("another password entirely\n")

    done = bkp_env.bkp("offboard", "acme-zorg", "--yes")

    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Nothing was touched" in done.stderr
    assert snapshot_ids(bkp_env, "former-zorg") == theirs


def test_offboard_refuses_a_location_that_is_no_repository(bkp_env, tmp_path):
    """A destination path mistyped as a folder of other files: every file in it was
    deleted as 'the tenant's backups'."""
    folder = tmp_path / "srv"
    (folder / "www").mkdir(parents=True)
    (folder / "www" / "index.html").write_text("a website\n")
    (folder / "notes.txt").write_text("not a backup\n")
    bkp_env.write_policy("typo-zorg", {"type": "local", "country": "NL", "path": str(folder)})

    done = bkp_env.bkp("offboard", "typo-zorg", "--yes")

    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert files_under(folder) == ["notes.txt", "www/index.html"]


# ---------------------------------------------------------------- a dump's inventory

def tagged_snapshot(env: BkpEnv, tenant: str, name: str, content: bytes, **tags) -> str:
    """A snapshot tagged as bkp tags a dump or its inventory (plain restic, bkp's tags)."""
    from bkp.restic import format_tags

    where = env.root / "made" / name
    where.parent.mkdir(exist_ok=True)
    where.write_bytes(content)
    argv = ["backup", "--json", str(where)]
    for value in format_tags({"tenant": tenant, "purpose": "zorgdossiers",
                              "classification": "sensitive", **tags}):
        argv += ["--tag", value]
    done = env.restic(tenant, *argv)
    assert done.returncode == 0, done.stderr
    return next(json.loads(line) for line in done.stdout.splitlines()
            if '"summary"' in line)["snapshot_id"]


def test_erasing_a_dump_erases_its_inventory_too(bkp_env):
    """A dump's inventory (its tables and row counts) stayed behind its erased dump."""
    bkp_env.local_tenant("dump-zorg", retention={"last": 50})
    backed_up(bkp_env, "dump-zorg", nights=1)
    dump = tagged_snapshot(bkp_env, "dump-zorg", "patients.sql", b"INSERT BSN 123456782;\n",
                           kind="database", database="patients", database_type="postgresql")
    inventory = tagged_snapshot(bkp_env, "dump-zorg", "patients.inventory.json",
                                b'{"tables": {"patients": 1}}', kind="inventory",
                                database="patients", database_type="postgresql", dump=dump)
    before = snapshot_ids(bkp_env, "dump-zorg")
    gone = {i for i in before if i.startswith((dump, inventory))}
    assert len(gone) == 2

    data, _ = bkp_env.bkp_json("erase", "dump-zorg", "--snapshot", dump[:8], "--yes")

    assert data["status"] == "erased"
    assert sorted(snapshot_ids(bkp_env, "dump-zorg")) == sorted(set(before) - gone)


# ---------------------------------------------------------------- false verdicts

def test_a_data_folder_linked_to_another_disk_is_not_reported_erased(bkp_env, tmp_path):
    """The repository's data/ moved to a bigger disk and linked back: the walk did not
    follow the link, the packs stayed, and the offboarding said ERASED, 0 objects left."""
    bkp_env.local_tenant("linked-zorg")
    backed_up(bkp_env, "linked-zorg", nights=1)
    repository = bkp_env.root / "offsite" / "linked-zorg"
    bigger = tmp_path / "bigger-disk" / "linked-zorg-data"
    bigger.parent.mkdir()
    (repository / "data").rename(bigger)
    (repository / "data").symlink_to(bigger)
    packs = files_under(bigger)
    assert packs

    done = bkp_env.bkp("offboard", "linked-zorg", "--yes", "--json")

    data = json.loads(done.stdout) if done.stdout.strip() else {}
    assert "Traceback" not in done.stderr
    if files_under(bigger):  # what stays must not be called erased
        assert done.returncode in (1, 4), (done.stdout, done.stderr)
        assert data.get("status") != "erased"
        assert "data" in (done.stderr + done.stdout)
    assert files_under(bigger) == packs  # refused before anything was touched
    assert snapshot_ids(bkp_env, "linked-zorg")


def test_an_sftp_data_folder_linked_elsewhere_is_not_reported_erased(bkp_env, sshd):
    """The same on the sftp server: the link was removed, the packs behind it stayed, and
    the offboarding said ERASED."""
    from pathlib import Path

    bkp_env.sftp_tenant("sftplink-zorg", sshd)
    backed_up(bkp_env, "sftplink-zorg", nights=1)
    on_server = Path(bkp_env.tenants["sftplink-zorg"]["destination"]["path"])
    bigger = on_server.parent / "bigger-disk-sftplink"
    (on_server / "data").rename(bigger)
    (on_server / "data").symlink_to(bigger)
    packs = files_under(bigger)
    assert packs

    done = bkp_env.bkp("offboard", "sftplink-zorg", "--yes", "--json")

    assert "Traceback" not in done.stderr
    assert done.returncode in (1, 4), (done.stdout, done.stderr)
    assert "data" in done.stderr + done.stdout
    assert files_under(bigger) == packs  # refused before anything was touched
    assert snapshot_ids(bkp_env, "sftplink-zorg")


def test_files_beside_the_repository_are_not_erased_as_the_tenants(bkp_env, s3):
    """A bucket whose root is the tenant's repository (prefix "") and also holds a website:
    restic wrote none of it, yet offboarding deleted every object in the bucket."""
    bkp_env.s3_tenant("root-zorg", s3)
    bkp_env.tenants["root-zorg"]["destination"]["prefix"] = ""
    policy = bkp_env.policies / "root-zorg.yaml"
    document = yaml.safe_load(policy.read_text())
    document["destination"]["prefix"] = ""
    policy.write_text(yaml.safe_dump(document))
    bucket = document["destination"]["bucket"]
    backed_up(bkp_env, "root-zorg", nights=1)
    client = s3.client()
    client.put_object(Bucket=bucket, Key="website/index.html", Body=b"<h1>a website</h1>")

    done = bkp_env.bkp("offboard", "root-zorg", "--yes")

    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "website/index.html" in done.stderr
    assert client.get_object(Bucket=bucket, Key="website/index.html")["Body"].read()
    assert snapshot_ids(bkp_env, "root-zorg")


def test_offboard_refuses_a_repository_holding_another_tenants_snapshots(bkp_env):
    """The same password opens it (one password file for two tenants), but every snapshot
    in it is another tenant's: offboarding wiped them as its own ("0 snapshots erased")."""
    bkp_env.local_tenant("former-zorg")
    theirs = backed_up(bkp_env, "former-zorg", nights=1)
    former = bkp_env.tenants["former-zorg"]["destination"]["path"]
    (bkp_env.policies / "former-zorg.yaml").unlink()
    bkp_env.write_policy("acme-zorg", {"type": "local", "country": "NL", "path": former})

    done = bkp_env.bkp("offboard", "acme-zorg", "--yes")

    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "former-zorg" in done.stderr
    assert snapshot_ids(bkp_env, "former-zorg") == theirs


def test_an_approved_erasure_erases_only_the_snapshot_that_was_approved(desk, people):
    """Approved: erase snapshot `c…` (the one id starting so). That snapshot went (by
    hand), a new one starting with the same digit came: the approved run erased it."""
    repository = desk.root / "offsite" / "short-zorg"
    desk_tenant(desk, "short-zorg", repository)
    policy = desk.root / "policies" / "short-zorg.yaml"
    document = yaml.safe_load(policy.read_text())
    document["retention"] = {"last": 100}
    policy.write_text(yaml.safe_dump(document))
    password = desk.root / "short-zorg.key"

    def ids() -> list[str]:
        done = subprocess.run(["restic", "-r", str(repository), "snapshots", "--json"],
                              capture_output=True, text=True,
                              env={**os.environ, "RESTIC_PASSWORD_FILE": str(password)})
        assert done.returncode == 0, done.stderr
        return [s["id"] for s in json.loads(done.stdout)]

    def backup() -> None:
        (desk.root / "data" / "short-zorg" / "more.txt").write_bytes(os.urandom(64))
        desk.json("alice", "backup", "short-zorg")

    desk.json("alice", "init", "short-zorg")
    backup()
    approved = ids()[0]
    digit = approved[0]
    asked = desk.json("alice", "erase", "short-zorg", "--snapshot", digit, "--yes")
    record = asked["record_id"]
    text = desk.bkp("alice", "approve", str(record), "--message").stdout
    desk.json("vic", "approve", str(record), "--signature", str(desk.sign("vic", text)))
    forgot = subprocess.run(["restic", "-r", str(repository), "forget", approved],
                            capture_output=True, text=True,
                            env={**os.environ, "RESTIC_PASSWORD_FILE": str(password)})
    assert forgot.returncode == 0, forgot.stderr
    while not any(i.startswith(digit) for i in ids()):
        backup()
    before = ids()

    done = desk.bkp("alice", "erase", "short-zorg", "--snapshot", digit, "--yes", "--json")

    assert "Traceback" not in done.stderr
    assert ids() == before, (done.stdout, done.stderr)  # nobody approved erasing that one
