"""`copies` in a policy: the keys and rules of a destination for each copy, each at another
site, stable ids, and no repository shared with another tenant."""

from __future__ import annotations

from pathlib import Path

import pytest

from bkp.errors import UsageError
from bkp.policy import at_copy, find_copy, validate_files
from tests.unit.test_policy import (
    errors_at,
    only_error_at,
    report_for,
    s3_policy,
    secret_file,
    sftp_policy,
    ssh_key_line,
    write_policy,
)


def sftp_copy(tmp_path: Path, host: str = "backup02.offsite.example.de", **keys) -> dict:
    return {"type": "sftp", "country": "DE", "host": host, "user": "bkp",
            "path": "/srv/backup/acme-zorg", "host_key": ssh_key_line(),
            "identity_file": secret_file(tmp_path, "copy_ed25519"), **keys}


def s3_copy(tmp_path: Path, **keys) -> dict:
    return {"type": "s3", "country": "DE", "endpoint": "https://s3.eu-central-1.amazonaws.com",
            "bucket": "acme-zorg-copy", "region": "eu-central-1",
            "credentials_file": secret_file(tmp_path, "copy.s3"), **keys}


def with_copies(tmp_path: Path, *copies: dict) -> dict:
    policy = s3_policy(tmp_path)
    policy["copies"] = list(copies)
    return policy


def test_a_copy_at_another_site_is_valid_and_built(tmp_path):
    report = report_for(tmp_path, with_copies(tmp_path, sftp_copy(tmp_path, id="fra",
                                                                    site="fra-dc1")))
    assert report.valid, report.describe()
    [copy] = report.policy.copies
    assert (copy.id, copy.position, copy.destination.type) == ("fra", 1, "sftp")
    assert copy.destination.site == "fra-dc1"
    assert report.policy.destination.site is None


def test_copies_without_id_are_named_by_position(tmp_path):
    report = report_for(tmp_path, with_copies(
        tmp_path, sftp_copy(tmp_path), s3_copy(tmp_path, site="fra-dc1")))
    assert report.valid, report.describe()
    assert [c.id for c in report.policy.copies] == ["1", "2"]


def test_find_copy_by_id_or_position(tmp_path):
    report = report_for(tmp_path, with_copies(
        tmp_path, sftp_copy(tmp_path, id="fra"), s3_copy(tmp_path, id="ber", site="ber-1")))
    policy = report.policy
    assert find_copy(policy, "ber").id == "ber"
    assert find_copy(policy, "1").id == "fra"
    assert find_copy(policy, "2").id == "ber"
    with pytest.raises(UsageError, match="its copies are fra, ber"):
        find_copy(policy, "3")
    seen = at_copy(policy, find_copy(policy, "fra"))
    assert seen.destination.type == "sftp" and seen.copies == () and seen.copy_id == "fra"
    assert seen.password_file == policy.password_file


def test_a_copy_has_the_keys_of_its_type(tmp_path):
    copy = sftp_copy(tmp_path)
    del copy["host_key"]
    copy["bucket"] = "nope"
    report = report_for(tmp_path, with_copies(tmp_path, copy))
    assert "sftp destination needs" in only_error_at(report, "copies.0.host_key").message
    assert "not a key of an sftp destination" in only_error_at(
        report, "copies.0.bucket").message


def test_a_copy_outside_the_eea_is_invalid(tmp_path):
    report = report_for(tmp_path, with_copies(tmp_path, sftp_copy(tmp_path, country="CH")))
    assert "outside the EEA" in only_error_at(report, "copies.0.country").message
    report = report_for(tmp_path, with_copies(tmp_path, s3_copy(
        tmp_path, endpoint="https://s3.eu-west-2.amazonaws.com", region="eu-west-2")))
    assert errors_at(report, "copies.0.region")


def test_a_copy_needs_encrypted_transport_and_a_pinned_key(tmp_path):
    report = report_for(tmp_path, with_copies(
        tmp_path, s3_copy(tmp_path, endpoint="http://s3.example.de"),
        sftp_copy(tmp_path, host_key="ssh-dss AAAA", site="x")))
    assert "plain http" in only_error_at(report, "copies.0.endpoint").message
    assert "not accepted" in only_error_at(report, "copies.1.host_key").message


