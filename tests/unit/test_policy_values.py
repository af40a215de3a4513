"""Hostile values in a policy: full-match patterns, control characters, one repository
spelled two ways, repositories inside sources, healthcheck transport, secret file modes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from bkp.errors import PolicyError, UsageError
from bkp.policy import Destination, load_policies, validate_files
from bkp.secrets import check_private_file
from tests.unit.test_policy import (
    errors_at,
    local_policy,
    only_error_at,
    report_for,
    s3_policy,
    secret_file,
    sftp_policy,
    ssh_key_line,
    write_policy,
)

# --- full-match patterns --------------------------------------------------------------------


def test_a_tenant_id_with_a_trailing_newline_is_refused(tmp_path):
    # Python's `$` matches before a final newline and jsonschema searches with re.search:
    # the file "acme\n.yaml" with tenant "acme\n" used to validate.
    policy = s3_policy(tmp_path, "acme")
    policy["tenant"] = "acme\n"
    problem = only_error_at(report_for(tmp_path, policy, "acme\n.yaml"), "tenant")
    assert "a-z, 0-9 and '-'" in problem.message


@pytest.mark.parametrize("key, value", [
    ("host", "backup01.example.nl\n"),
    ("user", "bkp\n"),
])
def test_every_patterned_value_is_matched_in_full(tmp_path, key, value):
    policy = sftp_policy(tmp_path)
    policy["destination"][key] = value
    assert errors_at(report_for(tmp_path, policy), f"destination.{key}")


def test_a_country_with_a_trailing_newline_is_refused_as_a_country(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"]["country"] = "NL\n"
    problem = only_error_at(report_for(tmp_path, policy), "destination.country")
    assert "ISO 3166-1" in problem.message


def test_password_env_with_a_trailing_newline_is_refused(tmp_path):
    policy = local_policy(tmp_path)
    policy["password_env"] = "BKP_PW\n"
    assert errors_at(report_for(tmp_path, policy), "password_env")


# --- control characters ---------------------------------------------------------------------

@pytest.mark.parametrize("path, value", [
    (("purpose",), "zorg\ntenant=other"),
    (("description",), "ACME\r\nX-Injected: yes"),
    (("sources", 0), "/srv/tenants/acme\n/etc"),
    (("exclude", 0), "*.tmp\x00"),
    (("password_file",), "/etc/bkp/secrets/acme.key\nIdentityFile /root/.ssh/id"),
    (("destination", "credentials_file"), "/etc/bkp/x\x1b[2J"),
    (("monitoring", "healthcheck_url"), "https://hc-ping.com/abc\u2028def"),
    (("destination", "prefix"), "bkp\x7f"),
])
def test_control_characters_in_any_value_are_refused(tmp_path, path, value):
    policy = s3_policy(tmp_path)
    policy.setdefault("monitoring", {"healthcheck_url": "https://hc-ping.com/abc"})
    target = policy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    report = report_for(tmp_path, policy)
    dotted = ".".join(str(key) for key in path)
    assert any("control character" in p.message for p in errors_at(report, dotted)), \
        report.describe()


def test_an_identity_file_with_a_newline_cannot_reach_the_ssh_config(tmp_path):
    policy = sftp_policy(tmp_path)
    policy["destination"]["identity_file"] += "\nProxyCommand touch /tmp/owned"
    report = report_for(tmp_path, policy)
    assert not report.valid
    assert errors_at(report, "destination.identity_file")


def test_a_space_or_percent_in_a_value_is_still_a_value(tmp_path):
    policy = s3_policy(tmp_path)
    policy["purpose"] = "zorgdossiers, 100% wettelijk = verplicht"
    policy["sources"] = ["/srv/tenants/acme zorg/50% files"]
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()
    assert report.policy.purpose == "zorgdossiers, 100% wettelijk = verplicht"


def test_a_malformed_tenant_argument_is_a_usage_error(tmp_path):
    write_policy(tmp_path, s3_policy(tmp_path, "acme"))
    with pytest.raises(UsageError, match="not a tenant id"):
        load_policies(tmp_path, ["acme\n"])
    with pytest.raises(UsageError, match="not a tenant id"):
        load_policies(tmp_path, ["../acme"])


# --- one repository, two spellings ----------------------------------------------------------

def identity(**values) -> tuple:
    return Destination(**values).repository_identity()


@pytest.mark.parametrize("one, other", [
    (dict(host="backup01.example.nl"), dict(host="BACKUP01.Example.NL.")),
    (dict(host="backup01.example.nl"), dict(host="backup01.example.nl", port=22)),
    (dict(path="/srv/backup/acme"), dict(path="/srv//backup/./x/../acme/")),
    (dict(path="/srv/backup/acme"), dict(path="//srv/backup/acme")),
    (dict(host="::1"), dict(host="[0:0::1]")),
])
def test_sftp_repository_identity_is_normalised(one, other):
    base = dict(type="sftp", country="NL", host="backup01.example.nl", user="bkp",
                path="/srv/backup/acme")
    assert identity(**{**base, **one}) == identity(**{**base, **other})


@pytest.mark.parametrize("one, other", [
    (dict(endpoint="https://s3.example.eu"), dict(endpoint="HTTPS://S3.Example.EU.:443/")),
    (dict(endpoint="https://s3.example.eu"), dict(endpoint="https://s3.example.eu//")),
    (dict(endpoint="http://127.0.0.1"), dict(endpoint="http://127.0.0.1:80")),
    (dict(prefix="bkp/acme"), dict(prefix="/bkp//acme/")),
    (dict(prefix="bkp/acme"), dict(prefix="bkp/./acme")),
    (dict(prefix=""), dict(prefix="/")),
])
def test_s3_repository_identity_is_normalised(one, other):
    base = dict(type="s3", country="NL", endpoint="https://s3.example.eu", bucket="b",
                region="nl-ams", prefix="bkp")
    assert identity(**{**base, **one}) == identity(**{**base, **other})


@pytest.mark.parametrize("one, other", [
    (dict(type="sftp", host="a.example.nl", path="/x"),
     dict(type="sftp", host="b.example.nl", path="/x")),
    (dict(type="sftp", host="a.example.nl", path="/x"),
     dict(type="sftp", host="a.example.nl", path="/x", port=2222)),
    (dict(type="s3", endpoint="https://s3.example.eu", bucket="b", prefix="p"),
     dict(type="s3", endpoint="https://s3.example.eu:8443", bucket="b", prefix="p")),
    (dict(type="s3", endpoint="https://s3.example.eu", bucket="b", prefix="p"),
     dict(type="s3", endpoint="https://s3.example.eu", bucket="b", prefix="p/q")),
])
def test_different_repositories_keep_different_identities(one, other):
    assert identity(country="NL", **one) != identity(country="NL", **other)


def test_the_same_sftp_repository_spelled_two_ways_is_shared(tmp_path):
    first = write_policy(tmp_path, sftp_policy(tmp_path, "beta"))
    other = sftp_policy(tmp_path, "delta")
    other["destination"]["host"] = "BACKUP01.offsite.example.de."
    other["destination"]["port"] = 22
    other["destination"]["path"] = "/srv/backup//delta/../beta/."
    second = write_policy(tmp_path, other)
    reports = validate_files([first, second])
    assert "never share a repository" in only_error_at(reports[0], "destination").message
    assert "never share a repository" in only_error_at(reports[1], "destination").message


# --- a local repository inside a source -----------------------------------------------------

def test_a_local_repository_inside_its_own_source_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    policy = local_policy(tmp_path)
    policy["sources"] = [str(tmp_path / "data")]
    policy["destination"]["path"] = str(tmp_path / "data" / "backup")
    problem = only_error_at(report_for(tmp_path, policy), "destination.path")
    assert "inside" in problem.message and "sources" in problem.message


def test_a_source_inside_the_local_repository_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    policy = local_policy(tmp_path)
    policy["destination"]["path"] = str(tmp_path / "backup")
    policy["sources"] = [str(tmp_path / "backup" / "x" / ".." / "data")]
    assert errors_at(report_for(tmp_path, policy), "destination.path")


def test_a_local_repository_inside_another_tenants_source_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    victim = s3_policy(tmp_path, "acme")
    victim["sources"] = [str(tmp_path / "acme-data")]
    intruder = local_policy(tmp_path, "gamma")
    intruder["destination"]["path"] = str(tmp_path / "acme-data" / "stash")
    reports = validate_files([write_policy(tmp_path, victim), write_policy(tmp_path, intruder)])
    assert reports[0].valid, reports[0].describe()
    problem = only_error_at(reports[1], "destination.path")
    assert "acme" in problem.message


def test_a_symlinked_repository_inside_a_source_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    policy = local_policy(tmp_path)
    policy["sources"] = [str(tmp_path / "data")]
    policy["destination"]["path"] = str(tmp_path / "link" / "backup")
    assert errors_at(report_for(tmp_path, policy), "destination.path")


def test_a_repository_beside_the_source_is_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    policy = local_policy(tmp_path)
    policy["sources"] = [str(tmp_path / "data")]
    policy["destination"]["path"] = str(tmp_path / "data-backup")
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()


def test_a_source_inside_another_tenants_local_repository_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    keeper = local_policy(tmp_path, "gamma")
    keeper["destination"]["path"] = str(tmp_path / "backup" / "gamma")
    intruder = local_policy(tmp_path, "delta")
    intruder["sources"] = [str(tmp_path / "backup" / "gamma" / "data")]
    intruder["destination"]["path"] = str(tmp_path / "backup" / "delta")
    reports = validate_files([write_policy(tmp_path, keeper), write_policy(tmp_path, intruder)])
    problem = only_error_at(reports[0], "destination.path")
    assert "tenant delta" in problem.message and "inside the repository" in problem.message
    assert reports[1].valid, reports[1].describe()


def test_the_rules_between_files_cost_each_path_once_however_many_tenants(tmp_path,
                                                                         monkeypatch):
    """A thousand tenants with local repositories: every command reads every policy (a
    repository inside another tenant's source can only be told so), so comparing each pair
    of tenants' paths, resolved again for every pair, made one tenant's command cost a
    minute. Each path is resolved a bounded number of times per policy."""
    import os

    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    files = []
    for index in range(120):
        policy = local_policy(tmp_path, f"t{index:03d}")
        policy["sources"] = [str(tmp_path / "data" / f"t{index:03d}")]
        policy["destination"]["path"] = str(tmp_path / "backup" / f"t{index:03d}")
        files.append(write_policy(tmp_path, policy))
    calls = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda *a, **k: calls.append(1) or real(*a, **k))
    reports = validate_files(files)
    assert all(report.valid for report in reports)
    assert len(calls) <= 8 * len(files), len(calls)


# --- healthcheck transport ------------------------------------------------------------------

def test_plain_http_healthcheck_to_a_remote_host_is_refused(tmp_path):
    policy = s3_policy(tmp_path)
    policy["monitoring"] = {"healthcheck_url": "http://hc-ping.com/abc"}
    problem = only_error_at(report_for(tmp_path, policy), "monitoring.healthcheck_url")
    assert "plain http" in problem.message and "https" in problem.message


@pytest.mark.parametrize("url", ["https://hc-ping.com/abc", "http://127.0.0.1:8000/ping/x",
                                 "http://localhost/ping/x", "http://[::1]:9/x"])
def test_https_or_loopback_healthchecks_are_accepted(tmp_path, url):
    policy = s3_policy(tmp_path)
    policy["monitoring"] = {"healthcheck_url": url}
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()


# --- one rule for secret files --------------------------------------------------------------

def test_validator_and_run_time_apply_one_rule_to_secret_files(tmp_path):
    policy = s3_policy(tmp_path)
    secret = Path(policy["password_file"])
    path = write_policy(tmp_path, policy)
    disagreements = []
    for mode in range(0o400, 0o1000):  # every mode the owner can read
        secret.chmod(mode)
        try:
            check_private_file(secret, "password_file")
            refusal = None
        except PolicyError as exc:
            refusal = str(exc)
        validator = [p.message for p in errors_at(validate_files([path])[0], "password_file")]
        private = stat.S_IMODE(secret.stat().st_mode) & 0o077 == 0
        if validator != ([refusal] if refusal else []) or (refusal is None) != private:
            disagreements.append((oct(mode), validator, refusal))
    assert disagreements == []


def test_a_0610_password_file_is_refused_by_the_validator(tmp_path):
    policy = s3_policy(tmp_path)
    Path(policy["password_file"]).chmod(0o610)
    problem = only_error_at(report_for(tmp_path, policy), "password_file")
    assert f"chmod 600 {policy['password_file']}" in problem.message


# --- bkp.yaml: the same rules for the installation's values ----------------------------------

def validate_settings(tmp_path: Path, document: dict):
    from bkp import installation

    path = tmp_path / "bkp.yaml"
    path.write_text(yaml.safe_dump(document))
    return installation.validate(path)


def test_settings_healthcheck_follows_the_transport_rule(tmp_path):
    report = validate_settings(tmp_path, {"monitoring": {"healthcheck_url": "http://hc.eu/x"}})
    assert any("plain http" in p.message for p in errors_at(report, "monitoring.healthcheck_url"))


@pytest.mark.parametrize("document, path", [
    ({"organization": "Example bv\nForged: line"}, "organization"),
    ({"monitoring": {"prometheus_textfile": "/var/lib/x.prom\n/etc/y"}},
     "monitoring.prometheus_textfile"),
])
def test_settings_values_are_one_line(tmp_path, document, path):
    assert errors_at(validate_settings(tmp_path, document), path)


def test_settings_evidence_destination_patterns_match_in_full(tmp_path):
    identity = Path(secret_file(tmp_path, "id"))
    report = validate_settings(tmp_path, {"evidence": {
        "destination": {"type": "sftp", "country": "NL", "host": "backup01.example.nl\n",
                        "user": "bkp", "path": "/srv/evidence", "host_key": ssh_key_line(),
                        "identity_file": str(identity)},
        "password_env": "BKP_EVIDENCE_PW"}})
    assert errors_at(report, "evidence.destination.host")


def sftp_inbox(tmp_path: Path, **values) -> dict:
    inbox = {"type": "sftp", "country": "NL", "host": "inbox.example.nl", "user": "bkp",
             "path": "/srv/bkp-inbox", "host_key": ssh_key_line(),
             "identity_file": secret_file(tmp_path, "inbox_ed25519")}
    inbox.update(values)
    return {"results": {"inbox": {k: v for k, v in inbox.items() if v is not None},
                        "keys": str(tmp_path / "keys")}}


def test_an_sftp_results_inbox_is_accepted_with_a_destination_s_rules(tmp_path):
    report = validate_settings(tmp_path, sftp_inbox(tmp_path))
    assert not report.errors and not report.warnings, report.describe()


@pytest.mark.parametrize("values, path, says", [
    ({"host_key": None}, "results.inbox.host_key", "host_key"),
    ({"country": "US"}, "results.inbox.country", "outside the EEA"),
    ({"identity_file": None}, "results.inbox.identity_file", "identity_file"),
    ({"host": "inbox.example.nl\n"}, "results.inbox.host", ""),
    ({"port": 0}, "results.inbox.port", ""),
])
def test_an_sftp_results_inbox_breaking_a_destination_rule_is_refused(tmp_path, values,
                                                                      path, says):
    report = validate_settings(tmp_path, sftp_inbox(tmp_path, **values))
    problems = errors_at(report, path)
    assert problems and all(says in p.message for p in problems), report.describe()


def test_an_sftp_results_inbox_key_open_to_others_is_refused(tmp_path):
    document = sftp_inbox(tmp_path)
    Path(document["results"]["inbox"]["identity_file"]).chmod(0o644)
    problem = only_error_at(validate_settings(tmp_path, document),
                            "results.inbox.identity_file")
    assert "chmod 600" in problem.message
