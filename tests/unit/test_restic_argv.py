"""restic argv builders and output parsing: pure, no process."""

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from bkp import restic, runner
from bkp.errors import OperationError, PolicyError
from bkp.policy import Destination, Policy, Retention
from bkp.runner import Completed
from bkp.secrets import SecretEnv

POLICY = Policy(tenant="acme", file=Path("acme.yaml"), purpose="zorg",
                classification="sensitive", sources=("/srv/a", "/srv/b"),
                destination=Destination(type="local", country="NL", path="/mnt/r"),
                exclude=("*.tmp",), password_file=Path("/etc/bkp/acme.key"),
                retention=Retention(last=3, daily=7, yearly=0))
REPO = restic.Repository(url="/mnt/r", options=("sftp.command=ssh x",),
                         env=SecretEnv({"RESTIC_PASSWORD": "hunter22"}, ("hunter22",)),
                         cache_dir=Path("/var/lib/bkp/cache/acme"))


def test_backup_argv_tags_sources_and_no_secret():
    argv = restic.backup_argv(REPO, POLICY, "host1")
    assert argv[:3] == ["restic", "--repo", "/mnt/r"]
    assert argv[-3:] == ["--", "/srv/a", "/srv/b"]
    for tag in ("tenant=acme", "purpose=zorg", "classification=sensitive"):
        assert argv[argv.index(tag) - 1] == "--tag"
    assert "--exclude" in argv and "*.tmp" in argv
    assert not any("hunter22" in a for a in argv)
    assert argv[3:5] == ["--option", "sftp.command=ssh x"]


def test_forget_argv_keeps_only_nonzero_rules_and_ungroups():
    argv = restic.forget_argv(REPO, "acme", POLICY.retention)
    assert argv[argv.index("--keep-last") + 1] == "3"
    assert argv[argv.index("--keep-daily") + 1] == "7"
    assert "--keep-yearly" not in argv
    assert argv[argv.index("--group-by") + 1] == ""
    assert "--prune" in argv and argv[argv.index("--tag") + 1] == "tenant=acme"


def test_parse_backup_summary_and_errors():
    out = "\n".join([
        '{"message_type":"status","percent_done":0.5}',
        '{"message_type":"error","error":{"message":"permission denied"},"item":"/srv/a/x"}',
        '{"message_type":"summary","files_new":2,"total_files_processed":5,'
        '"data_added":1234,"total_bytes_processed":9999,"snapshot_id":"abcd1234"}',
    ])
    s = restic.parse_backup_output(out)
    assert (s.snapshot_id, s.files, s.bytes_added, s.files_new) == ("abcd1234", 5, 1234, 2)
    assert s.errors == ("/srv/a/x: permission denied",)


def test_parse_forget_counts_kept_and_removed_even_with_prune_text_after():
    out = ('[{"keep":[{"id":"a","time":"2026-01-01T02:00:00Z"},{"id":"b","time":'
           '"2026-01-02T02:00:00Z"}],"remove":[{"id":"c"}]}]\nrepository contains 3 packs\n')
    result = restic.parse_forget_output(out)
    assert (result.kept, result.removed) == (2, 1)
    assert [s["id"] for s in result.kept_snapshots] == ["a", "b"]


def test_parse_version():
    v = restic.parse_version("restic 0.14.0 compiled with go1.19.8 on linux/amd64")
    assert str(v) == "0.14.0" and v.at_least(0, 14) and not v.at_least(0, 17)
    with pytest.raises(OperationError):
        restic.parse_version("something else")


@pytest.mark.parametrize("stderr, words", [
    ("Fatal: wrong password or no key found", "wrong repository password"),
    ("Fatal: unable to open config file: stat /x/config: no such file or directory\n"
     "Is there a repository at the following location?", "bkp init acme"),
    ("Fatal: unable to create lock in backend: repository is already locked by PID 7",
     "locked"),
    ("subprocess ssh: ssh: connect to host 10.0.0.1 port 22: Connection refused",
     "unreachable"),
    ("Host key verification failed.", "pinned host_key"),
])
def test_failures_become_one_line_with_what_to_do(stderr, words):
    done = Completed(["restic"], 1, "", stderr, 0.1)
    message = restic.explain_failure(done, REPO, "acme", "backup")
    assert words in message and "\n" not in message


