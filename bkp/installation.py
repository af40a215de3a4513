"""Installation settings: `bkp.yaml` (BKP_CONFIG, --config; default /etc/bkp/bkp.yaml).

Optional. It holds what belongs to the installation rather than to a tenant: the
organisation printed on certificates and reports, the evidence destination where bkp keeps
an off-site copy of its own records, and monitoring. It is validated with the same rules
and the same error format as a policy: the evidence destination is a destination like a
tenant's (EEA, encrypted transport, pinned keys, private secret files).
"""

from __future__ import annotations

import functools
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bkp import access
from bkp import policy as policies
from bkp.errors import PolicyError
from bkp.names import shown

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

DEFAULT_CONFIG = Path("/etc/bkp/bkp.yaml")
# The evidence repository is worked on like a tenant's; this name can never be a tenant id
# (those start with a letter or digit), so its cache and ssh files cannot collide.
EVIDENCE_NAME = "_evidence"


@dataclass(frozen=True)
class Evidence:
    destination: policies.Destination
    password_file: Path | None = None
    password_command: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class ClusterTenant:
    """Where one tenant's data is in a Kubernetes cluster (`kubernetes.tenants.TENANT`)."""

    sources: dict  # a Kubernetes volume source: {nfs: ...}, {persistentVolumeClaim: ...}, ...
    sources_root: str | None = None  # the policy path at the volume's root
    repository: dict | None = None  # a local destination's volume
    run_as_user: int | None = None


@dataclass(frozen=True)
class Cluster:
    """`kubernetes` in bkp.yaml: what `bkp schedule --format kubernetes` renders with."""

    image: str | None = None
    namespace: str = "bkp"
    run_as_user: int = 10001  # the image's bkp user
    catalog_claim: str = "bkp-catalog"
    tenants: dict = field(default_factory=dict)  # tenant id -> ClusterTenant
    inbox: dict | None = None  # the volume of a shared-directory results inbox


@dataclass(frozen=True)
class Results:
    """`results` in bkp.yaml: where jobs in pods leave their signed results (the inbox) and
    the directory of the tenants' result keys (TENANT.result.key, TENANT.result.pub)."""

    inbox: policies.Destination
    keys: Path

    def private_key(self, tenant: str) -> Path:
        return self.keys / f"{tenant}.result.key"

    def public_key(self, tenant: str) -> Path:
        return self.keys / f"{tenant}.result.pub"


@dataclass(frozen=True)
class Installation:
    file: Path | None = None  # None: no bkp.yaml (everything optional)
    organization: str | None = None
    evidence: Evidence | None = None
    healthcheck_url: str | None = None
    prometheus_textfile: Path | None = None
    operators: tuple = ()  # of access.Operator; empty: nobody registered
    # bkp.yaml says `operators:` in so many words (an empty list turns access control off
    # on purpose); without the key, a bkp that once knew operators refuses to act
    operators_declared: bool = False
    cluster: Cluster = field(default_factory=Cluster)
    results: Results | None = None
    location: str | None = None  # the organisation's site, printed with its people
    people: tuple = ()  # of Person: who performs, witnesses, validates, with their details

    def person(self, name: str | None, organization: str | None = None) -> dict | None:
        """A person's details for a record (NIST SP 800-88 Rev. 2: name, title,
        organisation, location, contact), from `people`, else `operators`, else the name
        alone with the organisation's own details. None for no name."""
        if not name:
            return None
        key = access.name_key(name)
        found = next((p for p in self.people if access.name_key(p.name) == key), None)
        operator = next((o for o in self.operators if access.name_key(o.name) == key), None)
        details = {"name": name, "title": None, "organization": None, "location": None,
                   "contact": None}
        if operator is not None:
            details.update(title=operator.title, contact=operator.contact)
        if found is not None:
            details.update({k: v for k, v in found.as_json().items() if v is not None
                            and k != "name"})
        details["organization"] = details["organization"] or organization or \
            self.organization
        details["location"] = details["location"] or self.location
        return details


