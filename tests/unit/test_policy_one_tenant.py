"""A command for one tenant validates only that tenant's policy in full, yet the rules
between files (one tenant per repository, no local repository inside another tenant's
source or the other way round) must still see every other file of the directory: each
conflict `bkp policy validate` reports for a tenant is reported by `bkp backup TENANT`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bkp.policy import load_policies, policy_files, validate_files
from tests.unit.test_policy import local_policy, s3_policy, sftp_policy, write_policy


@pytest.fixture
def fleet(tmp_path, monkeypatch) -> Path:
    """Tenants with every kind of conflict between files, and bystanders without one,
    written as YAML, as JSON and with YAML anchors (read by different cheap readers)."""
    monkeypatch.setenv("BKP_TEST_PW_GAMMA", "x")
    policies = tmp_path / "policies"
    policies.mkdir()
    # The same sftp repository spelled two ways.
    write_policy(policies, sftp_policy(tmp_path, "beta"))
    spelled = sftp_policy(tmp_path, "delta")
    spelled["destination"]["host"] = "BACKUP01.offsite.example.de."
    spelled["destination"]["path"] = "/srv/backup//delta/../beta/."
    write_policy(policies, spelled)
    # A local repository inside another tenant's source; that tenant is written as JSON.
    victim = s3_policy(tmp_path, "acme")
    victim["sources"] = [str(tmp_path / "acme-data")]
    (policies / "acme.yaml").write_text(json.dumps(victim, indent=2))
    intruder = local_policy(tmp_path, "gamma")
    intruder["destination"]["path"] = str(tmp_path / "acme-data" / "stash")
    write_policy(policies, intruder)
    # A source inside another tenant's local repository, the source behind a YAML anchor.
    keeper = local_policy(tmp_path, "keeper")
    keeper["destination"]["path"] = str(tmp_path / "backup" / "keeper")
    write_policy(policies, keeper)
    nested = local_policy(tmp_path, "nested")
    nested["destination"]["path"] = str(tmp_path / "backup" / "nested")
    nested["sources"] = ["SOURCE"]
    text = yaml.safe_dump(nested, sort_keys=False).replace(
        "- SOURCE", f"- &inside {tmp_path / 'backup' / 'keeper' / 'data'}")
    (policies / "nested.yaml").write_text(text + "description: *inside\n")
    # The same s3 bucket, one of the two files with another error as well.
    write_policy(policies, s3_policy(tmp_path, "s3-one"))
    other = s3_policy(tmp_path, "s3-two")
    other["destination"]["bucket"] = "s3-one-backup"
    other["classification"] = "unknown"
    write_policy(policies, other)
    # Bystanders: a local repository beside everyone, an s3 bucket of its own, and a
    # file no cheap reader understands.
    beside = local_policy(tmp_path, "beside")
    beside["destination"]["path"] = str(tmp_path / "backup-beside")
    beside["sources"] = [str(tmp_path / "beside-data")]
    write_policy(policies, beside)
    write_policy(policies, s3_policy(tmp_path, "alone"))
    (policies / "broken.yaml").write_text("tenant: broken\ndestination: [unclosed\n")
    return policies


def full_errors(policies: Path) -> dict[str, list]:
    return {report.tenant: report.errors for report in validate_files(policy_files(policies))}


def one_tenant_errors(policies: Path, tenant: str) -> list:
    _, invalid = load_policies(policies, [tenant])
    return invalid[0].errors if invalid else []


def test_the_fleet_has_the_conflicts_it_is_meant_to(fleet):
    # The comparison below would pass vacuously if no file conflicted.
    errors = full_errors(fleet)
    shared = "never share a repository"
    assert any(shared in p.message for p in errors["beta"])
    assert any(shared in p.message for p in errors["delta"])
    assert any("tenant acme" in p.message for p in errors["gamma"])
    assert any("tenant nested" in p.message for p in errors["keeper"])
    assert any(shared in p.message for p in errors["s3-one"])
    assert not errors["acme"] and not errors["beside"] and not errors["alone"]


@pytest.mark.parametrize("tenant", ["beta", "delta", "acme", "gamma", "keeper", "nested",
                                    "s3-one", "s3-two", "beside", "alone", "broken"])
def test_a_one_tenant_command_reports_what_validating_the_directory_reports(fleet, tenant):
    assert one_tenant_errors(fleet, tenant) == full_errors(fleet)[tenant]


def test_a_conflict_with_another_file_refuses_the_one_tenant_command(fleet):
    policies, invalid = load_policies(fleet, ["gamma"])
    assert policies == []
    assert "acme-data" in invalid[0].errors[0].message
    policies, invalid = load_policies(fleet, ["delta"])
    assert policies == [] and "beta.yaml" in invalid[0].errors[0].message


def test_other_files_are_not_validated_in_full_without_a_possible_conflict(fleet,
                                                                           monkeypatch):
    import bkp.policy

    validated = []
    real = bkp.policy.validate_file
    monkeypatch.setattr(bkp.policy, "validate_file",
                        lambda path: validated.append(Path(path).stem) or real(path))
    load_policies(fleet, ["alone"])
    assert sorted(validated) == ["alone", "broken"]  # broken: the cheap read cannot tell
    validated.clear()
    load_policies(fleet, ["gamma"])
    assert sorted(validated) == ["acme", "broken", "gamma"]
