"""Attacks on `bkp offboard` and `bkp erase`: erasing what must not be erased, approvals
that approve something else, false verdicts. Each test shows a hole that was open; every
refusal is proven to have touched nothing with plain `restic snapshots`."""

from __future__ import annotations

import json
import os

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
    """Victor approved erasing acme's repository; the policy was then pointed at another
    repository (a former customer's, kept for the law) and the approved run erased that."""
    approved_place = desk.root / "offsite" / "acme-zorg"
    desk_tenant(desk, "acme-zorg", approved_place)
    desk.json("alice", "init", "acme-zorg")
    desk.json("alice", "backup", "acme-zorg")
    # another repository, not a tenant bkp knows any more (its policy is gone)
    kept = desk.root / "offsite" / "kept-by-law"
    desk_tenant(desk, "former-zorg", kept)
    desk.json("alice", "init", "former-zorg")
    desk.json("alice", "backup", "former-zorg")
    (desk.root / "policies" / "former-zorg.yaml").unlink()
    record = approved_offboarding(desk, "acme-zorg")

    policy = desk.root / "policies" / "acme-zorg.yaml"
    document = yaml.safe_load(policy.read_text())
    document["destination"]["path"] = str(kept)
    policy.write_text(yaml.safe_dump(document))
    kept_files = files_under(kept)
    done = desk.json("alice", "offboard", "acme-zorg", "--yes")

    # nothing is erased: the new place waits for an approval of its own, saying why
    assert done["status"] == "pending_approval" and done["record_id"] == record
    assert str(kept) in done["message"] and "places changed" in done["message"]
    assert files_under(kept) == kept_files
    assert files_under(approved_place)