def test_timeout_message_names_the_policy_key():
    done = Completed(["restic"], -9, "", "", 60.0, timed_out=True)
    assert "timeout_minutes" in restic.explain_failure(done, REPO, "acme", "backup")


# What restic 0.14 really prints for each fault (captured from corrupted test repositories),
# and the exit code bkp must give for it.
RESTIC_SAYS = [
    ("Fatal: load <index/1b13b220ba>: invalid data returned", "damage", 5),
    ("decrypting blob f13d0747 failed: ciphertext verification failed\n"
     "github.com/restic/restic/internal/repository.(*Repository).LoadBlob\n"
     "\tgithub.com/restic/restic/internal/repository/repository.go:303", "damage", 5),
    ("Pack ID does not match, want 5d62e605, got 352f5a54\nFatal: repository contains errors",
     "damage", 5),
    ("Fatal: config or key d575434e is damaged: ciphertext verification failed", "damage", 5),
    ("Fatal: Unmarshal: invalid character 'x' after object key", "damage", 5),
    ("pack 5d62e605 failed to download: StreamPack: open repo/data/5d/5d62: no such file or "
     "directory\nFatal: repository contains errors", "damage", 5),
    ("ignoring error for /data/a: ciphertext verification failed\nFatal: There were 1 errors",
     "damage", 5),
    ("latest snapshot for criteria not found: Error loading snapshot 8b12e9fa: load "
     "<snapshot/8b12e9fa8d>: invalid data returned", "damage", 5),
    ("Save(<lock/d22e3af9e1>) returned error, retrying after 552ms: open ro/repo/locks/d22-tmp:"
     " read-only file system\nunable to create lock in backend", "read_only", 1),
    ("Fatal: unable to save snapshot: write full/repo/data/70/7055-tmp: no space left on "
     "device", "full", 1),
    ("Fatal: unable to create lock in backend: repository is already locked by PID 7",
     "locked", 1),
    ("Fatal: wrong password or no key found", "wrong_password", 1),
    ("Host key verification failed.\nFatal: unable to open repository", "host_key", 4),
    ("Fatal: check flag --read-data-subset=n/t t must be at most 256", "unknown", 1),
    # restic 0.14 against `rclone serve restic` with TLS: a wrong user:password, a
    # certificate of an unknown CA, a server that is gone.
    ("Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized\n"
     "Is there a repository at the following location?\nrest:https://bkp:***@127.0.0.1:8443/t/",
     "rest_auth", 1),
    ("Fatal: create repository at rest:https://bkp:***@127.0.0.1:8443/t/ failed: Fatal: "
     "server response unexpected: 401 Unauthorized (401)", "rest_auth", 1),
    ("Fatal: create repository at rest:https://bkp:***@127.0.0.1:8443/t/ failed: Post "
     "\"https://bkp:***@127.0.0.1:8443/t/?create=true\": x509: certificate signed by unknown "
     "authority", "certificate", 4),
    ("Fatal: unable to open config file: client.Head: Head \"https://bkp:***@127.0.0.1:8444/t/"
     "config\": dial tcp 127.0.0.1:8444: connect: connection refused", "unreachable", 1),
]


@pytest.mark.parametrize("stderr, cause, code", RESTIC_SAYS)
def test_every_restic_failure_is_classified_from_its_cause(stderr, cause, code):
    done = Completed(["restic"], 1, "", stderr, 0.1)
    failure = restic.classify(done, REPO, "acme", "check")
    assert (failure.cause, failure.exit_code) == (cause, code)
    assert "\n" not in failure.message


def test_an_unknown_failure_is_never_called_damage():
    done = Completed(["restic"], 1, "", "Fatal: something nobody has seen before", 0.1)
    failure = restic.classify(done, REPO, "acme", "check")
    assert failure.exit_code == 1 and "something nobody has seen before" in failure.message


@pytest.mark.parametrize("line, stop", [
    ("Save(<lock/d2>) returned error, retrying after 1s: open x: read-only file system",
     "read_only"),
    ("write x: no space left on device", "full"),
    ("Permission denied (publickey).", None),  # an ssh refusal is its own cause, not hopeless
    ("Load(<data/5d>) returned error, retrying after 7s: connection refused", None),
])
def test_hopeless_causes_stop_restic_at_once(line, stop):
    assert restic.stop_on_hopeless(line) == stop


