"""Attacks on copies at other sites (`copies:`): a copy that is the destination spelled
another way, one server claimed as two sites, a copy that silently holds nothing new, a
killed copy, and the rclone remote's configuration coming from anywhere but bkp."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from tests.adversarial.test_home_faults import remount_read_only, small_filesystem
from tests.conftest import BkpEnv
from tests.helpers import big_file, popen_bkp, wait_until

pytestmark = pytest.mark.integration


def with_copies(env: BkpEnv, tenant: str, destination_site: str | None, *copies: dict) -> None:
    path = env.policies / f"{tenant}.yaml"
    doc = yaml.safe_load(path.read_text())
    if destination_site:
        doc["destination"]["site"] = destination_site
    doc["copies"] = list(copies)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def rest_credentials(env: BkpEnv) -> str:
    path = env.root / "rest-credentials"
    path.write_text("bkp:a-long-rest-password\n")
    path.chmod(0o600)
    return str(path)


def rest_destination(env: BkpEnv, url: str, **keys) -> dict:
    return {"type": "rest", "country": "NL", "url": url,
            "credentials_file": rest_credentials(env), **keys}


def validate(env: BkpEnv):
    return env.bkp("policy", "validate")


# ------------------------------------------------------------------ site rule

@pytest.mark.parametrize("spelling", ["{path}", "{path}/", "{parent}/./{name}",
                                      "{parent}//{name}", "{parent}/x/../{name}"])
def test_a_copy_that_is_the_destination_under_another_site_name_is_invalid(bkp_env,
                                                                             spelling):
    """Named sites decide between two places, never between one repository and itself: a
    'copy' in the destination's own repository copies nothing and its drill passes on the
    destination's data."""
    env = bkp_env
    env.local_tenant("spiegel")
    path = env.root / "offsite" / "spiegel"
    copy_path = spelling.format(path=path, parent=path.parent, name=path.name)
    with_copies(env, "spiegel", "site-a",
                {"type": "local", "country": "NL", "site": "site-b", "path": copy_path})
    done = validate(env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "copies.0" in done.stdout and "same repository as destination" in done.stdout, \
        done.stdout
    assert "Traceback" not in done.stderr


def test_two_copies_in_one_repository_are_invalid(bkp_env):
    env = bkp_env
    env.local_tenant("tweeling")
    (env.root / "elders").mkdir()
    twin = {"type": "local", "country": "NL", "path": str(env.root / "elders" / "tweeling")}
    with_copies(env, "tweeling", "site-a", {**twin, "id": "b", "site": "site-b"},
                {**twin, "id": "c", "site": "site-c"})
    done = validate(env)
    assert done.returncode == 3 and "copies.1" in done.stdout \
        and "same repository as copy b" in done.stdout, done.stdout


@pytest.mark.parametrize("first, second", [
    ("https://backup.example.nl:8000/a", "https://BACKUP.example.nl.:8000/b"),
    ("https://[2001:db8::1]:8000/a", "https://[2001:db8:0:0::1]:8000/b"),
    ("http://localhost:8000/a", "http://127.0.0.1:8000/b"),
    ("http://127.0.0.1:8000/a", "http://[::ffff:127.0.0.1]:8000/b"),
    ("http://127.0.0.1:8000/a", "http://127.0.0.2:8000/b"),
])
def test_one_rest_server_is_one_site_however_it_is_spelled(bkp_env, first, second):
    """Without named sites the hosts decide: one machine spelled two ways is one site."""
    env = bkp_env
    env.write_policy("eenserver", rest_destination(env, first))
    with_copies(env, "eenserver", None, rest_destination(env, second))
    done = validate(env)
    assert done.returncode == 3 and "copies.0.site: at the same site as destination" in \
        done.stdout, done.stdout


def test_one_rest_server_cannot_be_declared_two_sites(bkp_env):
    """Site names are the operator's word for two places; one server (host and port) is one
    place whatever the names say."""
    env = bkp_env
    env.write_policy("tweenamen", rest_destination(env, "https://backup.example.nl/a",
                                                   site="ams-1"))
    with_copies(env, "tweenamen", None,
                rest_destination(env, "https://Backup.Example.NL.:443/b", site="fra-1"))
    done = validate(env)
    assert done.returncode == 3 and "copies.0.site: at the same site as destination" in \
        done.stdout, done.stdout


# ------------------------------------------------------------------ a copy cut short

def local_copy(env: BkpEnv, tenant: str) -> dict:
    (env.root / "site-b").mkdir(exist_ok=True)
    return {"type": "local", "country": "NL", "site": "site-b", "id": "b",
            "path": str(env.root / "site-b" / tenant)}


def restic_copy_pid(tenant: str) -> int | None:
    """The pid of a restic copying into the tenant's copy (its path names the tenant)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = [a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0")]
        except OSError:
            continue
        if args and args[0].endswith("restic") and "copy" in args \
                and any(f"site-b/{tenant}" in a for a in args):
            return int(cmdline.parent.name)
    return None


def copy_lag(env: BkpEnv, tenant: str) -> dict:
    status, _ = env.bkp_json("status", tenant, expect=None)
    [lag] = status["tenants"][0]["copies"]
    return lag


def originals_at_copy(env: BkpEnv, tenant: str) -> set[str]:
    listed = env.bkp_json("snapshots", tenant, "--copy", "b")[0]["snapshots"]
    return {(s.get("original") or s["id"])[:8] for s in listed}


@pytest.mark.parametrize("victim", ["bkp", "restic", "bkp-killed"])
def test_a_copy_cut_short_is_behind_in_status_and_the_next_night_fills_it(bkp_env, victim):
    """bkp stopped (SIGTERM) or its restic killed (SIGKILL) while copying: the primary
    holds tonight's snapshot and the copy does not, so status must not say the copy is up
    to date, and the next night copies it."""
    env = bkp_env
    tenant = f"afgebroken-{victim}"
    env.local_tenant(tenant)
    with_copies(env, tenant, "site-a", local_copy(env, tenant))
    env.bkp_json("init", tenant)
    first, _ = env.bkp_json("backup", tenant)
    assert first["runs"][0]["copies"][0]["status"] == "ok"
    big_file(env.root / "data" / tenant / "big.bin", 96)
    running = popen_bkp(env, "backup", tenant, "--json")
    try:
        wait_until(lambda: running.poll() is not None or restic_copy_pid(tenant),
                   what="restic to copy")
        pid = restic_copy_pid(tenant)
        assert pid, "the copy finished before it could be cut short"
        if victim == "bkp":
            running.send_signal(signal.SIGTERM)
        elif victim == "bkp-killed":  # no record at all, and its restic dies with it
            running.kill()
            os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        out, err = running.communicate(timeout=600)
    assert running.returncode != 0 and "Traceback" not in err, out + err
    listed = env.bkp_json("snapshots", tenant)[0]["snapshots"]
    tonight = max(listed, key=lambda s: s["time"])["id"]
    assert tonight[:8] != first["runs"][0]["snapshot_id"][:8]
    assert tonight[:8] not in originals_at_copy(env, tenant)
    lag = copy_lag(env, tenant)
    assert lag["lag_snapshots"] >= 1 and not lag["ok"], lag
    fixed, _ = env.bkp_json("backup", tenant)
    assert fixed["runs"][0]["copies"][0]["status"] == "ok", fixed
    assert tonight[:8] in originals_at_copy(env, tenant)
    lag = copy_lag(env, tenant)
    assert lag["lag_snapshots"] == 0 and lag["ok"], lag


# ------------------------------------------------------------------ a copy that is not last night's

def night(env: BkpEnv, tenant: str, number: int, expect: int = 0) -> dict:
    (env.root / "data" / tenant / f"night-{number}.txt").write_text(str(number))
    document, _ = env.bkp_json("backup", tenant, expect=expect)
    return document["runs"][0]


def test_a_copy_wiped_and_initialised_again_gets_everything_back(bkp_env):
    """Someone re-created the copy's repository (same password): bkp's record says it holds
    last night's snapshots, the repository holds nothing; the next night must leave it
    holding what the keep rules keep, and say so truthfully."""
    env = bkp_env
    env.local_tenant("gewist", retention={"last": 2})
    with_copies(env, "gewist", "site-a", local_copy(env, "gewist"))
    env.bkp_json("init", "gewist")
    made = [night(env, "gewist", n) for n in range(2)]
    copy = env.root / "site-b" / "gewist"
    shutil.rmtree(copy)
    done = env.restic_at(copy, env.secrets / "gewist.key", "init")
    assert done.returncode == 0, done.stderr
    made.append(night(env, "gewist", 2))
    [result] = made[-1]["copies"]
    assert result["status"] == "ok", made[-1]
    assert originals_at_copy(env, "gewist") == {r["snapshot_id"][:8] for r in made[1:]}
    assert result["snapshots_kept"] == 2, result
    made.append(night(env, "gewist", 3))
    assert made[-1]["copies"][0]["status"] == "ok", made[-1]
    assert originals_at_copy(env, "gewist") == {r["snapshot_id"][:8] for r in made[2:]}


def test_a_copy_swapped_for_a_repository_with_another_password_fails_the_run(bkp_env):
    env = bkp_env
    env.local_tenant("geruild")
    with_copies(env, "geruild", "site-a", local_copy(env, "geruild"))
    env.bkp_json("init", "geruild")
    night(env, "geruild", 0)
    copy = env.root / "site-b" / "geruild"
    shutil.rmtree(copy)
    stranger = env.root / "stranger.key"
    stranger.write_text("a-password-bkp-does-not-know\n")
    done = env.restic_at(copy, stranger, "init")
    assert done.returncode == 0, done.stderr
    failed = night(env, "geruild", 1, expect=1)
    assert failed["status"] == "failed" and "copy b" in failed["error"], failed
    assert failed["copies"][0]["status"] == "failed"
    lag = copy_lag(env, "geruild")
    assert lag["lag_snapshots"] == 1 and not lag["ok"], lag


# ------------------------------------------------------------------ a copy's disk

def test_a_full_copy_disk_fails_the_run_naming_the_copy_and_the_cause(bkp_env):
    env = bkp_env
    env.local_tenant("volschijf")
    with small_filesystem(env.root / "copydisk", size="6m") as disk:
        with_copies(env, "volschijf", "site-a",
                    {"type": "local", "country": "NL", "site": "site-b", "id": "b",
                     "path": str(disk / "volschijf")})
        env.bkp_json("init", "volschijf")
        big_file(env.root / "data" / "volschijf" / "big.bin", 12)
        document, _ = env.bkp_json("backup", "volschijf", expect=1)
        run = document["runs"][0]
        [copy] = run["copies"]
        assert copy["status"] == "failed" and "copy b" in copy["error"], run
        assert "no space left" in copy["error"], copy["error"]
        assert run["snapshot_id"][:8] in {
            s["id"][:8] for s in env.bkp_json("snapshots", "volschijf")[0]["snapshots"]}


def test_a_read_only_copy_disk_is_called_read_only(bkp_env):
    env = bkp_env
    env.local_tenant("alleenlezen")
    with small_filesystem(env.root / "rodisk") as disk:
        with_copies(env, "alleenlezen", "site-a",
                    {"type": "local", "country": "NL", "site": "site-b", "id": "b",
                     "path": str(disk / "alleenlezen")})
        env.bkp_json("init", "alleenlezen")
        remount_read_only(disk)
        document, _ = env.bkp_json("backup", "alleenlezen", expect=1)
    [copy] = document["runs"][0]["copies"]
    assert copy["status"] == "failed" and "read-only" in copy["error"], copy


# ------------------------------------------------------------------ EEA

@pytest.mark.parametrize("endpoint, region", [
    ("https://s3.us-east-1.amazonaws.com", "eu-central-1"),
    ("https://s3.eu-central-1.amazonaws.com.", "us-east-1"),
    ("https://bucket.s3.us-west-2.amazonaws.com", "eu-west-1"),
    ("https://S3.US-EAST-1.AMAZONAWS.COM:443", "eu-central-1"),
    ("https://s3.ca-central-1.wasabisys.com", "eu-central-1"),
])
def test_a_copy_outside_the_eea_by_its_endpoint_is_invalid(bkp_env, endpoint, region):
    env = bkp_env
    credentials = env.root / "s3-credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n"
                           "aws_secret_access_key = secretsecretsecret\n")
    credentials.chmod(0o600)
    env.local_tenant("buitenland")
    with_copies(env, "buitenland", "site-a",
                {"type": "s3", "country": "DE", "site": "site-b", "endpoint": endpoint,
                 "bucket": "buitenland", "region": region,
                 "credentials_file": str(credentials)})
    done = validate(env)
    assert done.returncode == 3 and "copies.0" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr
