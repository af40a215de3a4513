"""The fast yes/no schema check (bkp.schema_accepts) answers as jsonschema does: a policy it
calls valid is one jsonschema calls valid, and the other way round. bkp takes only its
"yes" (a "no" is explained by jsonschema), so a wrong "yes" would let an invalid policy
through: this differential test is what allows the shortcut."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bkp import schema_accepts
from bkp.policy import _published_schema, _validator, ecma_pattern
from tests.unit.test_policy_fuzz import json_like, scalars

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SETTINGS = settings(max_examples=1500, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _bases() -> list[dict]:
    bases = [yaml.safe_load(path.read_text()) for path in sorted(POLICIES.glob("*.yaml"))]
    richer = copy.deepcopy(bases[0])
    richer["copies"] = [
        {"id": "fra", "type": "rest", "country": "DE", "url": "https://backup.example.de/r",
         "credentials_file": "/etc/bkp/r.cred", "site": "fra1"},
        {"type": "sftp", "country": "NL", "host": "sftp.example.nl", "user": "bkp",
         "path": "/srv/b", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
         "identity_file": "/etc/bkp/id"}]
    richer["databases"] = [
        {"name": "dossiers", "type": "postgresql", "host": "/run/postgresql",
         "user": "bkp_ro"},
        {"name": "web", "type": "mariadb", "host": "db.example.nl", "port": 3306,
         "user": "ro", "password_file": "/etc/bkp/db.pw", "sslmode": "verify-full",
         "ca_file": "/etc/bkp/db-ca.pem"}]
    richer["retention"] = {"last": 3, "keep_until": "2033-12-31", "legal_hold": False}
    richer["timeout_minutes"] = 90
    richer["monitoring"] = {"healthcheck_url": "https://hc.example.nl/ping/x"}
    return [*bases, richer]


BASES = _bases()


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _paths(inner, (*prefix, index))


def _schema_keys(node, found=None):
    found = set() if found is None else found
    if isinstance(node, dict):
        for key, inner in node.items():
            if key == "properties" and isinstance(inner, dict):
                found.update(inner)
            _schema_keys(inner, found)
    elif isinstance(node, list):
        for inner in node:
            _schema_keys(inner, found)
    return found


KEYS = sorted(_schema_keys(_published_schema()))
values = st.one_of(scalars, json_like, st.sampled_from(
    ["s3", "sftp", "rest", "local", "NL", "DE", "US", "postgresql", "mariadb", 0, -1, 1.5,
     True, 1e300, float("nan"), "2033-12-31", "0 2 * * *", "acme\n", "a" * 70, [], {}]))


@st.composite
def mutated_policies(draw):
    policy = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(policy))[1:]
        path = draw(st.sampled_from(paths))
        parent = policy
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if action == "set":
            parent[path[-1]] = draw(values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(values)
        elif isinstance(parent, list):
            parent.append(draw(values))
    return policy


def jsonschema_says(value) -> bool:
    return _validator().is_valid(value)


def fast_says(value) -> bool | None:
    return schema_accepts.accepts(_published_schema(), value, ecma_pattern)


def test_the_example_policies_are_valid_both_ways():
    for base in BASES:
        assert jsonschema_says(base) and fast_says(base) is True, base


@SETTINGS
@given(policy=mutated_policies())
def test_same_answer_as_jsonschema_for_changed_policies(policy):
    assert fast_says(policy) == jsonschema_says(policy)


@SETTINGS
@given(value=json_like)
def test_same_answer_as_jsonschema_for_any_value(value):
    assert fast_says(value) == jsonschema_says(value)


def test_a_keyword_it_does_not_know_is_no_answer():
    assert schema_accepts.accepts({"type": "object", "dependentRequired": {}}, {},
                                  ecma_pattern) is None
    assert schema_accepts.accepts({"$ref": "#/x"}, 1, ecma_pattern) is None


def _installation_validators():
    from bkp import installation

    return [installation._validator(), installation._destination_validator()]


INSTALLATION_BASE = {
    "organization": "Hosting BV",
    "evidence": {"destination": {"type": "sftp", "country": "NL", "host": "e.example.nl",
                                 "user": "bkp", "path": "/srv/evidence",
                                 "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
                                 "identity_file": "/etc/bkp/id"},
                 "password_file": "/etc/bkp/evidence.key"},
    "results": {"inbox": {"type": "local", "country": "NL", "path": "/srv/inbox"},
                "keys": "/etc/bkp/result-keys"},
    "kubernetes": {"image": "registry.example.nl/bkp:0.1.0", "namespace": "bkp",
                   "tenants": {"acme-zorg": {
                       "sources": {"nfs": {"server": "nfs01.example.nl", "path": "/x"}},
                       "sources_root": "/srv/tenants/acme-zorg"}},
                   "inbox": {"nfs": {"server": "nfs01.example.nl", "path": "/inbox"}}},
}


@st.composite
def mutated_settings(draw):
    settings_ = copy.deepcopy(INSTALLATION_BASE)
    paths = list(_paths(settings_))[1:]
    path = draw(st.sampled_from(paths))
    parent = settings_
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        parent[path[-1]] = draw(values)
    else:
        parent[draw(st.sampled_from([*KEYS, "people", "operators", "kubernetes"]))] = draw(
            values)
    return settings_


@SETTINGS
@given(document=st.one_of(mutated_settings(), json_like))
def test_same_answer_as_jsonschema_for_bkp_yaml(document):
    """bkp.yaml's schema and the destination schema it checks the evidence and inbox
    against go through the same shortcut."""
    for validator in _installation_validators():
        fast = schema_accepts.accepts(validator.schema, document, ecma_pattern)
        assert fast == validator.is_valid(document)


def test_bkp_s_own_schemas_use_only_keywords_it_knows():
    """Otherwise the shortcut silently never applies (bkp.yaml's minProperties did so)."""
    from bkp import installation

    for document in (_published_schema(), installation._schema(),
                     installation._destination_schema()):
        assert schema_accepts.accepts(document, {}, ecma_pattern) is not None
