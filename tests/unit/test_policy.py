"""Policy validation: schema, cross-field rules, cross-file rules, loading."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from bkp.errors import PolicyError
from bkp.policy import (
    Destination,
    Policy,
    PolicyReport,
    Problem,
    host_key_problem,
    load_policies,
    load_policy,
    policy_files,
    schema,
    validate_file,
    validate_files,
)


@functools.cache
def _real_key_blob(key_type: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    # The same key every time: test ids (and pytest-xdist's workers) see the same lines.
    if key_type == "ssh-ed25519":
        public = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    elif key_type == "ssh-rsa":
        public = rsa.RSAPublicNumbers(65537, 2 ** 2047 + 2 ** 1000 + 1).public_key()
    else:
        public = ec.derive_private_key(4711, ec.SECP256R1()).public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()
    return line.split()[1]


def ssh_key_line(key_type: str = "ssh-ed25519", embedded: str | None = None) -> str:
    """A real OpenSSH public key line; with `embedded`, a key of that type under the name
    `key_type` (a damaged or mixed line)."""
    return f"{key_type} {_real_key_blob(embedded or key_type)}"


def secret_file(directory: Path, name: str, mode: int = 0o600) -> str:
    path = directory / name
    path.write_text("not-a-real-secret\n")
    path.chmod(mode)
    return str(path)


def s3_policy(tmp_path: Path, tenant: str = "acme-zorg") -> dict:
    return {
        "tenant": tenant,
        "description": "ACME Zorg patient files",
        "purpose": "zorgdossiers",
        "classification": "sensitive",
        "sources": ["/srv/tenants/acme-zorg/files"],
        "exclude": ["*.tmp"],
        "destination": {
            "type": "s3",
            "country": "NL",
            "endpoint": "https://s3.nl-ams.scw.cloud",
            "bucket": f"{tenant}-backup",
            "region": "nl-ams",
            "prefix": "bkp",
            "credentials_file": secret_file(tmp_path, f"{tenant}.s3"),
            "credentials_profile": "default",
        },
        "password_file": secret_file(tmp_path, f"{tenant}.key"),
        "schedule": {"backup": "0 2 * * *", "drill": "0 6 1 * *"},
        "retention": {"last": 3, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 0,
                      "legal_hold": False},
        "drill": {"sample": 20, "rto_minutes": 240},
        "rpo_hours": 26,
    }


def sftp_policy(tmp_path: Path, tenant: str = "beta-praktijk") -> dict:
    return {
        "tenant": tenant,
        "purpose": "patient files",
        "classification": "normal",
        "sources": ["/srv/tenants/beta/files", "/srv/tenants/beta/db"],
        "destination": {
            "type": "sftp",
            "country": "DE",
            "host": "backup01.offsite.example.de",
            "user": "bkp",
            "path": f"/srv/backup/{tenant}",
            "host_key": ssh_key_line(),
            "identity_file": secret_file(tmp_path, "id_ed25519"),
        },
        "password_command": "pass show bkp/beta",
        "retention": {"daily": 7},
    }


def local_policy(tmp_path: Path, tenant: str = "gamma") -> dict:
    return {
        "tenant": tenant,
        "purpose": "staging",
        "classification": "normal",
        "sources": ["/srv/tenants/gamma"],
        "destination": {"type": "local", "country": "NL", "path": f"/mnt/backup/{tenant}"},
        "password_env": "BKP_TEST_PW_GAMMA",
        "retention": {"last": 5},
    }


def write_policy(directory: Path, policy: dict, name: str | None = None) -> Path:
    path = directory / (name or f"{policy['tenant']}.yaml")
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def report_for(tmp_path: Path, policy: dict, name: str | None = None) -> PolicyReport:
    return validate_file(write_policy(tmp_path, policy, name))


def errors_at(report: PolicyReport, path: str) -> list[Problem]:
    return [problem for problem in report.errors if problem.path == path]


def only_error_at(report: PolicyReport, path: str) -> Problem:
    found = errors_at(report, path)
    assert len(found) == 1, report.describe()
    return found[0]


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line containing text."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


# --- valid policies -------------------------------------------------------------------------

def test_valid_s3_policy_loads_into_frozen_objects(tmp_path):
    report = report_for(tmp_path, s3_policy(tmp_path))
    assert report.valid, report.describe()
    assert report.warnings == []
    policy = report.policy
    assert isinstance(policy, Policy)
    assert policy.tenant == "acme-zorg"
    assert policy.sources == ("/srv/tenants/acme-zorg/files",)
    assert policy.exclude == ("*.tmp",)
    assert policy.password_file == tmp_path / "acme-zorg.key"
    assert policy.destination == Destination(
        type="s3", country="NL", endpoint="https://s3.nl-ams.scw.cloud",
        bucket="acme-zorg-backup", region="nl-ams", prefix="bkp",
        credentials_file=tmp_path / "acme-zorg.s3", credentials_profile="default")
    assert isinstance(policy.destination.credentials_file, Path)
    assert policy.schedule.drill == "0 6 1 * *"
    assert policy.retention.keep_rules() == {"last": 3, "daily": 7, "weekly": 4, "monthly": 12}
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.tenant = "other"  # type: ignore[misc]


def test_valid_sftp_policy_loads_with_defaults(tmp_path):
    report = report_for(tmp_path, sftp_policy(tmp_path))
    assert report.valid, report.describe()
    destination = report.policy.destination
    assert destination.type == "sftp"
    assert destination.port == 22
    assert destination.identity_file == tmp_path / "id_ed25519"
    assert destination.host_key.startswith("ssh-ed25519 ")
    assert destination.off_site
    policy = report.policy
    assert policy.password_command == "pass show bkp/beta"
    assert policy.schedule.backup == "0 2 * * *"
    assert policy.schedule.drill is None
    assert (policy.drill.sample, policy.drill.rto_minutes) == (20, 240)
    assert policy.rpo_hours == 26
    assert policy.timeout_minutes == 360


def test_valid_local_policy_warns_that_it_is_not_off_site(tmp_path, monkeypatch):
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    report = report_for(tmp_path, local_policy(tmp_path))
    assert report.valid, report.describe()
    assert report.policy.destination == Destination(type="local", country="NL",
                                                    path="/mnt/backup/gamma")
    assert not report.policy.destination.off_site
    [warning] = report.warnings
    assert warning.path == "destination.type"
    assert "not off-site" in warning.message


def test_project_additions_load(tmp_path):
    policy = s3_policy(tmp_path)
    policy["timeout_minutes"] = 90
    policy["monitoring"] = {"healthcheck_url": "https://hc-ping.com/abc"}
    policy["retention"]["hourly"] = 24
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()
    assert report.policy.timeout_minutes == 90
    assert report.policy.monitoring.healthcheck_url == "https://hc-ping.com/abc"
    assert report.policy.retention.hourly == 24


def test_legal_hold_needs_no_keep_rule(tmp_path):
    policy = s3_policy(tmp_path)
    policy["retention"] = {"legal_hold": True}
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()
    assert report.policy.retention.legal_hold


def test_report_json_has_exactly_the_contract_keys(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"]["country"] = "CH"
    report = report_for(tmp_path, policy)
    document = json.loads(json.dumps(report.to_json()))
    assert set(document) == {"file", "tenant", "valid", "errors", "warnings"}
    assert document["valid"] is False
    assert document["tenant"] == "acme-zorg"
    assert document["file"] == str(tmp_path / "acme-zorg.yaml")
    assert all(set(error) == {"path", "message", "line"} for error in document["errors"])
    [error] = document["errors"]
    assert error["path"] == "destination.country"
    assert error["line"] == line_of(report.file, "country: CH")


# --- schema rules ---------------------------------------------------------------------------

def mutate(policy: dict, path: str, value) -> dict:
    """Set (or with value=DELETE remove) a dotted key in the policy."""
    *parents, last = path.split(".")
    target = policy
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return policy


DELETE = object()


@pytest.mark.parametrize(("path", "value", "error_path", "words"), [
    ("classification", "secret", "classification", "normal, sensitive"),
    ("sources", [], "sources", "at least 1"),
    ("sources", ["srv/relative"], "sources.0", "absolute path"),
    ("sources", "/srv/one", "sources", "must be a list"),
    ("purpose", DELETE, "purpose", "missing"),
    ("destination.type", "ftp", "destination.type", "s3, sftp, local"),
    ("destination.bucket", DELETE, "destination.bucket", "an s3 destination needs"),
    ("destination.credentials_file", DELETE, "destination.credentials_file", "needs"),
    ("destination.host", "backup.example.nl", "destination.host",
     "not a key of an s3 destination (it belongs to sftp)"),
    ("destination.country", "nl", "destination.country", "alpha-2"),
    ("destination.endpoint", "s3.nl-ams.scw.cloud", "destination.endpoint", "http(s) URL"),
    ("password_file", DELETE, "password_file", "password_file, password_command, password_env"),
    ("password_env", "BKP_PW", "password_env", "only one of"),
    ("schedule.backup", 2, "schedule.backup", "must be a string"),
    ("retention.daily", -1, "retention.daily", "at least 0"),
    ("retention.legal_hold", "yes", "retention.legal_hold", "true or false"),
    ("drill.sample", -1, "drill.sample", "at least 0"),
    ("drill.sample", 1.5, "drill.sample", "an integer"),
    ("drill.rto_minutes", 0, "drill.rto_minutes", "at least 1"),
    ("rpo_hours", 0, "rpo_hours", "greater than 0"),
    ("rpo_hours", float("nan"), "rpo_hours", "number of hours"),
    ("rpo_hours", float("inf"), "rpo_hours", "at most 8760"),
    ("timeout_minutes", 0, "timeout_minutes", "at least 1"),
    ("timeout_minutes", 1441, "timeout_minutes", "at most 1440"),
])
def test_schema_errors_are_reported_at_their_key(tmp_path, path, value, error_path, words):
    report = report_for(tmp_path, mutate(s3_policy(tmp_path), path, value))
    assert not report.valid
    assert report.policy is None
    problem = only_error_at(report, error_path)
    assert words in problem.message


def test_tenant_must_match_the_pattern(tmp_path):
    report = report_for(tmp_path, s3_policy(tmp_path, tenant="Acme_Zorg"))
    assert "a-z, 0-9" in errors_at(report, "tenant")[0].message


def test_key_of_another_destination_type_is_an_error(tmp_path):
    policy = sftp_policy(tmp_path)
    policy["destination"]["bucket"] = "beta"
    report = report_for(tmp_path, policy)
    problem = only_error_at(report, "destination.bucket")
    assert problem.message == "'bucket' is not a key of an sftp destination (it belongs to s3)"
    assert problem.line == line_of(report.file, "bucket:")


def test_sftp_needs_its_keys(tmp_path):
    policy = sftp_policy(tmp_path)
    del policy["destination"]["host_key"]
    del policy["destination"]["path"]
    report = report_for(tmp_path, policy)
    assert {p.path for p in report.errors} == {"destination.host_key", "destination.path"}


@pytest.mark.parametrize("value", ["srv/backup/beta", "~/backup"])
def test_sftp_path_must_be_absolute(tmp_path, value):
    policy = sftp_policy(tmp_path)
    policy["destination"]["path"] = value
    problem = only_error_at(report_for(tmp_path, policy), "destination.path")
    assert "absolute path" in problem.message


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"]["regoin"] = "nl-ams"
    policy["retension"] = {"daily": 1}
    report = report_for(tmp_path, policy)
    typo = only_error_at(report, "destination.regoin")
    assert "unknown key 'regoin'" in typo.message
    assert "did you mean 'region'" in typo.message
    assert typo.line == line_of(report.file, "regoin:")
    assert "unknown key 'retension'" in only_error_at(report, "retension").message


# --- cross-field rules ----------------------------------------------------------------------

def test_tenant_must_equal_file_stem(tmp_path):
    report = report_for(tmp_path, s3_policy(tmp_path), name="acme.yaml")
    problem = only_error_at(report, "tenant")
    assert "acme-zorg" in problem.message
    assert "acme.yaml" in problem.message
    assert problem.line == 1


@pytest.mark.parametrize("expression", ["0 2 * *", "0 2 * * * *", "61 2 * * *", "@daily",
                                        "every night"])
def test_cron_expressions_are_checked(tmp_path, expression):
    policy = s3_policy(tmp_path)
    policy["schedule"]["drill"] = expression
    report = report_for(tmp_path, policy)
    problem = only_error_at(report, "schedule.drill")
    assert "cron expression" in problem.message
    assert problem.line == line_of(report.file, "drill: ")


def test_retention_must_keep_something(tmp_path):
    policy = s3_policy(tmp_path)
    policy["retention"] = {"last": 0, "daily": 0, "legal_hold": False}
    problem = only_error_at(report_for(tmp_path, policy), "retention")
    assert "keep rule" in problem.message
    assert "legal_hold" in problem.message


@pytest.mark.parametrize("country", ["CH", "GB", "US"])
def test_destination_country_must_be_eea(tmp_path, country):
    policy = s3_policy(tmp_path)
    policy["destination"]["country"] = country
    problem = only_error_at(report_for(tmp_path, policy), "destination.country")
    assert country in problem.message
    assert "EEA" in problem.message
    assert "IS, LI, NO" in problem.message


@pytest.mark.parametrize(("region", "words"), [
    ("eu-west-2", "AWS region eu-west-2 is London (GB), outside the EEA"),
    ("eu-central-2", "AWS region eu-central-2 is Zurich (CH), outside the EEA"),
])
def test_aws_london_and_zurich_are_refused(tmp_path, region, words):
    policy = s3_policy(tmp_path)
    policy["destination"].update(endpoint="https://s3.amazonaws.com", region=region,
                                 country="NL")
    report = report_for(tmp_path, policy)
    problem = only_error_at(report, "destination.region")
    assert words in problem.message
    assert problem.line == line_of(report.file, "region:")


def test_aws_like_region_on_self_hosted_endpoint_is_read_as_aws(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"].update(endpoint="https://minio.internal.example.nl",
                                 region="eu-west-2")
    problem = only_error_at(report_for(tmp_path, policy), "destination.region")
    assert "London (GB), outside the EEA" in problem.message
    assert "AWS's meaning" in problem.message


def test_region_must_agree_with_country(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"].update(endpoint="https://s3.eu-central-1.amazonaws.com",
                                 region="eu-central-1", country="NL")
    report = report_for(tmp_path, policy)
    problem = only_error_at(report, "destination.region")
    assert "Frankfurt (DE)" in problem.message
    assert "destination.country is NL" in problem.message
    assert errors_at(report, "destination.endpoint") == []


def test_region_in_endpoint_host_is_checked_too(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"].update(endpoint="https://s3.eu-west-2.amazonaws.com",
                                 region="eu-west-1", country="IE")
    report = report_for(tmp_path, policy)
    assert errors_at(report, "destination.region") == []
    assert "London (GB)" in only_error_at(report, "destination.endpoint").message


def test_matching_aws_region_is_accepted(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"].update(endpoint="https://s3.eu-central-1.amazonaws.com",
                                 region="eu-central-1", country="DE")
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()


@pytest.mark.parametrize(("endpoint", "service"), [
    ("https://acmezorg.blob.core.windows.net", "Microsoft Azure"),
    ("https://s3.icloud.com", "Apple iCloud"),
    ("https://s3.eu-central-2.idrivee2-12.com", "IDrive"),
])
def test_refused_services_are_errors_at_the_endpoint(tmp_path, endpoint, service):
    policy = s3_policy(tmp_path)
    policy["destination"]["endpoint"] = endpoint
    problem = only_error_at(report_for(tmp_path, policy), "destination.endpoint")
    assert service in problem.message
    assert "privacy statement" in problem.message


def test_refused_service_as_sftp_host(tmp_path):
    policy = sftp_policy(tmp_path)
    policy["destination"]["host"] = "acme.blob.core.windows.net"
    problem = only_error_at(report_for(tmp_path, policy), "destination.host")
    assert "Microsoft Azure" in problem.message


def test_plain_http_to_a_remote_endpoint_is_refused(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"]["endpoint"] = "http://s3.nl-ams.scw.cloud"
    problem = only_error_at(report_for(tmp_path, policy), "destination.endpoint")
    assert "https" in problem.message
    assert "loopback" in problem.message


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "http://127.8.9.10",
                                      "http://localhost:5000", "http://[::1]:9000"])
def test_plain_http_to_loopback_is_accepted(tmp_path, endpoint):
    policy = s3_policy(tmp_path)
    policy["destination"]["endpoint"] = endpoint
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()


def test_password_in_endpoint_url_is_an_inline_secret(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"]["endpoint"] = "https://AKIA:hunter2@s3.nl-ams.scw.cloud"
    report = report_for(tmp_path, policy)
    problem = only_error_at(report, "destination.endpoint")
    assert "inline secret" in problem.message
    assert "hunter2" not in json.dumps(report.to_json())


@pytest.mark.parametrize(("host_key", "words"), [
    ("AAAAC3NzaC1lZDI1NTE5", "one OpenSSH public key line"),
    ("ssh-dss AAAAB3NzaC1kc3M=", "'ssh-dss' is not accepted"),
    ("ssh-ed25519 not*base64", "not a valid ssh-ed25519 key"),
    (ssh_key_line("ssh-rsa", embedded="ssh-ed25519"), "not a valid ssh-rsa key"),
    ("backup01.example.nl " + ssh_key_line(), "known_hosts format"),
])
def test_sftp_host_key_must_be_an_openssh_key_line(tmp_path, host_key, words):
    policy = sftp_policy(tmp_path)
    policy["destination"]["host_key"] = host_key
    problem = only_error_at(report_for(tmp_path, policy), "destination.host_key")
    assert words in problem.message


@pytest.mark.parametrize("line", [ssh_key_line(), ssh_key_line("ssh-rsa"),
                                  ssh_key_line("ecdsa-sha2-nistp256"),
                                  ssh_key_line() + " root@backup01"])
def test_good_host_keys_pass(line):
    assert host_key_problem(line) is None


def test_inline_password_gets_the_helpful_message_once(tmp_path):
    policy = s3_policy(tmp_path)
    del policy["password_file"]
    policy["password"] = "hunter2"
    report = report_for(tmp_path, policy)
    [problem] = report.errors
    assert problem.path == "password"
    assert "inline secret" in problem.message
    assert "password_file, password_command or password_env" in problem.message
    assert problem.line == line_of(report.file, "password: hunter2")


@pytest.mark.parametrize("key", ["secret_key", "aws_secret_access_key", "token", "passphrase",
                                 "awsSecretAccessKey"])
def test_secret_looking_keys_anywhere_are_inline_secrets(tmp_path, key):
    policy = s3_policy(tmp_path)
    policy["destination"][key] = "abc"
    report = report_for(tmp_path, policy)
    problem = only_error_at(report, f"destination.{key}")
    assert "credentials_file" in problem.message
    assert len(report.errors) == 1, report.describe()


def test_nested_secret_in_an_unexpected_place(tmp_path):
    policy = s3_policy(tmp_path)
    policy["monitoring"] = {"healthcheck_url": "https://hc-ping.com/x", "api_key": "abc"}
    assert "inline secret" in only_error_at(report_for(tmp_path, policy),
                                            "monitoring.api_key").message


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_password_file_open_to_group_or_others_is_refused(tmp_path, mode):
    policy = s3_policy(tmp_path)
    Path(policy["password_file"]).chmod(mode)
    problem = only_error_at(report_for(tmp_path, policy), "password_file")
    assert f"chmod 600 {policy['password_file']}" in problem.message


@pytest.mark.parametrize("key", ["credentials_file"])
def test_credentials_file_open_to_others_is_refused(tmp_path, key):
    policy = s3_policy(tmp_path)
    Path(policy["destination"][key]).chmod(0o644)
    assert "chmod 600" in only_error_at(report_for(tmp_path, policy),
                                        f"destination.{key}").message


def test_identity_file_open_to_others_is_refused(tmp_path):
    policy = sftp_policy(tmp_path)
    Path(policy["destination"]["identity_file"]).chmod(0o604)
    assert "chmod 600" in only_error_at(report_for(tmp_path, policy),
                                        "destination.identity_file").message


def test_missing_secret_file_is_a_warning(tmp_path):
    policy = s3_policy(tmp_path)
    policy["password_file"] = str(tmp_path / "absent.key")
    report = report_for(tmp_path, policy)
    assert report.valid, report.describe()
    [warning] = report.warnings
    assert warning.path == "password_file"
    assert "does not exist" in warning.message


def test_unset_password_env_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.delenv("BKP_TEST_PW_GAMMA", raising=False)
    report = report_for(tmp_path, local_policy(tmp_path))
    assert report.valid
    assert [w.path for w in report.warnings] == ["destination.type", "password_env"]
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    assert [w.path for w in validate_file(report.file).warnings] == ["destination.type"]


def test_sensitive_tenant_kept_yearly_is_warned(tmp_path):
    policy = s3_policy(tmp_path)
    policy["retention"]["yearly"] = 7
    report = report_for(tmp_path, policy)
    assert report.valid
    [warning] = report.warnings
    assert warning.path == "retention.yearly"
    assert "shorter-retention rule" in warning.message
    assert "privacy statement" in warning.message


@pytest.mark.parametrize(("classification", "legal_hold"), [("normal", False),
                                                            ("sensitive", True)])
def test_yearly_retention_without_warning(tmp_path, classification, legal_hold):
    policy = s3_policy(tmp_path)
    policy["classification"] = classification
    policy["retention"].update(yearly=7, legal_hold=legal_hold)
    assert report_for(tmp_path, policy).warnings == []


# --- many problems, lines, unreadable input -------------------------------------------------

def test_every_error_is_reported_at_once_with_lines(tmp_path):
    policy = sftp_policy(tmp_path)
    policy["classification"] = "secret"
    policy["destination"]["country"] = "GB"
    policy["destination"]["bucket"] = "x"
    policy["schedule"] = {"backup": "nightly"}
    policy["rpo_hours"] = -1
    report = report_for(tmp_path, policy)
    by_path = {problem.path: problem.line for problem in report.errors}
    assert by_path == {
        "classification": line_of(report.file, "classification:"),
        "destination.country": line_of(report.file, "country: GB"),
        "destination.bucket": line_of(report.file, "bucket:"),
        "schedule.backup": line_of(report.file, "backup: nightly"),
        "rpo_hours": line_of(report.file, "rpo_hours:"),
    }
    assert [p.line for p in report.errors] == sorted(p.line for p in report.errors)


def test_missing_key_points_at_its_parent(tmp_path):
    policy = s3_policy(tmp_path)
    del policy["destination"]["region"]
    report = report_for(tmp_path, policy)
    assert only_error_at(report, "destination.region").line == line_of(report.file,
                                                                       "destination:")


def test_list_items_have_their_line(tmp_path):
    policy = s3_policy(tmp_path)
    policy["sources"] = ["/srv/a", "relative/b"]
    report = report_for(tmp_path, policy)
    assert only_error_at(report, "sources.1").line == line_of(report.file, "relative/b")


def test_yaml_syntax_error_has_its_line(tmp_path):
    path = tmp_path / "acme.yaml"
    path.write_text("tenant: acme\npurpose: zorg\nsources: [/srv/a\nclassification: normal\n"
                    "destination: {type: local\n")
    [problem] = validate_file(path).errors
    assert problem.path == ""
    assert "YAML syntax error" in problem.message
    assert problem.line == 4


def test_bad_indentation_has_its_line(tmp_path):
    path = tmp_path / "acme.yaml"
    path.write_text("tenant: acme\ndestination:\n  type: s3\n    country: NL\n")
    [problem] = validate_file(path).errors
    assert problem.line == 4


def test_duplicate_key_is_an_error_among_the_others(tmp_path):
    policy = s3_policy(tmp_path)
    policy["classification"] = "secret"
    path = write_policy(tmp_path, policy)
    path.write_text(path.read_text().replace("  region: nl-ams\n",
                                             "  region: nl-ams\n  region: eu-west-2\n"))
    report = validate_file(path)
    duplicate = only_error_at(report, "destination.region")
    assert "written twice" in duplicate.message
    assert duplicate.line == line_of(path, "region: eu-west-2")
    assert errors_at(report, "classification")


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty file"),
    (b"- a\n- b\n", "found a list"),
    (b"just text\n", "found a string"),
    (b"\x00\x01\x02\xff\xfe", "not UTF-8"),
    (b"tenant: \x07bell\n", "not YAML text"),
    (b"a: &x [*x]\n", "contains itself"),
    (b"when: 2024-02-30\n", "cannot read a YAML value"),
    (b"--- a\n--- b\n", "YAML syntax error"),
    (b"? [a, b]\n: c\n", "YAML syntax error"),
])
def test_unusable_content_is_one_clear_problem(tmp_path, content, words):
    path = tmp_path / "acme.yaml"
    path.write_bytes(content)
    report = validate_file(path)
    assert not report.valid
    assert report.policy is None
    assert any(words in problem.message for problem in report.errors), report.describe()


def test_unreadable_paths_are_reported(tmp_path):
    assert "not a regular file" in validate_file(tmp_path).errors[0].message
    assert "cannot read" in validate_file(tmp_path / "absent.yaml").errors[0].message


def test_billion_laughs_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "acme.yaml"
    path.write_text("\n".join(lines) + "\n")
    [problem] = validate_file(path).errors
    assert "too large" in problem.message


# --- several files --------------------------------------------------------------------------

def test_two_tenants_sharing_a_bucket_are_both_refused(tmp_path):
    first = write_policy(tmp_path, s3_policy(tmp_path, "acme-zorg"))
    other = s3_policy(tmp_path, "beta-zorg")
    other["destination"]["bucket"] = "acme-zorg-backup"
    other["destination"]["endpoint"] = "https://S3.NL-AMS.SCW.CLOUD/"
    other["destination"]["prefix"] = "/bkp/"
    second = write_policy(tmp_path, other)
    reports = validate_files([first, second])
    for report, partner in zip(reports, (second, first), strict=True):
        problem = only_error_at(report, "destination")
        assert str(partner) in problem.message
        assert "never share a repository" in problem.message
        assert problem.line == line_of(report.file, "destination:")
        assert report.policy is None


def test_shared_sftp_path_is_refused_even_when_the_file_has_other_errors(tmp_path):
    first = write_policy(tmp_path, sftp_policy(tmp_path, "beta"))
    other = sftp_policy(tmp_path, "delta")
    other["destination"]["path"] = "/srv/backup/beta/"
    other["classification"] = "unknown"
    second = write_policy(tmp_path, other)
    reports = validate_files([first, second])
    assert "delta.yaml" in only_error_at(reports[0], "destination").message
    assert "beta.yaml" in only_error_at(reports[1], "destination").message


def test_different_repositories_are_fine(tmp_path):
    paths = [write_policy(tmp_path, s3_policy(tmp_path, "acme-zorg")),
             write_policy(tmp_path, s3_policy(tmp_path, "beta-zorg")),
             write_policy(tmp_path, sftp_policy(tmp_path))]
    assert all(report.valid for report in validate_files(paths))


def test_same_file_given_twice_does_not_share_with_itself(tmp_path):
    path = write_policy(tmp_path, s3_policy(tmp_path))
    assert all(report.valid for report in validate_files([path, path]))


def test_one_file_per_tenant(tmp_path):
    policy = s3_policy(tmp_path)
    first = write_policy(tmp_path, policy)
    policy["destination"]["bucket"] = "elsewhere"
    second = write_policy(tmp_path, policy, name="acme-zorg.yml")
    reports = validate_files([first, second])
    assert "acme-zorg.yml" in only_error_at(reports[0], "tenant").message


# --- directories and loading ----------------------------------------------------------------

def test_policy_files_skips_hidden_and_underscore_names(tmp_path):
    for name in ("b.yaml", "a.yml", "_defaults.yaml", ".draft.yaml", "notes.txt", "c.yaml~"):
        (tmp_path / name).write_text("x: 1\n")
    (tmp_path / "dir.yaml").mkdir()
    assert [p.name for p in policy_files(tmp_path)] == ["a.yml", "b.yaml"]


def test_policy_files_of_a_missing_directory_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="policies directory"):
        policy_files(tmp_path / "absent")


@pytest.fixture
def policies_dir(tmp_path):
    directory = tmp_path / "policies"
    directory.mkdir()
    write_policy(directory, s3_policy(tmp_path, "acme-zorg"))
    write_policy(directory, sftp_policy(tmp_path, "beta-praktijk"))
    broken = s3_policy(tmp_path, "gamma-zorg")
    broken["destination"]["country"] = "US"
    write_policy(directory, broken)
    return directory


def test_load_policies_splits_valid_from_invalid(policies_dir):
    policies, invalid = load_policies(policies_dir)
    assert [p.tenant for p in policies] == ["acme-zorg", "beta-praktijk"]
    assert [r.tenant for r in invalid] == ["gamma-zorg"]
    assert invalid[0].errors[0].path == "destination.country"


def test_load_policies_filters_tenants(policies_dir):
    policies, invalid = load_policies(policies_dir, ["beta-praktijk"])
    assert [p.tenant for p in policies] == ["beta-praktijk"]
    assert invalid == []


def test_load_policies_refuses_an_unknown_tenant(policies_dir):
    with pytest.raises(PolicyError) as raised:
        load_policies(policies_dir, ["acme-zorg", "nobody"])
    message = str(raised.value)
    assert "nobody" in message
    assert "acme-zorg, beta-praktijk, gamma-zorg" in message
    assert raised.value.exit_code == 3


def test_load_policy_returns_one_policy(policies_dir):
    assert load_policy(policies_dir, "acme-zorg").destination.bucket == "acme-zorg-backup"


def test_load_policy_lists_every_problem(policies_dir):
    path = policies_dir / "gamma-zorg.yaml"
    with pytest.raises(PolicyError) as raised:
        load_policy(policies_dir, "gamma-zorg")
    line = line_of(path, "country: US")
    assert f"{path}:{line} destination.country: US is outside the EEA" in str(raised.value)
    assert raised.value.problems[0].path == "destination.country"


# --- the published schema -------------------------------------------------------------------

def declared_properties(node: dict, path: str = ""):
    """Every (dotted path, schema) declared under properties and items, at every level."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}{name}", child
        yield from declared_properties(child, f"{path}{name}.")
    if isinstance(node.get("items"), dict):
        yield f"{path}[]", node["items"]
        yield from declared_properties(node["items"], f"{path}[].")


