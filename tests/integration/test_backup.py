"""Backups through the real CLI against real restic, sshd and moto's S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_local_init_backup_and_plain_restic_sees_snapshot(bkp_env):
    bkp_env.local_tenant("zorg-local")
    data, _ = bkp_env.bkp_json("init", "zorg-local")
    assert data["tenants"][0]["status"] == "initialised"
    again, _ = bkp_env.bkp_json("init", "zorg-local")
    assert again["tenants"][0]["status"] == "exists"

    runs, _ = bkp_env.bkp_json("backup", "zorg-local")
    run = runs["runs"][0]
    assert run["status"] == "ok" and run["error"] is None
    assert run["files"] == 2 and run["bytes_added"] > 0
    assert run["restic_calls"] == 2  # backup + forget --prune, nothing more

    plain = bkp_env.restic("zorg-local", "snapshots", "--json")
    assert plain.returncode == 0, plain.stderr
    snaps = json.loads(plain.stdout)
    assert [s["short_id"] for s in snaps] == [run["snapshot_id"][:8]]
    assert set(snaps[0]["tags"]) == {"bkp-tags=2", "tenant=zorg-local",
                                     "purpose=zorgdossiers", "classification=sensitive",
                                     "kind=files"}

    listed, _ = bkp_env.bkp_json("snapshots", "zorg-local")
    assert listed["snapshots"][0]["id"].startswith(run["snapshot_id"][:8])


def test_backup_without_init_says_what_to_do(bkp_env):
    bkp_env.local_tenant("not-yet")
    done = bkp_env.bkp("backup", "not-yet")
    assert done.returncode == 1
    assert "bkp init not-yet" in done.stdout + done.stderr


def test_retention_forgets_beyond_keep_last(bkp_env):
    bkp_env.local_tenant("keep-two", retention={"last": 2})
    bkp_env.bkp_json("init", "keep-two")
    source = bkp_env.root / "data" / "keep-two"
    for i in range(3):
        (source / f"night-{i}.txt").write_text(f"night {i}\n")
        runs, _ = bkp_env.bkp_json("backup", "keep-two")
        assert runs["runs"][0]["status"] == "ok"
    assert runs["runs"][0]["snapshots_kept"] == 2
    snaps = json.loads(bkp_env.restic("keep-two", "snapshots", "--json").stdout)
    assert len(snaps) == 2


def test_legal_hold_keeps_everything(bkp_env):
    bkp_env.local_tenant("on-hold", retention={"last": 1, "legal_hold": True})
    bkp_env.bkp_json("init", "on-hold")
    source = bkp_env.root / "data" / "on-hold"
    for i in range(3):
        (source / f"n{i}").write_text(str(i))
        runs, _ = bkp_env.bkp_json("backup", "on-hold")
        assert runs["runs"][0]["restic_calls"] == 1  # no forget at all
    snaps = json.loads(bkp_env.restic("on-hold", "snapshots", "--json").stdout)
    assert len(snaps) == 3


def test_sftp_backup_visible_to_plain_restic(bkp_env, sshd):
    bkp_env.sftp_tenant("zorg-sftp", sshd)
    data, _ = bkp_env.bkp_json("init", "zorg-sftp")
    assert data["tenants"][0]["status"] == "initialised"
    runs, _ = bkp_env.bkp_json("backup", "zorg-sftp")
    assert runs["runs"][0]["status"] == "ok", runs
    plain = bkp_env.restic("zorg-sftp", "snapshots", "--json")
    assert plain.returncode == 0, plain.stderr
    assert len(json.loads(plain.stdout)) == 1


def test_sftp_wrong_host_key_refused_before_anything_is_written(bkp_env, sshd):
    bkp_env.sftp_tenant("mitm", sshd)
    dest = bkp_env.tenants["mitm"]["destination"]
    bkp_env.write_policy("mitm", {**dest, "host_key": sshd.other_host_key})
    done = bkp_env.bkp("init", "mitm")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "host key mismatch" in done.stdout + done.stderr
    # the remote directory was never created
    assert not (sshd.root / bkp_env.root.name / "mitm").exists()


def test_s3_backup_visible_to_plain_restic(bkp_env, s3):
    bkp_env.s3_tenant("zorg-s3", s3)
    data, _ = bkp_env.bkp_json("init", "zorg-s3")
    assert data["tenants"][0]["status"] == "initialised", data
    runs, _ = bkp_env.bkp_json("backup", "zorg-s3")
    assert runs["runs"][0]["status"] == "ok", runs
    plain = bkp_env.restic("zorg-s3", "snapshots", "--json")
    assert plain.returncode == 0, plain.stderr
    assert len(json.loads(plain.stdout)) == 1


def test_s3_bucket_in_other_region_refused_with_exit_4(bkp_env, s3):
    bucket = f"{bkp_env.root.name[:20]}-moved".lower().replace("_", "-")
    s3.create_bucket(bucket, "eu-north-1")
    bkp_env.s3_tenant("moved", s3, region="eu-central-1", bucket=bucket, create=False)
    done = bkp_env.bkp("init", "moved")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "eu-north-1" in done.stdout + done.stderr
    listing = s3.client().list_objects_v2(Bucket=bucket)
    assert listing.get("KeyCount", 0) == 0  # nothing written


def test_three_destinations_in_one_run_and_one_failure_does_not_stop_others(bkp_env, sshd, s3):
    bkp_env.local_tenant("t-local")
    bkp_env.sftp_tenant("t-sftp", sshd)
    bkp_env.s3_tenant("t-s3", s3)
    bkp_env.local_tenant("t-broken")
    init, _ = bkp_env.bkp_json("init", "--all")
    assert {t["status"] for t in init["tenants"]} == {"initialised"}
    # break one tenant: its source disappears (an unmounted filesystem)
    import shutil
    shutil.rmtree(bkp_env.root / "data" / "t-broken")
    runs, _ = bkp_env.bkp_json("backup", "--all", "--jobs", "2", expect=1)
    by_tenant = {r["tenant"]: r for r in runs["runs"]}
    assert by_tenant["t-broken"]["status"] == "failed"
    assert "does not exist" in by_tenant["t-broken"]["error"]
    for t in ("t-local", "t-sftp", "t-s3"):
        assert by_tenant[t]["status"] == "ok", by_tenant[t]


def test_no_secret_in_output_catalog_or_logs(bkp_env, s3):
    bkp_env.s3_tenant("leaky", s3)
    bkp_env.bkp_json("init", "leaky")
    done = bkp_env.bkp("-vv", "backup", "leaky", "--json")
    assert done.returncode == 0, done.stderr
    catalog = (bkp_env.home / "catalog.db").read_bytes()
    for secret in (bkp_env.password, s3.secret_key):
        assert secret not in done.stdout and secret not in done.stderr
        assert secret.encode() not in catalog


def test_sftp_nightly_backup_refuses_a_changed_host_key_with_exit_4(bkp_env, sshd):
    bkp_env.sftp_tenant("swapped", sshd)
    bkp_env.bkp_json("init", "swapped")
    bkp_env.bkp_json("backup", "swapped")
    remote = Path(bkp_env.tenants["swapped"]["destination"]["path"])
    before = sorted(p.relative_to(remote) for p in remote.rglob("*"))
    dest = bkp_env.tenants["swapped"]["destination"]
    bkp_env.write_policy("swapped", {**dest, "host_key": sshd.other_host_key})
    done = bkp_env.bkp("backup", "swapped", "--json")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "host_key" in json.loads(done.stdout)["runs"][0]["error"]
    assert sorted(p.relative_to(remote) for p in remote.rglob("*")) == before  # untouched


def test_sftp_backup_without_init_says_what_to_do(bkp_env, sshd):
    bkp_env.sftp_tenant("sftp-new", sshd)
    done = bkp_env.bkp("backup", "sftp-new", "--json")
    assert done.returncode == 1
    assert "bkp init sftp-new" in json.loads(done.stdout)["runs"][0]["error"]


def test_an_unchanged_night_skips_forget_only_when_it_would_forget_nothing(bkp_env):
    bkp_env.local_tenant("lean", retention={"last": 3})
    bkp_env.bkp_json("init", "lean")
    calls = []
    for _ in range(4):
        report, _ = bkp_env.bkp_json("backup", "lean")
        run = report["runs"][0]
        calls.append(run["restic_calls"])
        assert run["status"] == "ok"
    # 1st: bkp does not know the repository's snapshots yet, so forget runs and tells it;
    # 2nd, 3rd: keep-last 3 keeps everything, so restic would forget nothing: skipped;
    # 4th: one snapshot too many, forget runs and removes it.
    assert calls == [2, 1, 1, 2]
    snapshots = json.loads(bkp_env.restic("lean", "snapshots", "--json").stdout)
    assert len(snapshots) == 3 and report["runs"][0]["snapshots_kept"] == 3


def test_a_pod_finds_its_parent_snapshot_by_the_stable_snapshot_host(bkp_env, tmp_path):
    # A pod's host name changes every night and its BKP_HOME starts empty: the manifest's
    # BKP_SNAPSHOT_HOST (the tenant id) is what restic records and finds the parent by.
    bkp_env.local_tenant("zorg-pod")
    bkp_env.bkp_json("init", "zorg-pod")
    ids = []
    for night in ("night-1", "night-2"):
        pod_home = tmp_path / night
        pod_home.mkdir(mode=0o700)
        runs, _ = bkp_env.bkp_json("backup", "zorg-pod", BKP_HOME=str(pod_home),
                                   BKP_SNAPSHOT_HOST="zorg-pod")
        ids.append(runs["runs"][0]["snapshot_id"])
    snaps = {s["short_id"]: s for s in json.loads(bkp_env.restic("zorg-pod", "snapshots",
                                                           "--json").stdout)}
    assert {s["hostname"] for s in snaps.values()} == {"zorg-pod"}
    assert snaps[ids[1][:8]]["parent"].startswith(ids[0])  # not a full rescan
