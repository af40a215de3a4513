"""The contract's JSON Schema is itself valid and names only commands bkp has."""

import json
from importlib import resources

import click
from jsonschema import Draft202012Validator

from bkp.cli import cli
from tests import contract


def commands_of(group: click.Group, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        names.add(full)
        if isinstance(command, click.Group):
            names |= commands_of(command, f"{full} ")
    return names


def test_the_schema_is_a_valid_json_schema():
    schema = json.loads(resources.files("bkp").joinpath("contract_schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    for document in schema["commands"].values():
        Draft202012Validator.check_schema({"$defs": schema["$defs"], **document})


def test_every_contract_command_exists():
    schema = json.loads(resources.files("bkp").joinpath("contract_schema.json").read_text())
    assert set(schema["commands"]) <= commands_of(cli)


def test_command_names_are_read_from_argv():
    assert contract.command_of(["audit", "verify", "--anchor", "ab"]) == "audit verify"
    assert contract.command_of(["--home", "/x", "backup", "t1"]) == "backup"
    assert contract.command_of(["policy", "schema"]) is None


def test_a_document_missing_a_contract_field_is_caught():
    good = {"runs": [{"tenant": "t", "status": "ok", "snapshot_id": "ab", "files": 1,
                      "bytes_added": 2, "duration_s": 0.1, "error": None}]}
    contract.check(["backup", "t", "--json"], json.dumps(good))
    broken = {"runs": [{**good["runs"][0], "status": "interrupted"}]}
    try:
        contract.check(["backup", "t", "--json"], json.dumps(broken))
    except AssertionError as exc:
        assert "outside the contract" in str(exc)
    else:
        raise AssertionError("a status outside ok|failed passed the contract check")