@dataclass(frozen=True)
class Person:
    """Someone named on sanitization records (bkp.yaml `people`): performers, witnesses,
    validators, a destruction service's staff."""

    name: str
    title: str | None = None
    organization: str | None = None
    location: str | None = None
    contact: str | None = None

    def as_json(self) -> dict:
        return {"name": self.name, "title": self.title, "organization": self.organization,
                "location": self.location, "contact": self.contact}


@functools.cache
def schema() -> dict:
    """The JSON Schema of bkp.yaml; the evidence destination is checked with the policy's
    own destination schema (see `_destination_findings`)."""
    tenant = policies.schema()
    password = {key: tenant["properties"][key] for key in policies.PASSWORD_KEYS}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bkp installation settings (bkp.yaml)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "organization": {"description": "The organisation, printed on certificates and "
                                            "reports.", "type": "string", "minLength": 1},
            "location": {"description": "Where the organisation performs sanitization (the "
                                        "bench's site and address), printed on "
                                        "certificates with its people.",
                         "type": "string", "minLength": 1},
            "people": {
                "description": "People named on sanitization and destruction records "
                               "(NIST SP 800-88 Rev. 2): performers, witnesses, "
                               "validators, destruction services. Looked up by name, so "
                               "operators do not retype their details.",
                "type": "array",
                "items": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {
                        "name": {"description": "The name as given to --witness, "
                                                "--validator or BKP_OPERATOR.",
                                 "type": "string", "minLength": 1, "maxLength": 80},
                        "title": {"description": "Job title.", "type": "string"},
                        "organization": {"description": "Their organisation (default: "
                                                        "`organization`).",
                                         "type": "string"},
                        "location": {"description": "Where they work (default: "
                                                    "`location`).", "type": "string"},
                        "contact": {"description": "Phone or e-mail.", "type": "string"},
                    },
                },
            },
            "evidence": {
                "description": "The off-site home of bkp's own records (`bkp evidence "
                               "backup`): a restic repository at an EEA destination.",
                "type": "object", "additionalProperties": False,
                "required": ["destination"],
                "oneOf": [{"required": [key]} for key in policies.PASSWORD_KEYS],
                "properties": {"destination": {"type": "object"}, **password},
            },
            "operators": {
                "description": "The people who may act, each bound to the OS user(s) they "
                               "log in as and to a personal SSH key that signs approvals. "
                               "Without this list anyone with access acts under the name "
                               "they give.",
                "type": "array",
                "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["name", "os_users", "role", "ssh_key"],
                    "properties": {
                        "name": {"description": "The person's name, recorded on every event.",
                                 "type": "string", "minLength": 1, "maxLength": 80},
                        "os_users": {"description": "OS accounts this person logs in as.",
                                     "type": "array", "minItems": 1,
                                     "items": {"type": "string",
                                               "pattern": "^[a-z_][a-z0-9_.-]{0,31}$",
                                               "x-pattern-message": "must be an OS user "
                                                                    "name"}},
                        "role": {"description": "operator (backups, wipes, offboarding), "
                                                "validator (validates wipes), auditor "
                                                "(reads only), admin (everything)",
                                 "enum": ["operator", "validator", "auditor", "admin"]},
                        "ssh_key": {"description": "The person's public SSH key (one line, "
                                                   "as in authorized_keys); approvals are "
                                                   "signed with it by `ssh-keygen -Y sign`.",
                                    "type": "string", "minLength": 1},
                        "title": {"type": "string", "description": "Job title, printed on "
                                                                   "certificates."},
                        "contact": {"type": "string", "description": "Phone or e-mail."},
                    },
                },
            },
            "kubernetes": cluster_schema(),
            "results": {
                "description": "The results inbox: jobs in pods (`bkp schedule --format "
                               "kubernetes`) leave each run's signed result there, and `bkp "
                               "catalog sync --all` ingests them into this catalog.",
                "type": "object", "additionalProperties": False,
                "required": ["inbox", "keys"],
                "properties": {
                    "inbox": {"description": "Where the results go: a destination of type "
                                             "s3 (an EEA bucket), sftp (a directory on an "
                                             "EEA server, pinned host key) or local (a "
                                             "shared directory), with a destination's keys "
                                             "and rules.", "type": "object"},
                    "keys": {**ABSOLUTE, "description": "Directory of the tenants' result "
                             "keys: TENANT.result.key (private, into the tenant's Secret) "
                             "and TENANT.result.pub (`bkp catalog result-keys`)."},
                },
            },
            "monitoring": {
                "description": "Monitoring of `bkp run`, instead of options in the schedule.",
                "type": "object", "additionalProperties": False,
                "properties": {
                    "healthcheck_url": tenant["properties"]["monitoring"]["properties"][
                        "healthcheck_url"],
                    "prometheus_textfile": {
                        "description": "node_exporter textfile to write after each run.",
                        "type": "string", "pattern": "^/",
                        "x-pattern-message": "must be an absolute path"},
                },
            },
        },
    }


