"""The rest destination in a policy: its keys, the transport and EEA rules for its URLs, the
certificate it trusts, the append-only keys, one REST URL per tenant, and its credentials
file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bkp.errors import PolicyError
from bkp.policy import validate_files
from bkp.secrets import rest_credentials
from tests.unit.test_policy import (
    errors_at,
    only_error_at,
    report_for,
    secret_file,
    sftp_policy,
    write_policy,
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=ca",
                    "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem")],
                   check=True, capture_output=True)
    (folder / "ca.pem").chmod(0o644)
    return str(folder / "ca.pem")


def credential(tmp_path: Path, name: str, mode: int = 0o600) -> str:
    """A credentials file of its own (secret_file writes one content for all)."""
    path = tmp_path / name
    path.write_text(f"{name}:password-of-{name}\n")
    path.chmod(mode)
    return str(path)


def rest_policy(tmp_path: Path, tenant: str = "delta-zorg", **destination) -> dict:
    return {
        "tenant": tenant,
        "purpose": "zorgdossiers",
        "classification": "sensitive",
        "sources": [f"/srv/tenants/{tenant}"],
        "destination": {
            "type": "rest",
            "country": "DE",
            "url": f"https://backup02.offsite.example.de:8000/{tenant}",
            "credentials_file": secret_file(tmp_path, f"{tenant}.rest"),
            **destination,
        },
        "password_file": secret_file(tmp_path, f"{tenant}.key"),
        "retention": {"last": 3},
    }


def test_a_rest_destination_is_valid_and_built(tmp_path, certificate):
    admin = tmp_path / "admin.rest"
    admin.write_text("bkp-admin:another-password\n")
    admin.chmod(0o600)
    report = report_for(tmp_path, rest_policy(
        tmp_path, ca_file=certificate, append_only=True,
        maintenance_url="https://backup02.offsite.example.de:8001/delta-zorg",
        maintenance_credentials_file=str(admin)))
    assert report.valid, report.describe()
    dest = report.policy.destination
    assert (dest.type, dest.url, dest.ca_file, dest.append_only) == (
        "rest", "https://backup02.offsite.example.de:8000/delta-zorg", Path(certificate), True)
    assert dest.maintenance_credentials_file == admin and dest.off_site
    assert dest.maintenance_location == "https://backup02.offsite.example.de:8001/delta-zorg"
    assert not report.warnings, report.describe()


def test_the_maintenance_location_defaults_to_the_url(tmp_path):
    report = report_for(tmp_path, rest_policy(
        tmp_path, append_only=True, maintenance_credentials_file=credential(tmp_path, "a")))
    assert report.valid, report.describe()
    assert report.policy.destination.maintenance_location == report.policy.destination.url


@pytest.mark.parametrize("key", ["url", "credentials_file"])
def test_a_rest_destination_needs_url_and_credentials(tmp_path, key):
    policy = rest_policy(tmp_path)
    del policy["destination"][key]
    problem = only_error_at(report_for(tmp_path, policy), f"destination.{key}")
    assert "a rest destination needs url, credentials_file" in problem.message


def test_keys_of_other_types_are_named_as_theirs(tmp_path):
    report = report_for(tmp_path, rest_policy(tmp_path, host="x", bucket="b-b-b"))
    assert "belongs to sftp" in only_error_at(report, "destination.host").message
    assert "belongs to s3" in only_error_at(report, "destination.bucket").message
    other = sftp_policy(tmp_path)
    other["destination"]["url"] = "https://example.de/x"
    problem = only_error_at(report_for(tmp_path, other), "destination.url")
    assert "not a key of an sftp destination (it belongs to rest)" in problem.message


@pytest.mark.parametrize("url, words", [
    ("http://backup02.offsite.example.de:8000/x", "plain http to backup02.offsite.example.de"),
    ("ftp://backup02.offsite.example.de/x", "must be an http(s) URL"),
    ("https://backup02.offsite.example.de/x?user=a", "without blanks, query or fragment"),
    ("https://backup02.offsite.example.de/x y", "without blanks, query or fragment"),
    ("https://backup02.offsite.example.de/\u00e9", "printable ASCII"),
    ("https://bkp:hunter2hunter2@backup02.offsite.example.de/x", "user:password@"),
    ("https://bkp@backup02.offsite.example.de/x", "names a user"),
    ("https://mybackup.blob.core.windows.net/x", "Azure"),
])
def test_rest_urls_must_be_safe(tmp_path, url, words):
    for key in ("url", "maintenance_url"):
        extra = {"append_only": True,
                 "maintenance_credentials_file": credential(tmp_path, "adm")}
        policy = rest_policy(tmp_path, **extra)
        policy["destination"][key] = url
        report = report_for(tmp_path, policy)
        messages = " ".join(p.message for p in errors_at(report, f"destination.{key}"))
        assert words in messages, report.describe()
        assert "hunter2" not in " ".join(report.describe())


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://localhost/x",
                                 "http://[::1]:8000/x"])
def test_plain_http_is_accepted_to_a_loopback_host(tmp_path, url):
    report = report_for(tmp_path, rest_policy(tmp_path, url=url))
    assert report.valid, report.describe()


def test_outside_the_eea_is_refused(tmp_path):
    report = report_for(tmp_path, rest_policy(tmp_path, country="CH"))
    assert "outside the EEA" in only_error_at(report, "destination.country").message


def test_the_trusted_certificate_must_be_one_and_not_changeable_by_others(tmp_path,
                                                                           certificate):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    report = report_for(tmp_path, rest_policy(tmp_path, ca_file=str(not_pem)))
    assert "holds no PEM certificate" in only_error_at(report, "destination.ca_file").message
    writable = tmp_path / "writable.pem"
    writable.write_bytes(Path(certificate).read_bytes())
    writable.chmod(0o666)
    report = report_for(tmp_path, rest_policy(tmp_path, ca_file=str(writable)))
    assert "writable by group or others" in only_error_at(
        report, "destination.ca_file").message
    report = report_for(tmp_path, rest_policy(tmp_path, ca_file=str(tmp_path / "absent.pem")))
    assert report.valid and "does not exist" in report.describe()[0]


def test_maintenance_keys_belong_to_an_append_only_destination(tmp_path):
    report = report_for(tmp_path, rest_policy(
        tmp_path, maintenance_url="https://backup02.offsite.example.de:8001/x"))
    assert "serves only an append_only destination" in only_error_at(
        report, "destination.maintenance_url").message


def test_append_only_needs_another_credential_that_may_delete(tmp_path):
    report = report_for(tmp_path, rest_policy(tmp_path, append_only=True))
    assert "missing: an append_only destination needs" in only_error_at(
        report, "destination.maintenance_credentials_file").message
    under_hold = rest_policy(tmp_path, append_only=True)
    under_hold["retention"] = {"last": 3, "legal_hold": True}
    assert report_for(tmp_path, under_hold).valid
    same = rest_policy(tmp_path, append_only=True)
    same["destination"]["maintenance_credentials_file"] = same["destination"]["credentials_file"]
    report = report_for(tmp_path, same)
    assert "holds the nightly credential" in only_error_at(
        report, "destination.maintenance_credentials_file").message
    copy = tmp_path / "copy.rest"
    copy.write_bytes(Path(same["destination"]["credentials_file"]).read_bytes())
    copy.chmod(0o600)
    same["destination"]["maintenance_credentials_file"] = str(copy)
    assert "holds the nightly credential" in only_error_at(
        report_for(tmp_path, same), "destination.maintenance_credentials_file").message


def test_the_maintenance_credential_is_absent_from_the_nightly_host_without_a_word(tmp_path):
    report = report_for(tmp_path, rest_policy(
        tmp_path, append_only=True,
        maintenance_credentials_file=str(tmp_path / "only-on-the-maintenance-host")))
    assert report.valid and not report.warnings, report.describe()
    report = report_for(tmp_path, rest_policy(
        tmp_path, append_only=True,
        maintenance_credentials_file=credential(tmp_path, "open", mode=0o644)))
    assert "accessible by group or others" in only_error_at(
        report, "destination.maintenance_credentials_file").message


@pytest.mark.parametrize("spelling", [
    "https://BACKUP02.offsite.example.de:443/delta-zorg/",
    "https://backup02.offsite.example.de./delta-zorg",
    "https://backup02.offsite.example.de//delta-zorg/./",
])
def test_two_tenants_never_share_a_rest_url(tmp_path, spelling):
    first = rest_policy(tmp_path, "delta-zorg", url="https://backup02.offsite.example.de/delta-zorg")
    second = rest_policy(tmp_path, "epsilon-zorg", url=spelling)
    reports = validate_files([write_policy(tmp_path, first), write_policy(tmp_path, second)])
    for report in reports:
        assert "never share a repository" in only_error_at(report, "destination").message


def test_http_and_https_to_one_port_are_one_server(tmp_path):
    first = rest_policy(tmp_path, "delta-zorg", url="https://127.0.0.1/delta-zorg")
    second = rest_policy(tmp_path, "epsilon-zorg", url="http://127.0.0.1:443/delta-zorg/")
    reports = validate_files([write_policy(tmp_path, first), write_policy(tmp_path, second)])
    for report in reports:
        assert "never share a repository" in only_error_at(report, "destination").message


def test_other_paths_ports_or_hosts_are_other_repositories(tmp_path):
    urls = ["https://backup02.offsite.example.de/delta-zorg",
            "https://backup02.offsite.example.de/delta-zorg-2",
            "https://backup02.offsite.example.de:8000/delta-zorg",
            "https://backup03.offsite.example.de/delta-zorg"]
    files = [write_policy(tmp_path, rest_policy(tmp_path, f"t{i}-zorg", url=url))
             for i, url in enumerate(urls)]
    assert all(report.valid for report in validate_files(files))


@pytest.mark.parametrize("content, user, password", [
    ("bkp:s3cret\n", "bkp", "s3cret"),
    ("bkp:pass:with:colons and blanks \r\n", "bkp", "pass:with:colons and blanks "),
    ("\nbkp:x@y/z%\n\n", "bkp", "x@y/z%"),
])
def test_a_rest_credentials_file_is_one_line_user_password(tmp_path, content, user, password):
    path = tmp_path / "c"
    path.write_text(content)
    path.chmod(0o600)
    found = rest_credentials(path)
    assert (found.user, found.password) == (user, password)
    assert password not in repr(found)


@pytest.mark.parametrize("content, words", [
    ("", "exactly one line"),
    ("a:b\nc:d\n", "exactly one line"),
    ("no-colon-secret\n", "one line user:password"),
    (":only-a-password\n", "one line user:password"),
    ("bkp:\n", "one line user:password"),
    ("b k p:pw\n", "the user before ':' contains a blank"),
])
def test_a_broken_rest_credentials_file_is_named_without_its_content(tmp_path, content, words):
    path = tmp_path / "c"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(PolicyError) as caught:
        rest_credentials(path)
    assert words in str(caught.value)
    assert "secret" not in str(caught.value).replace(str(path), "")
    path.chmod(0o640)
    with pytest.raises(PolicyError, match="accessible by group or others"):
        rest_credentials(path)
