"""The docs cannot lie: every command, option, policy key, exit code and quoted message in
README.md, docs/ and runbooks/ is checked against the program itself (its click command
tree, its policy schema, its error classes and the strings in its source)."""

from __future__ import annotations

import ast
import json
import re

import click
import pytest

from bkp import errors, policy
from bkp.cli import cli
from tests import docs

SOURCE = docs.REPO_ROOT / "bkp"


# ---------------------------------------------------------------- commands and options

def _option_names(command: click.Command) -> dict[str, click.Parameter]:
    names = {"--help": None, "-h": None}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                names[name] = param
    return names


def _placeholder(word: str) -> bool:
    """A word the reader replaces: TENANT, [FILE...], <kept anchor>, $T."""
    return bool(re.fullmatch(r"[\[<]?[A-Z][A-Z0-9_]*(\.\.\.)?[\]>]?|[\[<].*|\$\w+|ARGS\.\.\.",
                             word))


def _check_options(command: click.Command, words: list[str], path: str) -> list[str]:
    problems, names, index = [], _option_names(command), 0
    while index < len(words):
        word = words[index]
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\d+", word):
            name = word.split("=", 1)[0]
            if re.fullmatch(r"-v+", name) and "-v" in names:
                name = "-v"
            param = names.get(name, False)
            if param is False:
                problems.append(f"`{path}` has no option {name}")
            elif (param is not None and not param.is_flag and not param.count
                  and "=" not in word):
                index += 1  # its value
        index += 1
    return problems


def check_invocation(args: list[str]) -> list[str]:
    """Problems of one documented `bkp ARGS`: commands that do not exist, unknown options."""
    from bkp.cli.media import CertificateGroup
    from bkp.cli.report import ReportGroup

    command: click.Command = cli
    path = "bkp"
    globals_end = 0
    while globals_end < len(args) and args[globals_end].startswith("-"):
        globals_end += 1
        if args[globals_end - 1] in docs.GLOBAL_OPTIONS_WITH_VALUE:
            globals_end += 1
    problems = _check_options(cli, args[:globals_end], path)
    words = args[globals_end:]
    while isinstance(command, click.Group) and words:
        word = words[0]
        if word in ("-h", "--help") or _placeholder(word):
            return problems
        if word in command.commands:
            command, path, words = command.commands[word], f"{path} {word}", words[1:]
        elif isinstance(command, CertificateGroup):
            command, path = command.commands["show"], f"{path} show"
        elif isinstance(command, ReportGroup):  # `bkp report TENANT...`
            command, path = command.commands["make"], f"{path} make"
        else:
            return [*problems, f"`{path}` has no command {word!r}"]
    return problems + _check_options(command, words, path)


def _all_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for page in docs.PAGES:
        for block in docs.blocks(page):
            if block.language in ("sh", "bash", ""):
                found += [(block.where, args)
                          for args in docs.bkp_invocations_in_shell(block.text)]
        found += [(str(page.relative_to(docs.REPO_ROOT)), args)
                  for args in docs.bkp_invocations_in_prose(docs.prose(page))]
    return found


def test_docs_name_many_commands():
    # The extraction itself must keep working, or every check below would pass vacuously.
    commands = {" ".join(args[:2]) for _, args in _all_invocations()}
    assert {"policy validate", "init --all", "audit verify", "certificate verify"} <= commands


def test_every_documented_command_and_option_exists():
    problems = [f"{where}: bkp {' '.join(args)}: {problem}"
                for where, args in _all_invocations() for problem in check_invocation(args)]
    assert not problems, "\n".join(problems)


def test_the_checker_refuses_what_does_not_exist():
    assert check_invocation(["backup", "--all"]) == []
    assert check_invocation(["certificate", "17", "--format", "pdf"]) == []
    assert check_invocation(["report", "acme-zorg", "--format", "pdf", "-o", "x.pdf"]) == []
    assert check_invocation(["report", "--from", "2026-01-01", "--colour"])
    assert check_invocation(["--policies", "/x", "init", "$T"]) == []
    assert check_invocation(["backups", "--all"])
    assert check_invocation(["audit", "verfy"])
    assert check_invocation(["backup", "--everything"])
    assert check_invocation(["--colour", "status"])