def test_a_copy_secret_file_must_be_private(tmp_path):
    copy = s3_copy(tmp_path)
    copy["credentials_file"] = secret_file(tmp_path, "open.s3", mode=0o644)
    report = report_for(tmp_path, with_copies(tmp_path, copy))
    assert "chmod 600" in only_error_at(report, "copies.0.credentials_file").message


def test_no_inline_secret_in_a_copy(tmp_path):
    report = report_for(tmp_path, with_copies(tmp_path, s3_copy(tmp_path, secret_key="x")))
    assert errors_at(report, "copies.0.secret_key")


def test_a_copy_at_the_destinations_site_is_invalid(tmp_path):
    policy = with_copies(tmp_path, sftp_copy(tmp_path, site="AMS-DC2"))
    policy["destination"]["site"] = "ams-dc2"
    report = report_for(tmp_path, policy)
    message = only_error_at(report, "copies.0.site").message
    assert "same site as destination" in message and "ams" in message.lower()


def test_two_buckets_at_one_provider_are_one_site(tmp_path):
    policy = with_copies(tmp_path, s3_copy(tmp_path, endpoint="https://s3.nl-ams.scw.cloud",
                                           region="nl-ams", country="NL",
                                           bucket="another-bucket"))
    report = report_for(tmp_path, policy)
    assert "s3.nl-ams.scw.cloud" in only_error_at(report, "copies.0.site").message


def test_named_sites_decide_for_one_host(tmp_path):
    policy = sftp_policy(tmp_path)
    policy["destination"]["site"] = "dc-a"
    policy["copies"] = [sftp_copy(tmp_path, host=policy["destination"]["host"], port=2222,
                                  site="dc-b")]
    assert report_for(tmp_path, policy).valid
    del policy["copies"][0]["site"]
    assert errors_at(report_for(tmp_path, policy), "copies.0.site")


def test_copies_at_one_site_with_each_other_are_invalid(tmp_path):
    report = report_for(tmp_path, with_copies(
        tmp_path, sftp_copy(tmp_path, id="fra", site="fra-1"),
        s3_copy(tmp_path, id="fra2", site="FRA-1")))
    assert "same site as copy fra" in only_error_at(report, "copies.1.site").message


def test_local_repositories_are_all_at_this_machine(tmp_path):
    policy = s3_policy(tmp_path)
    policy["destination"] = {"type": "local", "country": "NL", "path": "/mnt/a/acme-zorg"}
    policy["copies"] = [{"type": "local", "country": "NL", "path": "/mnt/b/acme-zorg"}]
    report = report_for(tmp_path, policy)
    assert "this machine" in only_error_at(report, "copies.0.site").message
    policy["destination"]["site"] = "room-1"
    policy["copies"][0]["site"] = "room-2"
    assert report_for(tmp_path, policy).valid


def test_copy_ids_are_unique_and_not_misleading_numbers(tmp_path):
    report = report_for(tmp_path, with_copies(
        tmp_path, sftp_copy(tmp_path, id="fra"), s3_copy(tmp_path, id="fra", site="x")))
    assert "used twice" in only_error_at(report, "copies.1.id").message
    report = report_for(tmp_path, with_copies(
        tmp_path, sftp_copy(tmp_path, id="2"), s3_copy(tmp_path, site="x")))
    assert "ambiguous" in only_error_at(report, "copies.0.id").message
    report = report_for(tmp_path, with_copies(tmp_path, sftp_copy(tmp_path, id="Fra!")))
    assert errors_at(report, "copies.0.id")


def test_a_copy_never_shares_another_tenants_repository(tmp_path):
    first = with_copies(tmp_path, sftp_copy(tmp_path))
    second = sftp_policy(tmp_path, "other-zorg")
    second["destination"]["host"] = "backup02.offsite.example.de"
    second["destination"]["path"] = "/srv/backup/acme-zorg"
    reports = validate_files([write_policy(tmp_path, first), write_policy(tmp_path, second)])
    assert "never share a repository" in only_error_at(reports[0], "copies.0").message
    assert "copy 1" in only_error_at(reports[1], "destination").message