def test_schema_is_valid_draft_2020_12():
    document = schema()
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(document)


def test_every_key_has_a_description_and_examples():
    document = schema()
    properties = list(declared_properties(document))
    assert len(properties) > 40
    for path, node in [("(root)", document), *properties]:
        assert node.get("description"), path
        assert node.get("examples"), path


def test_every_example_is_valid_for_its_key():
    for path, node in declared_properties(schema()):
        validator = Draft202012Validator(node)
        for example in node["examples"]:
            assert not list(validator.iter_errors(example)), (path, example)


def test_root_example_validates_as_a_policy(tmp_path):
    [example] = schema()["examples"]
    report = report_for(tmp_path, example)
    assert report.valid, report.describe()


def test_schema_has_the_contract_key_names():
    document = schema()
    assert {"tenant", "description", "purpose", "classification", "sources", "exclude",
            "destination", "password_file", "password_command", "password_env", "schedule",
            "retention", "drill", "rpo_hours", "timeout_minutes",
            "monitoring", "databases", "copies"} == set(document["properties"])
    database = document["properties"]["databases"]["items"]["properties"]
    assert {"type", "name", "host", "port", "user", "password_file", "sslmode",
            "ca_file"} == set(database)
    destination = document["properties"]["destination"]["properties"]
    assert {"type", "country", "site", "endpoint", "bucket", "region", "prefix",
            "credentials_file",
            "credentials_profile", "host", "port", "user", "path", "host_key",
            "identity_file", "url", "ca_file", "append_only", "maintenance_url",
            "maintenance_credentials_file", "object_lock"} == set(destination)
    assert destination["type"]["enum"] == ["s3", "sftp", "local", "rest"]
    retention = document["properties"]["retention"]["properties"]
    assert set(retention) == {"last", "hourly", "daily", "weekly", "monthly", "yearly",
                              "legal_hold", "keep_until"}