def test_every_command_has_a_section_in_commands_md():
    text = (docs.REPO_ROOT / "docs" / "commands.md").read_text()
    documented = set(re.findall(r"^### `bkp ([a-z -]+?)(?: [A-Z\[-]|`)", text, re.M))
    documented |= {name for line in re.findall(r"^### (.*)$", text, re.M)
                   for name in re.findall(r"`bkp ([a-z][a-z -]*[a-z])", line)}
    missing = [path for path in _command_paths(cli, "") if path not in documented]
    assert not missing, f"commands without a section in docs/commands.md: {missing}"


def _command_paths(group: click.Group, prefix: str) -> list[str]:
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            paths += _command_paths(command, path + " ")
        elif not command.hidden:
            paths.append(path)
    return paths


def test_every_option_of_every_command_is_documented():
    text = (docs.REPO_ROOT / "docs" / "commands.md").read_text()
    sections = _sections(text)
    problems = []
    for path in _command_paths(cli, ""):
        section = next((title + body for title, body in sections.items()
                        if re.search(rf"`bkp {re.escape(path)}\b", title)), "")
        command = _command_at(path)
        for param in command.params:
            if (isinstance(param, click.Option) and param.name not in ("as_json", "help")
                    and not any(opt in section for opt in param.opts)):
                problems.append(f"bkp {path} {param.opts[-1]}")
    for param in cli.params:
        if isinstance(param, click.Option) and not any(o in text for o in param.opts):
            problems.append(f"bkp {param.opts[-1]}")
    assert not problems, f"options missing from docs/commands.md: {problems}"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _command_at(path: str) -> click.Command:
    command = cli
    for word in path.split():
        command = command.commands[word]
    return command


def test_json_fields_of_the_contract_are_documented():
    contract = json.loads((SOURCE / "contract_schema.json").read_text())
    sections = _sections((docs.REPO_ROOT / "docs" / "commands.md").read_text())
    problems = []
    for command, schema in contract["commands"].items():
        body = "\n".join(text for title, text in sections.items()
                         if re.search(rf"`bkp {re.escape(command)}\b", title))
        for field in _required_fields(schema, contract["$defs"]):
            if f'"{field}"' not in body:
                problems.append(f"bkp {command}: {field}")
    assert not problems, f"contract fields missing from docs/commands.md: {problems}"