# Kubernetes names: a DNS-1123 label (namespaces, claims) and an image reference.
DNS_LABEL = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
ABSOLUTE = {"type": "string", "pattern": "^/", "x-pattern-message": "must be an absolute path"}


def _volume_schema(what: str) -> dict:
    """The Kubernetes volume sources bkp mounts: the fields it passes on as written."""
    text = {"type": "string", "minLength": 1}
    return {
        "description": f"{what}: exactly one Kubernetes volume source, as in a Pod's "
                       "`volumes` entry without its name.",
        "type": "object", "minProperties": 1, "maxProperties": 1,
        "additionalProperties": False,
        "properties": {
            "nfs": {"type": "object", "additionalProperties": False,
                    "required": ["server", "path"],
                    "properties": {"server": text, "path": ABSOLUTE}},
            "persistentVolumeClaim": {"type": "object", "additionalProperties": False,
                                      "required": ["claimName"],
                                      "properties": {"claimName": {
                                          "type": "string", "pattern": DNS_LABEL}}},
            "hostPath": {"type": "object", "additionalProperties": False,
                         "required": ["path"],
                         "properties": {"path": ABSOLUTE,
                                        "type": {"enum": ["Directory", "DirectoryOrCreate"]}}},
            "csi": {"type": "object", "additionalProperties": False, "required": ["driver"],
                    "properties": {"driver": text, "volumeAttributes": {
                        "type": "object", "additionalProperties": {"type": "string"}}}},
        },
    }


def cluster_schema() -> dict:
    user = {"type": "integer", "minimum": 0, "maximum": 2147483647}
    return {
        "description": "For `bkp schedule --format kubernetes`: one CronJob per tenant and "
                       "task on a cluster.",
        "type": "object", "additionalProperties": False,
        "properties": {
            "image": {"description": "The bkp image (default for --image).",
                      "type": "string", "pattern": r"^[a-z0-9][^\s]*$",
                      "x-pattern-message": "must be an image reference without blanks"},
            "namespace": {"description": "The namespace (default for --namespace; bkp).",
                          "type": "string", "pattern": DNS_LABEL,
                          "x-pattern-message": "must be a Kubernetes namespace name"},
            "run_as_user": {**user, "description": "The uid the jobs run as (default 10001, "
                            "the image's bkp user); 0: root with only the capabilities "
                            "reading the data needs."},
            "catalog_claim": {"description": "The PersistentVolumeClaim of the central "
                                             "catalog (the gatherer's BKP_HOME; default "
                                             "bkp-catalog).",
                              "type": "string", "pattern": DNS_LABEL,
                              "x-pattern-message": "must be a Kubernetes name"},
            "inbox": _volume_schema("The volume of a local (shared-directory) results "
                                    "inbox, mounted at results.inbox.path"),
            "tenants": {
                "description": "Per tenant: the volume its sources are on.",
                "type": "object",
                "propertyNames": {"pattern": "^[a-z0-9][a-z0-9-]{1,62}$"},
                "additionalProperties": {
                    "type": "object", "additionalProperties": False,
                    "required": ["sources"],
                    "properties": {
                        "sources": _volume_schema("The volume holding the tenant's sources "
                                                  "(mounted read-only)"),
                        "sources_root": {**ABSOLUTE, "description": "The policy path that "
                                         "is the volume's root (default: the sources' "
                                         "common directory)."},
                        "repository": _volume_schema("A local destination's volume"),
                        "run_as_user": {**user, "description": "This tenant's uid, instead "
                                        "of kubernetes.run_as_user."},
                    },
                },
            },
        },
    }