# ---------------------------------------------------------------- tags: values are values

def restic_splits(tags: list[str]) -> list[str]:
    """What restic 0.14 stores for `--tag T` flags: each split on ',', trimmed, empties
    dropped, in order (checked against real restic in tests/adversarial)."""
    return [part.strip() for tag in tags for part in tag.split(",") if part.strip()]


def hostile(purpose: str) -> Policy:
    from dataclasses import replace

    return replace(POLICY, purpose=purpose)


def test_a_comma_in_the_purpose_cannot_add_a_tenant_tag():
    stored = restic_splits(restic.tenant_tags(hostile("zorg,tenant=other")))
    assert "tenant=other" not in stored
    assert [tag for tag in stored if tag.startswith("tenant=")] == ["tenant=acme"]
    assert restic.parse_tags(stored) == {"tenant": "acme", "purpose": "zorg,tenant=other",
                                         "classification": "sensitive", "kind": "files"}


def test_a_dump_is_tagged_with_its_kind_and_database_and_latest_means_files():
    tags = restic.tenant_tags(POLICY, restic.KIND_DATABASE, database="zorgapp")
    assert {"kind=database", "database=zorgapp", "tenant=acme"} <= set(tags)
    assert restic.snapshot_selector("acme", None) == ["latest", "--tag",
                                                      "tenant=acme,kind=files"]
    assert restic.snapshot_group({"kind": None}) == ("files", None, None)
    assert restic.snapshot_group({"kind": "database", "database": "z",
                                   "database_type": "mariadb"}) == ("database", "z", "mariadb")


@pytest.mark.parametrize("purpose", [
    "zorg, dossiers", " leading and trailing ", "100% = honderd", "%2C", "é€ zorg",
    "a=b=c", "tenant=x", ",", "bkp-tags=1",
])
def test_every_purpose_survives_restics_tag_handling(purpose):
    tags = restic.tenant_tags(hostile(purpose))
    assert restic_splits(tags) == tags  # nothing for restic to split or trim
    assert restic.parse_tags(restic_splits(tags))["purpose"] == purpose


def test_tags_carry_their_scheme_version():
    tags = restic.tenant_tags(POLICY)
    assert "bkp-tags=2" in tags
    assert "tenant=acme" in tags and "purpose=zorg" in tags
    assert "classification=sensitive" in tags


def test_snapshots_written_before_the_scheme_are_read_as_they_were_written():
    assert restic.parse_tags(["tenant=acme", "purpose=zorg", "classification=normal"]) == {
        "tenant": "acme", "purpose": "zorg", "classification": "normal"}
    # The old format split a comma in the purpose into extra tags, in order: they are
    # joined back, and the injected tenant tag is not the snapshot's tenant.
    assert restic.parse_tags(["tenant=acme", "purpose=a", "tenant=other",
                              "classification=x", "classification=sensitive"]) == {
        "tenant": "acme", "purpose": "a,tenant=other,classification=x",
        "classification": "sensitive"}
    assert restic.parse_tags(["tenant=acme", "purpose=100%"])["purpose"] == "100%"


def test_ambiguous_or_unknown_tags_are_refused_not_guessed():
    with pytest.raises(restic.TagError, match="tenant"):
        restic.parse_tags(["manual", "tenant=acme", "tenant=other"])
    with pytest.raises(restic.TagError, match="tenant"):
        restic.parse_tags(["bkp-tags=2", "tenant=acme", "tenant=other"])
    with pytest.raises(restic.TagError, match="newer"):
        restic.parse_tags(["bkp-tags=3", "tenant=acme"])
    with pytest.raises(restic.TagError):
        restic.parse_tags(["bkp-tags=2", "tenant=acme", "purpose=%zz"])


def test_tags_without_a_value_or_of_someone_else_are_ignored():
    assert restic.parse_tags(["bkp-tags=2", "tenant=acme", "manual", "note"]) == {
        "tenant": "acme"}