def _required_fields(schema: dict, defs: dict, depth: int = 0) -> set[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    fields = set(schema.get("required", []))
    if depth < 2:
        for name, sub in schema.get("properties", {}).items():
            if name in fields:
                item = sub.get("items", sub) if isinstance(sub, dict) else {}
                fields |= _required_fields(item, defs, depth + 1)
    return fields


# ---------------------------------------------------------------- policy keys

def _schema_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, sub in node.get("properties", {}).items():
        keys.add(prefix + name)
        keys |= _schema_keys(sub, f"{prefix}{name}.")
        if isinstance(sub.get("items"), dict):  # a list of mappings: `databases[].name`
            keys |= _schema_keys(sub["items"], f"{prefix}{name}[].")
    return keys


def _documented_policy_keys() -> dict[str, list[str]]:
    rows = {}
    for table in docs.tables(docs.REPO_ROOT / "docs" / "policy.md"):
        if table.header[:1] == ["key"]:
            for row in table.rows:
                key = re.fullmatch(r"`([a-z_.\[\]]+)`", row[0])
                assert key, f"docs/policy.md: a key row without a `key`: {row}"
                rows[key.group(1)] = row
    return rows


def _copy_key_of_a_destination(key: str) -> bool:
    """`copies[].host` is `destination.host`: a copy has exactly the keys of a destination,
    documented once (docs/policy.md says so in the row of `copies`)."""
    name = key.removeprefix("copies[].")
    return name != key and name in policy.schema()["properties"]["destination"]["properties"]


def test_every_policy_key_is_documented_and_exists():
    schema_keys = {key for key in _schema_keys(policy.schema())
                   if not _copy_key_of_a_destination(key)}
    documented = set(_documented_policy_keys())
    assert not documented - schema_keys, f"not in the schema: {documented - schema_keys}"
    assert not schema_keys - documented, f"not in docs/policy.md: {schema_keys - documented}"


def test_documented_defaults_are_the_schema_defaults():
    header = next(t.header for t in docs.tables(docs.REPO_ROOT / "docs" / "policy.md")
                  if t.header[:1] == ["key"])
    column = header.index("default")
    problems = []
    for key, row in _documented_policy_keys().items():
        node = policy.schema()
        for part in key.split("."):
            name = part.removesuffix("[]")
            node = node["properties"][name]
            if part != name:
                node = node["items"]
        shown = row[column].strip("`")
        expected = json.dumps(node["default"]) if "default" in node else "—"
        if shown != expected:
            problems.append(f"{key}: docs say {shown}, the schema {expected}")
    assert not problems, problems


def test_required_keys_are_documented_as_required():
    header = next(t.header for t in docs.tables(docs.REPO_ROOT / "docs" / "policy.md")
                  if t.header[:1] == ["key"])
    column = header.index("required")
    rows = _documented_policy_keys()
    for key in policy.schema()["required"]:
        assert rows[key][column] == "yes", key


# ---------------------------------------------------------------- exit codes

def _exit_codes_of_the_program() -> dict[int, str]:
    codes = {0: "ok", 130: "interrupted"}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.BkpError):
            codes.setdefault(value.exit_code, value.__name__)
    return codes


def test_exit_code_table_matches_the_error_classes():
    table = next(t for t in docs.tables(docs.REPO_ROOT / "docs" / "commands.md")
                 if t.header == ["code", "meaning"])
    documented = {int(row[0]) for row in table.rows}
    assert documented == set(_exit_codes_of_the_program())


def test_exit_codes_in_help_match_the_docs():
    text = cli.help or ""
    table = next(t for t in docs.tables(docs.REPO_ROOT / "docs" / "commands.md")
                 if t.header == ["code", "meaning"])
    for row in table.rows:
        if row[0] not in ("0", "130"):
            first_words = " ".join(row[1].split()[:2]).split(" (")[0]
            assert f"{row[0]} {first_words}" in text.replace("\n", " ").replace("  ", " ") \
                or f"{row[0]} " in text, row


# ---------------------------------------------------------------- quoted messages

PLACEHOLDER = re.compile(r"\.\.\.|…|\b[A-Z][A-Z0-9_]*\b")
FIELD = re.compile(r"\{[^{}]*\}")
ERROR_CODES = {"OperationError": 1, "UsageError": 2, "PolicyError": 3, "SafetyError": 4,
               "VerificationError": 5, "_error": 3}


def _string_templates() -> list[tuple[list[str], int | None, str]]:
    """Every string in bkp's source, as its literal segments (f-string fields and format
    fields cut out, module constants such as EEA_RULE put in, backticks dropped), with the
    exit code of the error it is raised in."""
    found = []
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        constants = _module_constants(tree)
        for node, code in _strings_with_codes(tree, None):
            found.append((_segments(node, constants), code,
                          f"{path.relative_to(docs.REPO_ROOT)}:{node.lineno}"))
    return found


def _module_constants(tree: ast.Module) -> dict[str, str]:
    constants = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            constants[node.targets[0].id] = node.value.value
    return constants