@functools.cache
def _schema() -> dict:
    return schema()


@functools.cache
def _destination_schema() -> dict:
    tenant = policies.schema()
    return {"type": "object", "properties": {"destination": tenant["properties"]["destination"]}}


@functools.cache
def _validator() -> Draft202012Validator:
    return policies.validator_for(_schema())


@functools.cache
def _destination_validator() -> Draft202012Validator:
    return policies.validator_for(_destination_schema())


# Rules of a policy that hold for the evidence repository too (on a stand-in document with
# the evidence destination and password keys at the top, as in a policy).
EVIDENCE_RULES = (
    policies._rule_values_are_one_line,
    policies._rule_no_inline_secrets,
    policies._rule_data_rests_in_eea,
    policies._rule_transport_encrypted,
    policies._rule_secret_files_private,
    policies._rule_password_env_set,
    policies._rule_rest_destination,
)


def _evidence_document(data: dict) -> dict:
    evidence = data.get("evidence")
    if not isinstance(evidence, dict):
        return {}
    # The evidence repository keeps everything: an append-only one needs no credential
    # that may delete.
    return {**evidence, "retention": {"legal_hold": True}}


def _findings(data: dict, file: Path) -> list:
    findings = []
    for error in policies.schema_errors(_schema(), data, _validator):
        findings += policies._explain(error, data)
    stand_in = _evidence_document(data)
    if isinstance(stand_in.get("destination"), dict):
        for error in policies.schema_errors(_destination_schema(), stand_in,
                                       _destination_validator):
            findings += [_under_evidence(f) for f in policies._explain(error, stand_in)]
        for rule in EVIDENCE_RULES:
            findings += [_under_evidence(f) for f in rule(stand_in, file)]
        if stand_in["destination"].get("type") == "local":
            findings.append(policies._warning(
                ("evidence", "destination", "type"),
                "a local evidence destination is not off-site: losing this server loses bkp's "
                "records too. Use sftp, s3 or rest"))
    findings += _inbox_findings(data, file)
    findings += _operator_findings(data.get("operators"))
    findings += _people_findings(data.get("people"))
    monitoring = data.get("monitoring")
    if isinstance(monitoring, dict):
        findings += policies._rule_no_inline_secrets({"monitoring": monitoring}, file)
        findings += policies._rule_transport_encrypted({"monitoring": monitoring}, file)
    # The evidence part was checked above, under its own path.
    findings += policies._rule_values_are_one_line(
        {key: value for key, value in data.items() if key != "evidence"}, file)
    return findings


# Where plain objects can be written, listed and read without a restic repository.
INBOX_TYPES = ("s3", "sftp", "local")


def _inbox_findings(data: dict, file: Path) -> list:
    """The inbox is a destination like a tenant's (EEA, encrypted transport, private
    credentials); results hold no tenant data, but they are evidence."""
    results = data.get("results")
    if not isinstance(results, dict) or not isinstance(results.get("inbox"), dict):
        return []
    stand_in = {"destination": results["inbox"]}
    findings = []
    for error in policies.schema_errors(_destination_schema(), stand_in,
                                       _destination_validator):
        findings += [_under_results(f) for f in policies._explain(error, stand_in)]
    for rule in (policies._rule_values_are_one_line, policies._rule_no_inline_secrets,
                 policies._rule_data_rests_in_eea, policies._rule_transport_encrypted,
                 policies._rule_secret_files_private):
        findings += [_under_results(f) for f in rule(stand_in, file)]
    kind = results["inbox"].get("type")
    if kind not in INBOX_TYPES and isinstance(kind, str):
        findings.append(policies._error(("results", "inbox", "type"),
                                        f"a results inbox is s3, sftp or local, not {kind}"))
    return findings


def _under_results(finding):
    path = finding.path[1:] if finding.path[:1] == ("destination",) else finding.path
    return policies._Finding(("results", "inbox", *path), finding.message, finding.warning)


