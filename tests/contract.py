"""Every --json document the test suite sees is checked against the contract's schema
(bkp/contract_schema.json): a command that drops or renames a contract field fails the
test that ran it, whatever that test was about."""

from __future__ import annotations

import functools
import json
from importlib import resources

from jsonschema import Draft202012Validator

GLOBAL_OPTIONS_WITH_VALUE = {"--policies", "--home", "--operator", "--config"}


@functools.cache
def _schema() -> dict:
    return json.loads(resources.files("bkp").joinpath("contract_schema.json").read_text())


@functools.cache
def _validator(command: str) -> Draft202012Validator:
    schema = _schema()
    return Draft202012Validator({
        "$defs": schema["$defs"],
        "anyOf": [schema["commands"][command], {"$ref": "#/$defs/error_document"}]})


def command_of(args: list[str]) -> str | None:
    """The contract's name of the command in `args` (e.g. "audit verify"), if it has one."""
    words, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
    commands = _schema()["commands"]
    for size in (2, 1):
        name = " ".join(words[:size])
        if name in commands:
            return name
    return None


def check(args: list[str], stdout: str) -> None:
    if "--json" not in args:
        return
    command = command_of(args)
    if command is None or not stdout.strip():
        return
    document = json.loads(stdout)
    errors = sorted(_validator(command).iter_errors(document), key=lambda e: e.path)
    assert not errors, (f"`bkp {' '.join(args)}` printed a document outside the contract: "
                        + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