def _strings_with_codes(node: ast.AST, code: int | None):
    if isinstance(node, ast.Call):
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        if name in ERROR_CODES:
            code = ERROR_CODES[name]
        elif name == "_cause":
            given = node.args[3] if len(node.args) > 3 else None
            code = ERROR_CODES.get(getattr(given, "id", "OperationError"))
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant)
                                           and isinstance(node.value, str)):
        yield node, code
        return
    for child in ast.iter_child_nodes(node):
        yield from _strings_with_codes(child, code)


def _segments(node: ast.AST, constants: dict[str, str]) -> list[str]:
    if isinstance(node, ast.Constant):
        parts = FIELD.split(node.value)
    else:
        parts, current = [], ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                current += value.value
            elif isinstance(value.value, ast.Name) and value.value.id in constants:
                current += constants[value.value.id]
            else:
                parts.append(current)
                current = ""
        parts.append(current)
        parts = [piece for part in parts for piece in FIELD.split(part)]
    return [part.replace("`", "") for part in parts]


def _fragments(message: str) -> list[str]:
    # Punctuation next to a placeholder may belong to a string around the one quoted.
    pieces = [p.strip(" \t()[],:;.'\"") for p in PLACEHOLDER.split(message.replace("`", ""))]
    return [p for p in pieces if len(p.replace(" ", "")) >= 4]


def _quoted_messages() -> list[tuple[str, str, str | None]]:
    """(page, message, documented exit code) from every table whose first column is a
    message: the runbooks' failure tables."""
    found = []
    for page in docs.PAGES:
        for table in docs.tables(page):
            if not table.header or "message" not in table.header[0]:
                continue
            exit_column = table.header.index("exit") if "exit" in table.header else None
            for row in table.rows:
                code = row[exit_column] if exit_column is not None else None
                # A remark in brackets after a message, "(on `destination.region`)", is
                # not part of it.
                cell = re.sub(r"\s\((?:on|also|with|row)\b[^()]*\)", "", row[0])
                for message in docs.code_spans(cell):
                    found.append((str(page.relative_to(docs.REPO_ROOT)), message, code))
    return found


def match_message(message: str, templates) -> tuple[bool, set[int | None]]:
    """Whether bkp can print `message` (each literal fragment found in one string of the
    source, or failing that in some string), and the exit codes of the strings found."""
    fragments = _fragments(message)
    if not fragments:
        return True, set()
    whole = [code for segments, code, _ in templates
             if all(any(f in s for s in segments) for f in fragments)]
    if whole:
        return True, set(whole)
    found_each = all(any(any(f in s for s in segments) for segments, _, _ in templates)
                     for f in fragments)
    return found_each, set()


@pytest.fixture(scope="module")
def templates():
    return _string_templates()


def test_runbooks_quote_many_messages():
    assert len(_quoted_messages()) > 20


def test_every_quoted_message_is_printed_by_bkp(templates):
    problems = []
    for page, message, code in _quoted_messages():
        found, codes = match_message(message, templates)
        if not found:
            problems.append(f"{page}: `{message}` is not in bkp's source")
        elif code and code.isdigit() and codes - {None} and int(code) not in codes:
            problems.append(f"{page}: `{message}` exits {sorted(codes - {None})}, not {code}")
    assert not problems, "\n".join(problems)


def test_the_message_check_can_fail(templates):
    assert match_message("host key mismatch for H:PORT: the server offers", templates)[0]
    assert not match_message("host key changed for H: refuse and investigate", templates)[0]
    found, codes = match_message("bucket B does not exist at ENDPOINT; create it in region "
                                 "R first", templates)
    assert found and codes == {1}


# ---------------------------------------------------------------- links

def test_docs_never_link_outside_the_repository():
    for page in docs.PAGES:
        text = page.read_text()
        assert "../shared" not in text and "/work/shared" not in text, page
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_runnable_blocks_are_shell():
    for page in docs.PAGES:
        for block in docs.blocks(page):
            if docs.RUNNABLE in block.info.split():
                assert block.runnable, f"{block.where}: only sh/bash blocks can be runnable"