def _operator_findings(operators) -> list:
    """Names and keys identify one person each: a shared key would let one person approve
    as two."""
    if not isinstance(operators, list):
        return []
    findings, names, keys = [], {}, {}
    for index, person in enumerate(operators):
        if not isinstance(person, dict):
            continue
        name, key = person.get("name"), person.get("ssh_key")
        if isinstance(name, str):
            problem = name_problem(name)
            if problem:
                findings.append(policies._error(("operators", index, "name"), problem))
            elif access.name_key(name) in names:
                first = names[access.name_key(name)]
                findings.append(policies._error(
                    ("operators", index, "name"),
                    f"{shown(name)} reads as operator {first + 1}'s name: each person once, "
                    f"told apart by more than case, spaces or invisible characters"))
            names.setdefault(access.name_key(name), index)
        if isinstance(key, str):
            problem = ssh_key_problem(key)
            if problem:
                findings.append(policies._error(("operators", index, "ssh_key"), problem))
                continue
            blob = key.split()[1]
            if blob in keys:
                findings.append(policies._error(
                    ("operators", index, "ssh_key"),
                    f"the same key as operator {keys[blob] + 1}: an approval must prove one "
                    f"person, so every person has their own key"))
            keys.setdefault(blob, index)
    return findings


def _people_findings(people) -> list:
    """A name looked up twice would give one person another's details."""
    if not isinstance(people, list):
        return []
    findings, names = [], {}
    for index, person in enumerate(people):
        name = person.get("name") if isinstance(person, dict) else None
        if not isinstance(name, str):
            continue
        problem = name_problem(name)
        if problem:
            findings.append(policies._error(("people", index, "name"), problem))
        elif access.name_key(name) in names:
            findings.append(policies._error(
                ("people", index, "name"),
                f"{shown(name)} reads as person {names[access.name_key(name)] + 1}'s name: "
                f"each person once"))
        names.setdefault(access.name_key(name), index)
    return findings


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a person on every event; None when it can. Control
    characters are the one-line rule's; here what would make one name read as another."""
    if not name.strip():
        return "is blank: a person's name is recorded on every event they act in"
    if name != name.strip():
        return f"{shown(name)} starts or ends with spaces; write the name as it is read"
    hidden = next((c for c in name if unicodedata.category(c) == "Cf"), None)
    if hidden is not None:
        return (f"{shown(name)} contains an invisible formatting character (U+"
                f"{ord(hidden):04X}): a name must read as what it is")
    return None