def test_selectors_match_both_schemes_of_the_tenant_tag():
    for argv in (restic.forget_argv(REPO, "acme", POLICY.retention),
                 restic.snapshots_argv(REPO, "acme"),
                 restic.ls_argv(REPO, "acme", "1234abcd"),
                 restic.restore_argv(REPO, "acme", "1234abcd", Path("/tmp/t"))):
        # one --tag flag with one tag: restic ANDs within a flag and ORs between flags
        assert argv.count("--tag") == 1
        assert argv[argv.index("--tag") + 1] == "tenant=acme"
    # "latest" is the latest file snapshot (not a dump); snapshots older than kinds are
    # found by Restic.latest_files when this selects none.
    for argv in (restic.ls_argv(REPO, "acme", None),
                 restic.restore_argv(REPO, "acme", None, Path("/tmp/t"))):
        assert argv.count("--tag") == 1
        assert argv[argv.index("--tag") + 1] == "tenant=acme,kind=files"


def test_snapshot_list_names_each_snapshots_values_and_keeps_the_raw_tags():
    out = ('[{"id":"aa","time":"t","paths":["/a"],"hostname":"h",'
           '"tags":["bkp-tags=2","tenant=acme","purpose=a%2Cb","classification=normal"]}]')
    [snapshot] = restic.parse_snapshots(out)
    assert snapshot["tags"] == ["bkp-tags=2", "tenant=acme", "purpose=a%2Cb",
                                "classification=normal"]
    assert (snapshot["tenant"], snapshot["purpose"], snapshot["classification"]) == (
        "acme", "a,b", "normal")


def test_a_selector_is_refused_for_a_name_that_tags_would_encode():
    assert restic.snapshots_argv(REPO, "_evidence")[-1] == "tenant=_evidence"
    for name in ("acme,tenant=other", "a b", "acme\n"):
        with pytest.raises(PolicyError):
            restic.snapshots_argv(REPO, name)


# ---------------------------------------------------------------- REST: the credential is no argv

REST_PASSWORD = "Rest:pw@/#%20-never-printed"


def rest_repository() -> restic.Repository:
    env = restic.rest_location("https://[::1]:8443/acme/", "bkp", REST_PASSWORD)
    return restic.Repository(url="", env=env, cacert=Path("/etc/bkp/ca/b.pem"),
                             label="rest:https://[::1]:8443/acme")


def test_a_rest_location_carries_its_credential_encoded_in_restics_environment():
    env = rest_repository().env
    assert env.env == {"RESTIC_REPOSITORY":
                       "rest:https://bkp:Rest%3Apw%40%2F%23%2520-never-printed@[::1]:8443/acme/"}
    parsed = urlsplit(env.env["RESTIC_REPOSITORY"].removeprefix("rest:"))
    assert (unquote(parsed.username), unquote(parsed.password)) == ("bkp", REST_PASSWORD)
    assert parsed.path == "/acme/" and parsed.port == 8443
    for secret in (REST_PASSWORD, "Rest%3Apw%40%2F%23%2520-never-printed"):
        assert secret in env.secrets


def test_a_rest_repository_is_never_named_in_argv_and_its_ca_is():
    repo = rest_repository()
    for argv in (restic.init_argv(repo), restic.snapshots_argv(repo, "acme"),
                 restic.backup_argv(repo, POLICY, "host")):
        assert "--repo" not in argv and "-r" not in argv
        assert argv[1:3] == ["--cacert", "/etc/bkp/ca/b.pem"]
        assert not any("never-printed" in a or "[::1]" in a for a in argv)


def test_a_repository_needs_a_location():
    with pytest.raises(ValueError):
        restic.Repository(url="")


def test_restic_messages_about_a_rest_location_are_redacted():
    repo = rest_repository()
    location = repo.env.env["RESTIC_REPOSITORY"]
    text = runner.redact(f"Fatal: at {location} or {REST_PASSWORD} failed", repo.env.secrets)
    assert "never-printed" not in text and "Rest" not in text
    done = Completed(["restic"], 1, "", f"Fatal: create repository at {location} failed: "
                                         "x509: certificate signed by unknown authority", 0.1)
    failure = restic.classify(done, repo, "acme", "init")
    assert failure.exit_code == 4 and "rest:https://[::1]:8443/acme" in failure.message
