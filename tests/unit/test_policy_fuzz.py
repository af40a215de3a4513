"""validate_file keeps its promise for any content: a report, never an exception."""

from __future__ import annotations

import string

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