def test_schema_keys_match_the_frozen_dataclasses():
    document = schema()
    fields = {f.name for f in dataclasses.fields(Destination)}
    assert set(document["properties"]["destination"]["properties"]) == fields
    assert set(document["properties"]) <= {f.name for f in dataclasses.fields(Policy)}


def test_every_object_forbids_unknown_keys():
    document = schema()
    objects = [document] + [node for _, node in declared_properties(document)
                            if node.get("type") == "object"]
    assert len(objects) == 8
    assert all(node["additionalProperties"] is False for node in objects)



def test_keep_until_is_a_date_that_exists(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)

    def checked(keep_until: str):
        path = tmp_path / "acme.yaml"
        path.write_text(f"tenant: acme\npurpose: x\nclassification: normal\nsources: [/srv]\n"
                        f"destination: {{type: local, country: NL, path: /mnt/b/acme}}\n"
                        f"password_file: {secret}\n"
                        f"retention: {{last: 3, keep_until: {keep_until}}}\n")
        return validate_file(path)

    assert checked("2033-12-31").valid
    assert [e.message for e in checked("'2033-02-30'").errors] == \
        ["2033-02-30 is not a date that exists"]
    assert "YYYY-MM-DD" in checked("'in seven years'").errors[0].message
    assert not checked("2033-12-31T10:00:00").valid


def test_a_named_pipe_among_the_policies_is_refused_without_waiting_for_a_writer(tmp_path):
    pipe = tmp_path / "acme.yaml"
    os.mkfifo(pipe)
    assert "not a regular file" in validate_file(pipe).errors[0].message


def test_paths_resolved_once_are_resolved_as_realpath_resolves_them(tmp_path):
    from bkp.policy import _resolved_once

    (tmp_path / "disk" / "repos").mkdir(parents=True)
    (tmp_path / "disk" / "repos" / "acme").mkdir()
    (tmp_path / "mnt").symlink_to(tmp_path / "disk")
    (tmp_path / "disk" / "repos" / "loop").symlink_to("../repos/loop")
    (tmp_path / "disk" / "up").symlink_to("..")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    (tmp_path / "file").write_text("")
    memo: dict[str, str] = {}
    for tail in ("mnt/repos/acme", "mnt/repos/acme/new", "disk/up/mnt/repos", "mnt/repos/loop",
                 "dangling/more", "file/under", "absent/a/b", "mnt", ""):
        path = str(tmp_path / tail) if tail else "/"
        assert _resolved_once(path, memo) == os.path.realpath(path), tail
