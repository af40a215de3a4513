"""Hostile policy values, generated: whatever validates must come back unchanged from every
outlet it reaches (restic tags, file and lock names, the crontab read by cron and /bin/sh,
the systemd unit) and must never add an entry, a tag or a setting of its own.

What does not validate must be refused with a report, never a traceback."""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bkp import locks, names, restic
from bkp.errors import PolicyError
from bkp.policy import Policy, validate_file
from bkp.tenants.schedule import Installation, render_cron, render_systemd
from tests.unit.test_policy import ssh_key_line
from tests.unit.test_restic_argv import restic_splits
from tests.unit.test_schedule import cron_command, cron_entries, parsed_unit, recording_bkp

SETTINGS = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# What breaks formats (separators, quotes, shell, cron and systemd syntax, escapes), any
# printable character, and (in one value of eight) what breaks lines: so that many examples
# validate and still carry every kind of syntax into the outlets.
SEPARATORS = list(",= %'\"\\$")  # restic's tag split, key=value, quoting, cron, shell
SYNTAX = list("`;&|*?[]{}()<>#~!/.:-_@+é€")
LINE_BREAKERS = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028"]
printable = st.one_of(st.sampled_from(SEPARATORS), st.sampled_from(SYNTAX),
                      st.sampled_from("abcxyz019"),
                      st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")))
hostile = st.one_of(printable, st.sampled_from(LINE_BREAKERS))


def values(excluded: str = "", min_size: int = 0):
    """Text built from pieces, so that separators and syntax are frequent (hypothesis' own
    text strategy rarely draws a ',' among all of Unicode); one value in eight may also
    carry a line breaker."""
    syntax = [c for c in SEPARATORS + SYNTAX if c not in excluded]
    plain = st.text(printable.filter(lambda c: c not in excluded), max_size=4)
    clean = st.one_of(st.sampled_from(syntax), plain)
    broken = st.one_of(clean, st.sampled_from(LINE_BREAKERS))

    def joined(pieces):
        return st.lists(pieces, min_size=1, max_size=8).map("".join).filter(
            lambda v: len(v) >= min_size)

    return weighted(joined(clean), joined(broken), 7)


def weighted(usual, rare, times: int):
    """`usual` `times` as often as `rare` (one_of would draw them alike)."""
    return st.integers(0, times).flatmap(lambda n: rare if n == 0 else usual)


text = values(min_size=1)
segment = values(excluded="/", min_size=1)
paths = st.lists(segment, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
tenants = weighted(st.from_regex(names.TENANT_ID, fullmatch=True), text, 3)
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
    st.sampled_from(["https", "http", "HTTPS", "ftp"]),
    st.sampled_from(["127.0.0.1", "localhost", "hc-ping.com", "[::1]", "10.0.0.1",
                     "example.eu."]),
    st.sampled_from(["", ":8000", ":x"]), values())


def write(directory: Path, doc: dict) -> tuple[Path, dict]:
    """The policy file, and the values as YAML gives them back (YAML folds some line
    breaks, such as NEL, into spaces: the loaded value is the one bkp sees)."""
    tenant = doc["tenant"]
    stem = tenant if isinstance(tenant, str) and _usable_file_name(f"{tenant}.yaml") else "x"
    path = directory / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path, yaml.safe_load(path.read_text(encoding="utf-8"))


def fresh(tmp_path: Path) -> Path:
    """A folder of its own for one example (tmp_path is shared by all of them)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _usable_file_name(name: str) -> bool:
    try:
        names.file_name(name, "policy")
    except PolicyError:
        return False
    return len(name.encode()) < 200


def local_policy(tmp_path: Path, **values) -> dict:
    doc = {"tenant": "acme", "purpose": "zorgdossiers", "classification": "sensitive",
           "description": "ACME", "sources": ["/srv/acme"], "exclude": ["*.tmp"],
           "destination": {"type": "local", "country": "NL", "path": "/mnt/backup/acme"},
           "password_env": "BKP_PW", "retention": {"last": 3}}
    doc.update(values)
    return doc


def validated(directory: Path, doc: dict) -> tuple[Policy | None, dict]:
    path, loaded = write(directory, doc)
    report = validate_file(path)
    assert report.valid == (report.policy is not None)
    assert not any("internal error" in p.message for p in report.errors), report.describe()
    event("policy valid" if report.valid else "policy refused")
    return report.policy, loaded


# ------------------------------------------------------------------ tags

def assert_tags_round_trip(policy: Policy) -> None:
    tags = restic.tenant_tags(policy)
    stored = restic_splits(tags)
    assert stored == tags, "restic would split, trim or drop a tag"
    assert [t for t in stored if t.startswith("tenant=")] == [f"tenant={policy.tenant}"]
    assert restic.parse_tags(stored) == {"tenant": policy.tenant, "purpose": policy.purpose,
                                         "classification": policy.classification,
                                         "kind": "files"}


@SETTINGS
@given(tenant=tenants, purpose=text, description=text,
       classification=st.sampled_from(["normal", "sensitive"] * 3 + ["secret", "normal\n"]))
def test_tenant_and_purpose_round_trip_through_the_tags(tmp_path, tenant, purpose,
                                                       description, classification):
    policy, loaded = validated(fresh(tmp_path), local_policy(
        tmp_path, tenant=tenant, purpose=purpose, description=description,
        classification=classification))
    if policy is None:
        return
    assert (policy.purpose, policy.description) == (loaded["purpose"], loaded["description"])
    assert names.control_character(policy.purpose + policy.description) is None
    event("purpose with a comma" if "," in policy.purpose else "purpose without a comma")
    assert_tags_round_trip(policy)


# ------------------------------------------------------------------ file and lock names

@SETTINGS
@given(tenant=tenants)
def test_a_valid_tenant_names_files_and_locks_inside_their_folders_only(tmp_path, tenant):
    directory = fresh(tmp_path)
    policy, _ = validated(directory, local_policy(tmp_path, tenant=tenant))
    folder = directory / "home" / "locks"
    if policy is None:
        if not names.is_tenant_id(tenant):
            with pytest.raises(PolicyError):
                locks.tenant_lock(folder, tenant)
        return
    assert names.is_tenant_id(policy.tenant)
    assert names.child(directory, names.tenant_part(policy.tenant),
                       what="x").parent == directory
    with locks.tenant_lock(folder, policy.tenant):
        created = [p for p in (directory / "home").rglob("*") if p.is_file()]
    assert created == [folder / f"tenant-{policy.tenant}.lock"]


# ------------------------------------------------------------------ the schedule

def expected_writable(home: str, repository: str) -> list[str]:
    def normal(path: str) -> str:
        return "/" + posixpath.normpath("/" + path).lstrip("/")

    found = [normal(home)]
    if normal(repository) != normal(home):
        found.append(f"-{normal(repository)}")
    return found


@SETTINGS
@given(home=paths, policies=paths, repository=paths, source=paths, exclude=text,
       url=st.one_of(st.none(), urls))
def test_values_reach_cron_and_systemd_unchanged_or_not_at_all(tmp_path, home, policies,
                                                               repository, source, exclude,
                                                               url):
    doc = local_policy(tmp_path, sources=[source], exclude=[exclude],
                       destination={"type": "local", "country": "NL", "path": repository})
    if url is not None:
        doc["monitoring"] = {"healthcheck_url": url}
    directory = fresh(tmp_path)
    policy, loaded = validated(directory, doc)
    if policy is not None:  # the values bkp hands on are the values it read
        exclude, [source] = loaded["exclude"][0], loaded["sources"]
        repository = loaded["destination"]["path"]
        url = loaded.get("monitoring", {}).get("healthcheck_url")
        assert policy.exclude == (exclude,) and policy.sources == (source,)
        argv = restic.backup_argv(restic.Repository(url=repository), policy, "host")
        assert argv[argv.index("--exclude") + 1] == exclude and argv[-1] == source
    environment = (("BKP_HEALTHCHECK_URL", url),) if policy and url else ()
    inst = Installation(recording_bkp(directory / "venv bin"), Path(policies), Path(home),
                        writable=(Path(home), Path(repository)), environment=environment,
                        log=directory / "bkp.log")
    if any(names.control_character(v) for v in (home, policies, repository)):
        for render in (render_cron, render_systemd):
            with pytest.raises(PolicyError):
                render(inst)
        return

    # pathlib already reads "/a/." as "/a": the installation carries the Path's text.
    expected_env = {"BKP_POLICIES": str(Path(policies)), "BKP_HOME": str(Path(home)),
                    **dict(environment)}
    [entry] = cron_entries(render_cron(inst))  # one entry, whatever the values
    record = directory / "record.json"
    subprocess.run(["/bin/sh", "-c", cron_command(entry)], check=True, timeout=60,
                   env={"PATH": os.environ["PATH"], "RECORD": str(record)})
    assert json.loads(record.read_text()) == {"argv": ["run"], "env": expected_env}

    unit = parsed_unit(inst)
    assert unit["env"] == expected_env
    assert unit["exec"] == [str(inst.bkp), "run"]
    assert unit["writable"] == expected_writable(home, repository)


# ------------------------------------------------------------------ host keys

@SETTINGS
@given(suffix=st.one_of(st.just(""), values().map(lambda t: " " + t)),
       key_type=st.sampled_from(["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"]))
def test_a_valid_host_key_is_one_known_hosts_entry(tmp_path, suffix, key_type):
    directory = fresh(tmp_path)
    identity = directory / "id"
    identity.write_text("k")
    identity.chmod(0o600)
    line = ssh_key_line(key_type) + suffix
    doc = local_policy(tmp_path, destination={
        "type": "sftp", "country": "NL", "host": "backup01.example.nl", "user": "bkp",
        "path": "/srv/backup/acme", "host_key": line, "identity_file": str(identity)})
    policy, loaded = validated(directory, doc)
    if policy is None:
        return
    line = loaded["destination"]["host_key"]
    assert policy.destination.host_key == line
    key_type_read, key = line.split()[:2]  # what bkp writes into its known_hosts
    entry = f"bkp-acme {key_type_read} {key}\n"
    assert entry.count("\n") == 1 and names.control_character(entry[:-1]) is None
