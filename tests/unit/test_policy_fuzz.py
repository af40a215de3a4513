"""validate_file keeps its promise for any content: a report, never an exception."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bkp.policy import PolicyReport, schema, validate_file

# tmp_path is shared by the examples of one test on purpose: each overwrites the same file.
# No example database: the tree stays clean, and every run explores afresh.
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Bias towards the policy's own key names and YAML's punctuation so that inputs reach the
# schema and the cross-field rules, not only the YAML parser.
KNOWN_KEYS = sorted({*schema()["properties"], *schema()["properties"]["destination"]["properties"],
                     "password", "secret_key", "<<"})
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["s3", "sftp", "local", "NL", "CH", "eu-west-2", "/srv/a", "relative",
                     "http://127.0.0.1:9000", "https://x.blob.core.windows.net",
                     "https://u:p@s3.example.eu", "ssh-ed25519 AAAA", "0 2 * * *", "\x00",
                     "/etc/bkp/\x00key"]),
)
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=6)),
    max_leaves=15,
)
yaml_alphabet = st.sampled_from(list(string.printable) + list(":-[]{}&*!|>'\"%@`#,?~\t\n"
                                                             "\x00\x07é€\ufeff"))
yamlish_text = st.one_of(st.text(), st.text(alphabet=yaml_alphabet, max_size=200))


def check(report: PolicyReport) -> None:
    assert isinstance(report, PolicyReport)
    assert report.valid == (report.policy is not None)
    assert all(isinstance(problem.path, str) for problem in report.errors + report.warnings)
    assert not any("internal error" in problem.message for problem in report.errors)
    report.to_json()


@SETTINGS
@given(text=yamlish_text)
def test_any_text_gives_a_report(tmp_path, text):
    path = tmp_path / "acme.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(validate_file(path))


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_any_bytes_give_a_report(tmp_path, raw):
    path = tmp_path / "acme.yaml"
    path.write_bytes(raw)
    check(validate_file(path))


@SETTINGS
@given(value=json_like)
def test_any_json_like_value_gives_a_report(tmp_path, value):
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(value))
    check(validate_file(path))


@settings(SETTINGS, max_examples=100)
@given(patch=st.dictionaries(keys, json_like, max_size=3),
       destination_patch=st.dictionaries(keys, json_like, max_size=3))
def test_valid_policy_with_arbitrary_changes_gives_a_report(tmp_path, patch, destination_patch):
    [policy] = schema()["examples"]
    policy["tenant"] = "acme"
    policy.update(patch)
    if isinstance(policy.get("destination"), dict):
        policy["destination"].update(destination_patch)
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(policy))
    check(validate_file(path))


def leaf_paths(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, (*path, key))
    else:
        yield path


SFTP_EXAMPLE = schema()["properties"]["destination"]["examples"][1]
LEAVES = sorted({*leaf_paths(schema()["examples"][0]),
                 *(("destination", key) for key in SFTP_EXAMPLE)})


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(LEAVES), scalars, min_size=1, max_size=4),
       sftp=st.booleans())
def test_valid_policy_with_arbitrary_leaf_values_gives_a_report(tmp_path, changes, sftp):
    [policy] = schema()["examples"]
    policy["tenant"] = "acme"
    if sftp:
        policy["destination"] = dict(SFTP_EXAMPLE)
    for (*parents, last), value in changes.items():
        target = policy
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(policy))
    check(validate_file(path))


def _read_with(loader, text):
    """What bkp's YAML reading keeps of a document: data, repeated keys, node lines (the
    lines of a libyaml read are never used: bkp asks a Python read for them)."""
    from bkp.policy import _duplicate_keys, _to_plain

    reader = loader(text)
    try:
        root = reader.get_single_node()
        duplicates = sorted(_duplicate_keys(root), key=repr)
        data = _to_plain(reader.construct_document(root) if root is not None else None)
    finally:
        reader.dispose()
    lines = []
    pending = [root] if root is not None else []
    while pending and len(lines) < 500:
        node = pending.pop()
        lines.append((type(node).__name__, node.start_mark.line))
        if isinstance(node, yaml.MappingNode):
            pending += [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            pending += node.value
    return repr(data), duplicates, lines


@SETTINGS
@given(text=yamlish_text)
def test_libyaml_and_the_python_parser_agree_where_both_read(text):
    """bkp reads policies with libyaml (fast) and asks PyYAML's Python parser only when
    libyaml refuses (its refusals are the ones bkp quotes) or for text where the two were
    seen to read differently. Where both read a document, bkp must get the same values
    whichever it used. (libyaml reads a few documents the Python parser refuses, such as
    `a: >#`: bkp takes libyaml's reading of those.)"""
    from bkp.policy import _load_yaml

    try:
        expected = _read_with(yaml.SafeLoader, text)
    except Exception:
        return
    _root, duplicates, data = _load_yaml(text)
    assert repr(data) == expected[0] and sorted(duplicates, key=repr) == expected[1]


def test_bkp_reads_policies_with_libyaml():
    """The speed (a thousand policies in `bkp status`) depends on it: the wheel has it."""
    from bkp import policy

    assert yaml.__with_libyaml__ and policy._FAST_LOADER is yaml.CSafeLoader


def _lines(loader, text):
    """Each node's line, or "empty" for an empty value (bkp asks the Python parser for the
    line of those)."""
    reader = loader(text)
    try:
        root = reader.get_single_node()
    finally:
        reader.dispose()
    found, pending = [], [root] if root is not None else []
    while pending:
        node = pending.pop()
        empty = isinstance(node, yaml.ScalarNode) and node.value == ""
        found.append("empty" if empty else (type(node).__name__, node.start_mark.line))
        if isinstance(node, yaml.MappingNode):
            pending += [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            pending += node.value
    return found


@SETTINGS
@given(text=st.one_of(yamlish_text, json_like.map(lambda v: yaml.safe_dump(
    v, default_flow_style=False, allow_unicode=True))))
def test_libyaml_and_the_python_parser_put_nodes_on_the_same_lines(text):
    """A problem's line comes from libyaml's nodes when it read the file; bkp relies on
    those lines being the Python parser's for every node but an empty value."""
    from bkp.policy import _PYTHON_PARSER_ONLY

    if _PYTHON_PARSER_ONLY.search(text):
        return
    try:
        expected = _lines(yaml.SafeLoader, text)
        found = _lines(yaml.CSafeLoader, text)
    except Exception:
        return
    assert found == expected


@SETTINGS
@given(value=json_like, flow=st.sampled_from([False, True, None]))
def test_bkp_reads_the_values_pyyaml_reads(value, flow):
    """bkp builds plain trees itself (faster than PyYAML's constructor) and leaves the rest
    to the constructor: either way, the values PyYAML's safe loader reads."""
    from bkp.policy import _load_yaml, _to_plain

    try:
        text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
        expected = _to_plain(yaml.safe_load(text))
    except Exception:
        return
    for fast in (True, False):
        _root, _duplicates, data = _load_yaml(text, fast)
        assert repr(data) == repr(expected)


@pytest.mark.parametrize("text", [
    "1: a\ntrue: b\nnull: c\n2.5: d\n",                      # keys that are not text
    "a: 2033-12-31\nb: [2033-12-31]\n",                       # dates: the constructor's
    "a: 1\nb: {c: 1, c: 2}\na: 3\nl: [{x: 1, x: 2}, {y: 1}]\n",  # repeated keys, nested
    "1: a\n'1': b\n",                                          # the same key, typed twice
    "base: &b {x: 1}\nuse: *b\nmerged: {<<: *b, y: 2}\n",      # aliases and merge keys
    "a: !!str 1\nb: !!binary aGk=\n",                          # tags
    "[" * 40 + "]" * 40 + "\n",                                # deep, still allowed
])
def test_the_one_walk_reads_what_the_constructor_and_the_copy_read(text):
    from bkp.policy import _load_yaml

    expected = _read_with(yaml.SafeLoader, text)
    for fast in (True, False):
        _root, duplicates, data = _load_yaml(text, fast)
        assert (repr(data), sorted(duplicates, key=repr)) == expected[:2]