def ssh_key_problem(line: str) -> str | None:
    """Why `line` is not a usable public SSH key for signing approvals; None when it is."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(" ".join(line.split()[:2]).encode())
    except (ValueError, IndexError, TypeError):
        return ("is not a public SSH key (expected one line such as `ssh-ed25519 AAAA... "
                "name`, as in ~/.ssh/id_ed25519.pub)")
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown types
        return f"is not a usable public SSH key: {exc}"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 3072:
        return f"an RSA key of {key.key_size} bits is too weak; use ed25519 (or RSA >= 3072)"
    return None


def _under_evidence(finding):
    return policies._Finding(("evidence", *finding.path), finding.message, finding.warning)


def validate(path: Path) -> policies.PolicyReport:
    """Validate bkp.yaml; every problem becomes a Problem (as for a policy), none raised."""
    report = policies.PolicyReport(file=Path(path), tenant=None,
                                   destination_path=("evidence", "destination"))
    try:
        document = policies._parse_yaml(policies._read_text(report.file))
    except policies._Unusable as unusable:
        report.errors = [unusable.problem]
        return report
    data = document.data
    if data is None:
        return report  # an empty file: no settings
    if not isinstance(data, dict):
        report.errors = [policies.Problem(
            "", "bkp.yaml is a mapping of keys (organization, evidence, operators, kubernetes, "
                "monitoring)", document.line_of(()))]
        return report
    findings = [policies._error(p, "written twice: the later value silently replaces the "
                                   "earlier one; keep one") for p in document.duplicate_keys]
    findings += _findings(data, report.file)
    report.errors = policies._problems(document, [f for f in findings if not f.warning])
    report.warnings = policies._problems(document, [f for f in findings if f.warning])
    report._document = document
    if not report.errors and isinstance(data.get("evidence"), dict):
        report.destination = policies._build_destination(data["evidence"]["destination"])
    return report


def _build(data: dict, file: Path) -> Installation:
    evidence = data.get("evidence")
    monitoring = data.get("monitoring") or {}
    return Installation(
        file=file,
        organization=data.get("organization"),
        evidence=Evidence(
            destination=policies._build_destination(evidence["destination"]),
            password_file=Path(evidence["password_file"]) if evidence.get("password_file")
            else None,
            password_command=evidence.get("password_command"),
            password_env=evidence.get("password_env")) if evidence else None,
        healthcheck_url=monitoring.get("healthcheck_url"),
        prometheus_textfile=Path(monitoring["prometheus_textfile"])
        if monitoring.get("prometheus_textfile") else None,
        operators=tuple(_operator(person) for person in data.get("operators") or ()),
        operators_declared="operators" in data,
        cluster=_cluster(data.get("kubernetes") or {}),
        results=Results(inbox=policies._build_destination(data["results"]["inbox"]),
                        keys=Path(data["results"]["keys"])) if data.get("results") else None,
        location=data.get("location"),
        people=tuple(Person(**person) for person in data.get("people") or ()),
    )


def _cluster(data: dict) -> Cluster:
    defaults = Cluster()
    return Cluster(
        image=data.get("image"), namespace=data.get("namespace", defaults.namespace),
        run_as_user=data.get("run_as_user", defaults.run_as_user),
        catalog_claim=data.get("catalog_claim", defaults.catalog_claim),
        inbox=data.get("inbox"),
        tenants={tenant: ClusterTenant(
            sources=entry["sources"], sources_root=entry.get("sources_root"),
            repository=entry.get("repository"), run_as_user=entry.get("run_as_user"))
            for tenant, entry in (data.get("tenants") or {}).items()})


def _operator(person: dict):
    from bkp.access import Operator

    return Operator(name=person["name"], os_users=tuple(person["os_users"]),
                    role=person["role"], ssh_key=" ".join(person["ssh_key"].split()[:2]),
                    title=person.get("title"), contact=person.get("contact"))


def config_path(option: str | None) -> tuple[Path, bool]:
    """The bkp.yaml to read, and whether the operator named it (then it must exist)."""
    named = option or os.environ.get("BKP_CONFIG")
    return (Path(named), True) if named else (DEFAULT_CONFIG, False)


def load(option: str | None = None) -> Installation:
    """The installation settings; PolicyError (exit 3) listing every problem when invalid."""
    path, named = config_path(option)
    if not path.exists():
        if named:
            raise PolicyError(f"the installation settings {path} do not exist (named by "
                              f"--config or BKP_CONFIG)")
        return Installation()
    report = validate(path)
    if report.errors:
        lines = "\n".join(f"  {p.describe(path)}" for p in report.errors)
        raise PolicyError(f"the installation settings {path} are invalid:\n{lines}",
                          problems=report.errors)
    data: Any = report._document.data if report._document else None
    return _build(data, path) if isinstance(data, dict) else Installation(file=path)


def evidence_policy(installation: Installation) -> policies.Policy:
    """The evidence repository as destinations/ and restic.py know a repository: through a
    policy. It holds bkp's records, which name tenants: treated as sensitive."""
    evidence = installation.evidence
    if evidence is None:
        raise PolicyError("no evidence destination is configured: add `evidence:` to "
                          "bkp.yaml (see runbooks/disaster-recovery.md)")
    return policies.Policy(
        tenant=EVIDENCE_NAME, file=installation.file or DEFAULT_CONFIG,
        purpose="bkp evidence", classification="sensitive", sources=(),
        destination=evidence.destination, password_file=evidence.password_file,
        password_command=evidence.password_command, password_env=evidence.password_env,
        schedule=policies.Schedule(backup=None, drill=None),
        retention=policies.Retention(legal_hold=True))
