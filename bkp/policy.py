"""Tenant policies: load YAML, validate against the schema, apply cross-field rules.

The result is a frozen Policy; nothing downstream reads YAML.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import functools
import ipaddress
import json
import math
import os
import posixpath
import re
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from bkp import eea, schema_accepts
from bkp.cron import croniter
from bkp.errors import PolicyError, UsageError
from bkp.names import TENANT_ID_RULE, control_character, is_tenant_id, shown
from bkp.secrets import ca_file_problem, secret_file_problem

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError


@dataclass(frozen=True)
class Destination:
    type: str  # s3 | sftp | rest | local
    country: str
    site: str | None = None  # the datacenter; a tenant's copies stand at other sites
    # s3
    endpoint: str | None = None
    bucket: str | None = None
    region: str | None = None
    prefix: str = ""
    credentials_file: Path | None = None
    credentials_profile: str = "default"
    # sftp
    host: str | None = None
    port: int = 22
    user: str | None = None
    host_key: str | None = None
    identity_file: Path | None = None
    # sftp and local
    path: str | None = None
    # rest (credentials_file holds one line user:password)
    url: str | None = None
    ca_file: Path | None = None
    append_only: bool = False
    maintenance_url: str | None = None
    maintenance_credentials_file: Path | None = None
    # s3: the bucket has S3 Object Lock with a default retention (checked by the preflight)
    object_lock: bool = False

    @property
    def immutable(self) -> bool:
        """Whether the nightly credential should be unable to delete: what every drill
        proves with a canary."""
        return self.append_only or self.object_lock

    @property
    def off_site(self) -> bool:
        return self.type != "local"

    @property
    def maintenance_location(self) -> str | None:
        """rest: where `bkp maintain` reaches an append_only repository (default: url)."""
        return self.maintenance_url or self.url

    def repository_identity(self) -> tuple:
        """What makes two repositories the same place (for the no-sharing rule and locks).

        Normalised, so one place spelled two ways is still one place: host case and a
        trailing dot, default ports, `//`, `/./`, `..` and trailing slashes."""
        if self.type == "s3":
            return ("s3", *_endpoint_identity(self.endpoint or ""), self.bucket,
                    _key_prefix_identity(self.prefix))
        if self.type == "sftp":
            return ("sftp", _host_identity(self.host or ""), self.port,
                    _path_identity(self.path or "/"))
        if self.type == "rest":
            # http and https to one host and port are one server: the scheme decides only
            # the default port.
            return ("rest", *_endpoint_identity(self.url or ""))
        return ("local", local_path_identity(self.path) if self.path else "")

    def server_identity(self) -> tuple:
        """sftp and rest: the one server (host and port) holding the repository."""
        if self.type == "rest":
            return _endpoint_identity(self.url or "")[:2]
        return (_host_identity(self.host or ""), self.port)

    def host_identity(self) -> str:
        """The machine (or provider) holding the repository, for the other-site rule where
        no site is named: two buckets at one S3 endpoint are one site, and every local
        repository is on this machine."""
        if self.type == "s3":
            return _endpoint_identity(self.endpoint or "")[0]
        if self.type == "rest":
            return _endpoint_identity(self.url or "")[0]
        if self.type == "sftp":
            return _host_identity(self.host or "")
        return "this machine"


def same_site(first: Destination, second: Destination) -> str | None:
    """Why two repositories stand at one site (one incident could destroy both), or None.
    Named sites decide between two places, never between one repository or one server and
    itself; otherwise the hosts are compared."""
    if first.repository_identity() == second.repository_identity():
        return "it is the same repository"
    if first.type == second.type and first.type in ("sftp", "rest") \
            and first.server_identity() == second.server_identity():
        return f"both are on server {_shown_server(second.server_identity())}, whatever " \
               "the site names say"
    if first.site and second.site:
        if first.site.casefold() == second.site.casefold():
            return f"both are at site {second.site}"
        return None
    if first.host_identity() == second.host_identity():
        where = second.host_identity()
        return ("both are on this machine" if where == "this machine" else
                f"both are on host {where} (no site named that tells them apart)")
    return None


@dataclass(frozen=True)
class Copy:
    """One more copy of the tenant's repository, at another site (`copies` in a policy)."""

    id: str  # stable name; without one in the policy, its position 1, 2, ...
    position: int  # 1-based, in the order of `copies`
    destination: Destination

    @property
    def label(self) -> str:
        return f"copy {self.id}"


LOOPBACK = "this machine"


def _host_identity(host: str) -> str:
    """One machine however it is spelled: case, a trailing dot, IPv6 forms, IPv4 in IPv6,
    the short IPv4 forms ssh accepts (127.1); every loopback name or address is this
    machine (where local repositories are too)."""
    host = host.strip("[]").rstrip(".").lower()
    address = _address(host)
    if address is None:
        return LOOPBACK if host == "localhost" or host.endswith(".localhost") else host
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return LOOPBACK if address.is_loopback else address.compressed


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)  # ::1 and 0:0::1 are one address
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:  # 127.1, 2130706433, 0x7f.1: what getaddrinfo (and so ssh) connects to
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _shown_server(server: tuple) -> str:
    host, port = server
    return f"{host} port {port}" if port else host


DEFAULT_PORTS = {"https": 443, "http": 80}


def _endpoint_identity(endpoint: str) -> tuple:
    """(host, port, path) of an endpoint URL; the scheme only decides the default port."""
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return (endpoint.strip().lower(),)  # not a URL: the validator says so
    return (_host_identity(parts.hostname or ""), port, _path_identity(parts.path or "/"))


def _path_identity(path: str) -> str:
    """A remote absolute path without `//`, `/./`, `..` or a trailing slash (lexically: the
    server's symlinks are not ours to follow). normpath keeps a leading `//`; it is dropped."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def _key_prefix_identity(prefix: str) -> str:
    # restic joins the prefix with path.Join, which cleans it the same way.
    return _path_identity(prefix).strip("/")


def local_path_identity(path: str) -> str:
    """A path on this machine as the kernel sees it: symlinks followed, `..` resolved."""
    if _resolved_paths is not None:
        return _resolved_once(_path_identity(path), _resolved_paths)
    return os.path.realpath(_path_identity(path))


def _resolved_once(path: str, resolved: dict[str, str]) -> str:
    """os.path.realpath of a normalized absolute path, with each directory on the way
    resolved once: a fleet's thousand repositories under one backup disk cost one lstat
    each, not one per component."""
    if path not in resolved:
        parent, name = posixpath.split(path)
        if not name or parent == path:
            resolved[path] = os.path.realpath(path)
        else:
            candidate = posixpath.join(_resolved_once(parent, resolved), name)
            try:
                link = stat.S_ISLNK(os.lstat(candidate).st_mode)
            except OSError:  # missing or unreadable: realpath too takes it as it stands
                link = False
            resolved[path] = os.path.realpath(candidate) if link else candidate
    return resolved[path]


# While a directory of policies is validated, each path is resolved once (a fleet names the
# same sources and backup disks a thousand times); at any other time, afresh.
_resolved_paths: dict[str, str] | None = None


@contextlib.contextmanager
def _paths_resolved_once() -> Iterator[None]:
    global _resolved_paths
    outer, _resolved_paths = _resolved_paths, ({} if _resolved_paths is None
                                               else _resolved_paths)
    try:
        yield
    finally:
        _resolved_paths = outer


DEFAULT_DATABASE_PORTS = {"postgresql": 5432, "mariadb": 3306}


@dataclass(frozen=True)
class Database:
    """One application database of the tenant, dumped consistently every night."""

    type: str  # postgresql | mariadb
    name: str
    host: str  # an absolute socket path, or a host name or address
    user: str
    port: int | None = None
    password_file: Path | None = None
    sslmode: str | None = None
    ca_file: Path | None = None

    @property
    def socket(self) -> bool:
        return self.host.startswith("/")

    @property
    def tcp_port(self) -> int:
        return self.port or DEFAULT_DATABASE_PORTS[self.type]

    @property
    def label(self) -> str:
        """How messages name it: `postgresql database zorgapp`."""
        return f"{self.type} database {self.name}"


@dataclass(frozen=True)
class Retention:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    legal_hold: bool = False
    keep_until: str | None = None  # YYYY-MM-DD: nothing may be erased before it

    def keep_rules(self) -> dict[str, int]:
        """The non-zero keep-* rules, in restic's order."""
        rules = {"last": self.last, "hourly": self.hourly, "daily": self.daily,
                 "weekly": self.weekly, "monthly": self.monthly, "yearly": self.yearly}
        return {k: v for k, v in rules.items() if v > 0}

    def promised_days(self, rpo_hours: float) -> int:
        """How far back the keep rules promise restore points, in days: the age of the
        oldest snapshot they keep when every night succeeded (`last` counts nights, one
        per RPO). An S3 Object Lock must protect at least this long, or a stolen nightly
        credential could delete restore points the policy promises. A legal hold without
        rules promises everything: a year, the longest a lock is asked to reach here."""
        spans = {"last": rpo_hours / 24, "hourly": 1 / 24, "daily": 1, "weekly": 7,
                 "monthly": 31, "yearly": 366}
        days = max((count * spans[rule] for rule, count in self.keep_rules().items()),
                   default=0)
        if self.legal_hold and not days:
            days = 365
        return max(1, math.ceil(days))


@dataclass(frozen=True)
class Schedule:
    backup: str | None = "0 2 * * *"
    drill: str | None = None


@dataclass(frozen=True)
class DrillSettings:
    sample: int = 20
    rto_minutes: int = 240


@dataclass(frozen=True)
class Monitoring:
    """Project addition: Healthchecks.io-style ping URL (start / success / fail)."""

    healthcheck_url: str | None = None


@dataclass(frozen=True)
class Policy:
    tenant: str
    file: Path
    purpose: str
    classification: str  # normal | sensitive
    sources: tuple[str, ...]
    destination: Destination
    description: str = ""
    exclude: tuple[str, ...] = ()
    password_file: Path | None = None
    password_command: str | None = None
    password_env: str | None = None
    schedule: Schedule = field(default_factory=Schedule)
    retention: Retention = field(default_factory=Retention)
    drill: DrillSettings = field(default_factory=DrillSettings)
    rpo_hours: float = 26
    timeout_minutes: int = 360  # project addition: a hung restic is killed after this
    monitoring: Monitoring = field(default_factory=Monitoring)
    databases: tuple[Database, ...] = ()
    copies: tuple[Copy, ...] = ()
    # Set on the view of a policy at one of its copies (`at_copy`): that copy's id.
    copy_id: str | None = None
    # The rules as written (canonical JSON of the YAML document): what a run is recorded
    # under, so that a change of the rules is on the record (bkp.evidence.policy_changes).
    document: str = field(default="{}", compare=False, repr=False)


def find_copy(policy: Policy, wanted: str) -> Copy:
    """A copy by its id, or by its 1-based position (`--copy 2`); UsageError otherwise."""
    wanted = wanted.strip()
    for copy in policy.copies:
        if copy.id == wanted:
            return copy
    if wanted.isdigit() and 1 <= int(wanted) <= len(policy.copies):
        return policy.copies[int(wanted) - 1]
    known = ", ".join(c.id for c in policy.copies)
    raise UsageError(f"tenant {policy.tenant} has no copy {shown(wanted)}: "
                     + (f"its copies are {known}" if known else "its policy lists no copies"))


def at_copy(policy: Policy, copy: Copy) -> Policy:
    """The tenant's policy as seen at one of its copies: the copy is the destination (the
    repository every command reads and writes), with the same password and rules."""
    import dataclasses

    return dataclasses.replace(policy, destination=copy.destination, copies=(),
                               copy_id=copy.id)


# --- validation -----------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]

# A policy is a few hundred bytes; anything far larger is not one, and aliases could
# otherwise expand a small file into an enormous document ("billion laughs").
MAX_POLICY_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 64

PASSWORD_KEYS = ("password_file", "password_command", "password_env")
KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
DESTINATION_SECRET_FILE_KEYS = ("credentials_file", "identity_file",
                                "maintenance_credentials_file")
SECRET_FILE_KEYS: tuple[KeyPath, ...] = (
    ("password_file",), *(("destination", key) for key in DESTINATION_SECRET_FILE_KEYS),
)
# URLs of a destination that carry tenant data (transport, EEA and no-inline-secret rules).
DESTINATION_URL_KEYS = ("endpoint", "url", "maintenance_url")
HOST_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")  # plus every ecdsa-sha2-* curve
SECRET_WORD = re.compile(
    r"(^|_)(password|passwd|passphrase|pass|pwd|secret|token|api_?key|private_?key|access_?key"
    r"|credential)s?(_|$)")
# Keys that name where a secret is kept, not the secret itself.
SECRET_REFERENCE_SUFFIX = re.compile(r"_(file|command|env|path|profile)$")
INLINE_SECRET_ADVICE = ("secrets are never written into a policy: use password_file, "
                        "password_command or password_env for the repository password, and "
                        "destination.credentials_file for S3 keys or a REST user:password")
COUNTRY = re.compile(r"[A-Z]{2}")
EEA_RULE = "tenant data must rest in the EEA (the EU states plus IS, LI, NO)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy, at a dotted key path ("" is the whole file)."""

    path: str
    message: str
    line: int | None = None

    def to_json(self) -> dict:
        return {"path": self.path, "message": self.message, "line": self.line}

    def describe(self, file: Path) -> str:
        """`file:line path: message`, the form operators and editors understand."""
        where = f"{file}:{self.line}" if self.line else str(file)
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass
class PolicyReport:
    """What validating one policy file found; `policy` is set only when it is valid."""

    file: Path
    tenant: str | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    policy: Policy | None = None
    # Known even when other parts are invalid, so the no-sharing rule still sees it.
    destination: Destination | None = field(default=None, repr=False)
    destination_path: tuple = ("destination",)  # where in the file the destination stands
    # (path, Destination) of each copy, for the rules between files
    copies: tuple = field(default=(), repr=False)
    sources: tuple[str, ...] = field(default=(), repr=False)
    _document: _Document | None = field(default=None, repr=False, compare=False)

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {
            "file": str(self.file),
            "tenant": self.tenant,
            "valid": self.valid,
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
        }

    def describe(self) -> list[str]:
        return [p.describe(self.file) for p in self.errors + self.warnings]

    def repositories(self) -> list[tuple[KeyPath, Destination]]:
        """Every repository of the file: the destination, then each copy."""
        first = [(self.destination_path, self.destination)] if self.destination else []
        return first + list(self.copies)

    def add_error(self, path: KeyPath, message: str) -> None:
        """An error found after validation (the cross-file rules) invalidates the policy."""
        line = self._document.line_of(path) if self._document else None
        self.errors = _tidy([*self.errors, Problem(_dotted(path), message, line)])
        self.policy = None


class _Unusable(Exception):
    """The file cannot be read as a policy at all; no further step can say anything."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


@dataclass(frozen=True)
class _Finding:
    path: KeyPath
    message: str
    warning: bool = False


def _error(path: KeyPath, message: str) -> _Finding:
    return _Finding(path, message)


def _warning(path: KeyPath, message: str) -> _Finding:
    return _Finding(path, message, warning=True)


@dataclass(frozen=True)
class _Document:
    """The parsed YAML (plain values, string keys) and its node tree, for line numbers."""

    data: Any
    root: yaml.Node | None
    duplicate_keys: tuple[KeyPath, ...] = ()
    # Read by libyaml: the lines of its nodes are the Python parser's (a differential fuzz
    # test holds it) except for an empty value at the end of the text, which is asked of a
    # second, Python read.
    text_read_fast: str | None = None

    @functools.cached_property
    def _read_exactly(self) -> _Document:
        return _parse_yaml(self.text_read_fast or "")

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the deepest node along path: a missing key points at its parent."""
        node = marked = self.root
        for key in path:
            child = _child(node, key)
            if child is None:
                break
            marked, node = child
        if (self.text_read_fast is not None and isinstance(marked, yaml.ScalarNode)
                and marked.value == ""):
            return self._read_exactly.line_of(path)
        return _line(marked)


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None and node.start_mark else None


def _child(node: yaml.Node | None, key: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """(node that marks the entry, value node); a mapping entry is marked by its key."""
    if isinstance(node, yaml.MappingNode):
        found = None
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(key):
                found = (key_node, value_node)  # the last one wins, as in the loaded data
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        item = node.value[key]
        return item, item
    return None


def _dotted(path: KeyPath) -> str:
    return ".".join(str(key) for key in path)


def _tidy(problems: list[Problem]) -> list[Problem]:
    """Once each, in file order."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line or 0, p.path))


# --- reading --------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        # Non-blocking: a named pipe in the policies directory must not hold bkp forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        _refuse_unless_regular(fd)
        with open(fd, "rb") as stream:
            raw = stream.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise _Unusable(Problem("", f"cannot read the policy file: {exc.strerror or exc}")) from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise _Unusable(Problem("", f"larger than {MAX_POLICY_BYTES} bytes: not a policy file"))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise _Unusable(Problem("", "not UTF-8 text: a policy is a UTF-8 YAML file", line)) from exc


def _refuse_unless_regular(fd: int) -> None:
    """A directory, pipe or device (or a file fstat cannot tell): closed again, and refused."""
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise _Unusable(Problem("", "not a regular file"))


def _parse_yaml(text: str, fast: bool = False) -> _Document:
    """`fast`: libyaml may read it (see _Document.text_read_fast)."""
    try:
        root, duplicates, data = _load_yaml(text, fast)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise _Unusable(Problem("", f"YAML syntax error: {message}",
                                mark.line + 1 if mark else None)) from exc
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise _Unusable(Problem("", f"not YAML text: {exc.reason} "
                                    f"(character {exc.character!r})", line)) from exc
    except RecursionError as exc:
        raise _Unusable(Problem("", "nested too deeply to be a policy")) from exc
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # Constructors raise plain errors too, e.g. for an impossible date like 2024-02-30.
        raise _Unusable(Problem("", f"cannot read a YAML value: {exc}")) from exc
    return _Document(data, root, tuple(duplicates), text if fast else None)


# libyaml reads a thousand policies about six times faster than PyYAML's Python parser
# (`bkp status` of a fleet reads them all). Both implement the same grammar, but word their
# refusals differently, and bkp quotes the Python parser's: a document libyaml refuses is
# read again by it. (libyaml reads a few odd documents the Python parser refuses, such as
# `a: >#`; bkp takes its reading.) Text where the two were seen to differ goes to the Python
# parser: characters its reader refuses, tabs (libyaml takes one for a space where the
# Python parser refuses it), tags (`!` on an empty value: '' for libyaml, null for it)
# and byte order marks past the start.
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)
_PYTHON_PARSER_ONLY = re.compile(f"[\t!\ufeff]|{yaml.reader.Reader.NON_PRINTABLE.pattern}")


def _load_yaml(text: str, fast: bool = True) -> tuple[yaml.Node | None, list[KeyPath], Any]:
    """The node tree (for lines), repeated keys, and the data as plain JSON-like values;
    safe tags only."""
    if fast and _FAST_LOADER is not None and not _PYTHON_PARSER_ONLY.search(text):
        try:
            return _load_yaml_with(_FAST_LOADER, text)
        except _Unusable:
            raise  # read, and refused for what it holds: the Python parser would agree
        except Exception:
            pass
    return _load_yaml_with(yaml.SafeLoader, text)


def _load_yaml_with(loader_class: type, text: str) -> tuple[yaml.Node | None, list[KeyPath],
                                                            Any]:
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        try:
            return _constructed(loader, root)
        except (KeyError, AttributeError):
            # how PyYAML's constructors fail on a value tagged as what it is not
            problem = _mistagged(root)
            if problem is None:
                raise
            raise _Unusable(problem) from None
    finally:
        loader.dispose()


def _constructed(loader, root: yaml.Node | None) -> tuple[yaml.Node | None, list[KeyPath], Any]:
    walk = _PlainWalk(loader)
    try:
        return root, walk.duplicates, walk.data(root, (), 0)
    except _NotPlain:
        pass
    # Before constructing: merge keys (<<) are flattened into the nodes by then.
    duplicates = list(_duplicate_keys(root))
    data = loader.construct_document(root) if root is not None else None
    return root, duplicates, _to_plain(data)


def _mistagged(root: yaml.Node | None) -> Problem | None:
    """The first value tagged !!bool or !!timestamp that is no such thing."""
    constructor = yaml.constructor.SafeConstructor
    found, seen = [], set()
    pending = [root] if root is not None else []
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue  # an alias
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            pending += [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            pending += node.value
        elif (node.tag == "tag:yaml.org,2002:bool"
              and node.value.lower() not in constructor.bool_values) or (
                node.tag == "tag:yaml.org,2002:timestamp"
                and not constructor.timestamp_regexp.match(node.value)):
            found.append(node)
    if not found:
        return None
    node = min(found, key=lambda n: n.start_mark.index)
    kind = node.tag.rsplit(":", 1)[1]
    return Problem("", f"cannot read a YAML value: {node.value!r} is tagged !!{kind} but is "
                       f"no {kind}", _line(node))


class _NotPlain(Exception):
    """A node the shortcut in _plain_data leaves to PyYAML's constructor."""


_STR_TAG, _MAP_TAG, _SEQ_TAG = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:map",
                                "tag:yaml.org,2002:seq")
_SCALAR_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                          "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"})


class _PlainWalk:
    """The data of a tree of plain mappings, lists and scalars, as PyYAML's safe constructor
    and _to_plain together make it, and the keys written twice, in one walk and a third of
    their time (a fleet's status reads a thousand policies). Aliases, merge keys, dates and
    other tags are left to them (_NotPlain)."""

    def __init__(self, loader):
        self.loader = loader
        self.duplicates: list[KeyPath] = []
        self.seen: set[int] = set()

    def data(self, node: yaml.Node | None, path: KeyPath, depth: int) -> Any:
        if node is None:
            return None
        if id(node) in self.seen:
            raise _NotPlain  # an alias: the constructor shares the object, and finds cycles
        self.seen.add(id(node))
        if len(self.seen) > MAX_VALUES or depth > MAX_DEPTH:
            raise _NotPlain  # _to_plain says why
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR_TAG:
                return node.value
            if node.tag in _SCALAR_TAGS:
                return self.loader.construct_object(node)
            raise _NotPlain
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            return [self.data(item, (*path, index), depth + 1)
                    for index, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            return self._mapping(node, path, depth)
        raise _NotPlain

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict:
        data: dict[Any, Any] = {}
        written: set[str] = set()
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode)
                    and (key_node.tag == _STR_TAG or key_node.tag in _SCALAR_TAGS)):
                raise _NotPlain  # a merge key, a complex key
            if key_node.value in written:
                self.duplicates.append((*path, key_node.value))
            written.add(key_node.value)
            key = self.data(key_node, path, depth + 1)
            data[key] = self.data(value_node, (*path, key_node.value), depth + 1)
        if all(type(key) is str for key in data):
            return data
        # As the constructor keys them first (1 and true are one key), then as text.
        return {_key_text(key): value for key, value in data.items()}


def _duplicate_keys(root: yaml.Node | None) -> Iterator[KeyPath]:
    """Paths of keys written twice in one mapping (merge keys `<<` excepted)."""
    seen_nodes: set[int] = set()
    pending: list[tuple[yaml.Node, KeyPath]] = [(root, ())] if root is not None else []
    while pending:
        node, path = pending.pop()
        if id(node) in seen_nodes:
            continue  # an alias: already checked, and may be recursive
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                    continue
                if key_node.value in keys:
                    yield (*path, key_node.value)
                keys.add(key_node.value)
                pending.append((value_node, (*path, key_node.value)))
        elif isinstance(node, yaml.SequenceNode):
            pending += [(item, (*path, index)) for index, item in enumerate(node.value)]


def _to_plain(data: Any) -> Any:
    """Copy into JSON-like values with string keys, refusing cyclic or exploding aliases."""
    count = 0

    def copy(value: Any, depth: int, ancestors: frozenset[int]) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise _Unusable(Problem("", "too large or nested too deeply to be a policy "
                                        "(YAML aliases expanding?)"))
        if isinstance(value, date):  # YAML's unquoted 2033-12-31: the date as written
            return value.isoformat()
        if not isinstance(value, dict | list):
            return value
        if id(value) in ancestors:
            raise _Unusable(Problem("", "a YAML alias contains itself: a policy cannot be "
                                        "recursive"))
        inner = ancestors | {id(value)}
        if isinstance(value, dict):
            return {_key_text(k): copy(v, depth + 1, inner) for k, v in value.items()}
        return [copy(v, depth + 1, inner) for v in value]

    return copy(data, 0, frozenset())


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)  # null, true, false: as the operator typed them
    return str(key)


# --- schema ---------------------------------------------------------------------------------

def schema() -> dict:
    """The published JSON Schema of a policy (a fresh copy: callers may change it)."""
    text = resources.files("bkp").joinpath("policy_schema.json").read_text(encoding="utf-8")
    document = json.loads(text)
    _fill_copies(document["properties"])
    return document


COPY_ID_SCHEMA = {
    "description": "Optional stable name of the copy, for `--copy ID` and status, so that "
                   "reordering copies renames nothing; default its 1-based position.",
    "examples": ["fra", "2"],
    "type": "string",
    "pattern": "^[a-z0-9][a-z0-9-]{0,31}$",
    "x-pattern-message": "must be 1-32 characters of a-z, 0-9 and '-', starting with a "
                         "letter or digit (e.g. fra)",
}


def _fill_copies(properties: dict) -> None:
    """A copy has exactly the keys and rules of `destination`, plus `id`: its schema is the
    destination's, so a key added to destinations holds for copies too."""
    item = json.loads(json.dumps(properties["destination"]))
    item["description"] = ("One copy: the keys and rules of destination (type, country, "
                           "site, and the keys of its type), plus an optional id.")
    item["examples"] = [{"id": "fra", "site": "fra-dc1", **example}
                        for example in item["examples"][:2]]
    item["properties"] = {"id": COPY_ID_SCHEMA, **item["properties"]}
    properties["copies"]["items"] = item


@functools.cache
def ecma_pattern(pattern: str) -> re.Pattern:
    """A schema pattern with its published (ECMA-262) meaning: `$` is the end of the value.

    Python's `$` also matches before a final newline, and jsonschema searches with Python's
    re, so `^[a-z0-9-]+$` would accept "acme\\n". Each `$` outside a character class
    becomes `\\Z`; ASCII-only classes, as in ECMA."""
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char == "$" and not in_class:
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out), re.ASCII)


def _pattern_rule(validator, pattern: str, instance: Any, node: dict):
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _validator_class() -> type:
    # jsonschema is imported only to explain a document that is not valid (a tenth of a
    # second of every command otherwise, a pod's among them): schema_accepts says yes.
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"pattern": _pattern_rule})


def validator_for(document: dict) -> Draft202012Validator:
    """A validator for a schema of bkp's (a policy, bkp.yaml): patterns with ECMA's `$`."""
    return _validator_class()(document)


def schema_errors(document: dict, data: Any,
                  validator: Callable[[], Draft202012Validator]) -> Iterator[ValidationError]:
    """The errors of `data` against the schema `document` (its `validator`, made only when
    needed); none, without asking jsonschema, when the fast check says the data is valid."""
    if schema_accepts.accepts(document, data, ecma_pattern):
        return iter(())
    return validator().iter_errors(data)


@functools.cache
def _validator() -> Draft202012Validator:
    return validator_for(_published_schema())


def _schema_node(path: KeyPath) -> dict:
    """The schema of the value at `path` ({} when the schema does not describe it)."""
    node = _published_schema()
    for key in path:
        if isinstance(key, int):
            node = node.get("items", {}) if isinstance(node.get("items"), dict) else {}
        else:
            node = node.get("properties", {}).get(key, {})
    return node


@functools.cache
def _published_schema() -> dict:
    """The schema, read once, for bkp's own lookups (never handed out: callers may change
    what schema() returns)."""
    return schema()


@functools.cache
def _destination_key_owners() -> dict[str, tuple[str, ...]]:
    """Which destination types each type-specific key belongs to, read from the schema."""
    destination = schema()["properties"]["destination"]
    owners: dict[str, list[str]] = {}
    for branch in destination["allOf"]:
        kind = branch["if"]["properties"]["type"]["const"]
        forbidden = set(branch["then"].get("properties", {}))
        for key in destination["properties"]:
            if key not in forbidden and key not in ("type", "country"):
                owners.setdefault(key, []).append(kind)
    return {key: tuple(kinds) for key, kinds in owners.items()}


def _schema_findings(data: Any) -> Iterator[_Finding]:
    # Valid: known a dozen times faster than by asking jsonschema (a fleet's status).
    for error in schema_errors(_published_schema(), data, _validator):
        yield from _explain(error, data)


def _explain(error: ValidationError, data: Any) -> Iterator[_Finding]:
    """Turn one jsonschema error into findings that say what to do, without echoing secrets."""
    path: KeyPath = tuple(error.absolute_path)
    rule = error.validator
    value = error.validator_value
    if rule == "required":
        yield from _explain_required(path, error, data)
    elif rule == "additionalProperties":
        yield from _explain_unknown_keys(path, error)
    elif rule == "not" and "then" in error.schema_path:
        yield _error(path, _wrong_destination_key(path, data))
    elif rule == "oneOf" and not path:
        yield from _explain_password_choice(data)
    elif rule == "type":
        yield _error(path, f"must be {_type_words(value)} (found {_type_name(error.instance)})")
    elif rule == "enum":
        choices = ", ".join(str(choice) for choice in value)
        yield _error(path, f"must be one of {choices} (found {_shown(error.instance)})")
    elif rule == "pattern":
        hint = error.schema.get("x-pattern-message") or f"must match {value}"
        yield _error(path, f"{hint} (found {_shown(error.instance)})")
    elif rule in BOUNDS:
        yield _error(path, f"must be {BOUNDS[rule]} {value} (found {_shown(error.instance)})")
    elif rule == "minItems":
        yield _error(path, f"must list at least {value} item(s)")
    elif rule == "minLength":
        yield _error(path, "must not be empty")
    elif rule == "uniqueItems":
        yield _error(path, "lists the same item more than once")
    else:
        # jsonschema's own text can quote the whole offending value, secrets included.
        yield _error(path, f"does not satisfy the schema rule {rule!r}")


BOUNDS = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than",
          "exclusiveMaximum": "less than"}


def _explain_required(path: KeyPath, error: ValidationError, data: Any) -> Iterator[_Finding]:
    # jsonschema reports one error per missing key without naming it apart from its text,
    # so every missing key is reported here and duplicates are dropped later.
    missing = [key for key in error.validator_value if key not in error.instance]
    kind = _get(data, *path, "type") if _is_destination_path(path) else None
    for key in missing:
        if "then" in error.schema_path and isinstance(kind, str):
            needed = ", ".join(error.validator_value)
            yield _error((*path, key), f"missing: {_article(kind)} {kind} destination needs "
                                       f"{needed}")
        else:
            yield _error((*path, key), "missing: this key is required")


def _explain_unknown_keys(path: KeyPath, error: ValidationError) -> Iterator[_Finding]:
    allowed = list(error.schema.get("properties", {}))
    for key in error.instance:
        if key in allowed or _looks_like_secret(key):
            continue  # a secret-looking key gets the inline-secret message instead
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(allowed)}"
        yield _error((*path, key), f"unknown key {key!r}; {hint}")


def _wrong_destination_key(path: KeyPath, data: Any) -> str:
    key = path[-1]
    kind = _get(data, *path[:-1], "type")
    owners = _destination_key_owners().get(str(key), ())
    belongs = f" (it belongs to {' and '.join(owners)})" if owners else ""
    return f"{key!r} is not a key of {_article(kind)} {kind} destination{belongs}"


def _explain_password_choice(data: dict) -> Iterator[_Finding]:
    given = [key for key in PASSWORD_KEYS if key in data]
    if len(given) > 1:
        yield _error((given[1],), f"give only one of {', '.join(PASSWORD_KEYS)} "
                                  f"(found {' and '.join(given)})")
    elif not given and not any(_looks_like_secret(key) for key in data):
        # An inline password already gets a message that names these three keys.
        yield _error(("password_file",), "missing: the repository password needs one of "
                                         f"{', '.join(PASSWORD_KEYS)}")


TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
              "boolean": "true or false", "array": "a list", "object": "a mapping of keys",
              "null": "empty (null)"}


def _type_words(expected: str | list[str]) -> str:
    names = [expected] if isinstance(expected, str) else expected
    return " or ".join(TYPE_WORDS.get(name, name) for name in names)


def _type_name(value: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping", type(None): "null"}
    return names.get(type(value), f"a YAML {type(value).__name__}")


def _shown(value: Any, limit: int = 60) -> str:
    """A short rendering of a value; user:password@ in a URL is masked."""
    text = re.sub(r"//[^/@\s]*@", "//***@", repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _article(word: Any) -> str:
    # By sound: "an s3", "an sftp", "a local".
    return "an" if word in ("s3", "sftp") else "a"


def _destination_entries(data: Any) -> list[tuple[KeyPath, dict]]:
    """The destination and every copy, each with where it stands in the file: every rule of
    a destination holds for each copy too."""
    if not isinstance(data, dict):
        return []
    entries: list[tuple[KeyPath, dict]] = []
    if isinstance(data.get("destination"), dict):
        entries.append((("destination",), data["destination"]))
    copies = data.get("copies")
    if isinstance(copies, list):
        entries += [(("copies", i), c) for i, c in enumerate(copies) if isinstance(c, dict)]
    return entries


def _is_destination_path(path: KeyPath) -> bool:
    return path == ("destination",) or (len(path) == 2 and path[0] == "copies"
                                        and isinstance(path[1], int))


def _database_entries(data: dict) -> list[tuple[int, dict]]:
    databases = data.get("databases")
    if not isinstance(databases, list):
        return []
    return [(i, d) for i, d in enumerate(databases) if isinstance(d, dict)]


def _database_secret_paths(data: dict) -> list[KeyPath]:
    return [("databases", i, "password_file") for i, _ in _database_entries(data)]


def _get(data: Any, *keys: str | int) -> Any:
    for key in keys:
        if isinstance(data, list) and isinstance(key, int):
            data = data[key] if 0 <= key < len(data) else None
        elif isinstance(data, dict):
            data = data.get(key)
        else:
            return None
    return data


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- cross-field rules ----------------------------------------------------------------------
# Each rule looks only at values of the right type: a wrong type is the schema's finding,
# and a second message about the same key would only distract.

def _rule_tenant_id_in_full(data: dict, file: Path) -> Iterator[_Finding]:
    # The schema's pattern says the same (with ECMA's `$`); this rule keeps the tenant id,
    # which names locks, folders and tags, safe even if the schema check were bypassed.
    # Its message equals the schema's, so an operator reads it once.
    tenant = data.get("tenant")
    if isinstance(tenant, str) and not is_tenant_id(tenant):
        hint = _schema_node(("tenant",)).get("x-pattern-message", TENANT_ID_RULE)
        yield _error(("tenant",), f"{hint} (found {_shown(tenant)})")


def _rule_values_are_one_line(data: dict, file: Path) -> Iterator[_Finding]:
    """A value lands in restic tags, file names, crontab and systemd lines, ssh_config and
    logs: a control character there would end one entry and start another."""
    for path, value in _strings(data, ()):
        char = control_character(value)
        if char is None or _full_pattern(path):
            continue  # a full-match pattern already refuses it, with its own message
        yield _error(path, f"contains a control character ({_shown(char)} at position "
                           f"{value.index(char) + 1}): a value is one line of plain text")


def _strings(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _full_pattern(path: KeyPath) -> bool:
    """Whether the schema matches the value at `path` against a pattern anchored at both ends
    (those classes never contain a control character)."""
    pattern = _schema_node(path).get("pattern", "")
    return pattern.startswith("^") and pattern.endswith("$")


def _rule_file_named_after_tenant(data: dict, file: Path) -> Iterator[_Finding]:
    tenant = data.get("tenant")
    if isinstance(tenant, str) and tenant != file.stem:
        yield _error(("tenant",), f"tenant is {tenant!r} but the file is {file.name}: the file "
                                  f"name without .yaml must equal the tenant (rename it to "
                                  f"{tenant}.yaml or correct the key)")


def _rule_no_inline_secrets(data: dict, file: Path) -> Iterator[_Finding]:
    for path in _secret_key_paths(data, ()):
        yield _error(path, f"{path[-1]!r} looks like an inline secret: {INLINE_SECRET_ADVICE}")
    url_paths = [(*where, key) for where, _ in _destination_entries(data)
                 for key in DESTINATION_URL_KEYS]
    for path in (*url_paths, ("monitoring", "healthcheck_url")):
        url = _get(data, *path)
        if isinstance(url, str) and _url_has_password(url):
            yield _error(path, f"the URL contains user:password@, an inline secret: "
                               f"{INLINE_SECRET_ADVICE}")


def _secret_key_paths(value: Any, path: KeyPath) -> Iterator[KeyPath]:
    if isinstance(value, dict):
        for key, item in value.items():
            if _looks_like_secret(key):
                yield (*path, key)
            else:
                yield from _secret_key_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_key_paths(item, (*path, index))


@functools.lru_cache(maxsize=4096)  # a fleet's policies repeat the same few dozen keys
def _looks_like_secret(key: str) -> bool:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)  # awsSecretKey -> aws_Secret_Key
    words = re.sub(r"[^a-z0-9]+", "_", words.lower())
    return bool(SECRET_WORD.search(words)) and not SECRET_REFERENCE_SUFFIX.search(words)


def _url_has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def _rule_cron_schedules(data: dict, file: Path) -> Iterator[_Finding]:
    for key in ("backup", "drill"):
        expression = _get(data, "schedule", key)
        if isinstance(expression, str):
            problem = cron_problem(expression)
            if problem:
                yield _error(("schedule", key), problem)


@functools.lru_cache(maxsize=1024)  # a fleet shares a few schedules
def cron_problem(expression: str) -> str | None:
    """Why a schedule is not a usable 5-field cron expression, or None when it is."""
    example = 'e.g. "0 2 * * *" for 02:00 every night'
    if len(expression.split()) != 5:
        return (f"{expression!r} is not a cron expression of 5 fields (minute hour "
                f"day-of-month month day-of-week), {example}")
    try:
        valid = croniter.is_valid(expression)
    except Exception:  # croniter signals some malformed input by raising, not returning
        valid = False
    return None if valid else f"{expression!r} is not a valid cron expression, {example}"


def _rule_retention_keeps_something(data: dict, file: Path) -> Iterator[_Finding]:
    retention = data.get("retention")
    if not isinstance(retention, dict) or retention.get("legal_hold") is True:
        return
    values = [retention[rule] for rule in KEEP_RULES if rule in retention]
    if all(_is_int(value) for value in values) and not any(value > 0 for value in values):
        yield _error(("retention",), "no keep rule above 0, so nothing says which snapshots to "
                                     "keep. Set at least one of " + ", ".join(KEEP_RULES)
                     + " above 0, or legal_hold: true to keep everything")


def _rule_keep_until_is_a_date(data: dict, file: Path) -> Iterator[_Finding]:
    # The schema checks the shape; a quoted "2033-02-30" has the shape of a date.
    keep_until = _mapping(data.get("retention")).get("keep_until")
    if isinstance(keep_until, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", keep_until):
        try:
            date.fromisoformat(keep_until)
        except ValueError:
            yield _error(("retention", "keep_until"), f"{keep_until} is not a date that exists")


def _rule_rpo_is_a_number(data: dict, file: Path) -> Iterator[_Finding]:
    # YAML's .nan slips through every bound of the schema: nan compares false to all.
    rpo_hours = data.get("rpo_hours")
    if isinstance(rpo_hours, float) and math.isnan(rpo_hours):
        yield _error(("rpo_hours",), "must be a number of hours (found .nan)")


def _rule_data_rests_in_eea(data: dict, file: Path) -> Iterator[_Finding]:
    for where, destination in _destination_entries(data):
        yield from _eea_findings(where, destination)


def _eea_findings(where: KeyPath, destination: dict) -> Iterator[_Finding]:
    country = destination.get("country")
    known_country = country if isinstance(country, str) and COUNTRY.fullmatch(country) else None
    if known_country and not eea.is_eea(known_country):
        yield _error((*where, "country"),
                     f"{known_country} is outside the EEA: {EEA_RULE}")
    for key in (*DESTINATION_URL_KEYS, "host"):
        host = _host_of(destination, key)
        service = eea.refused_service(host)
        if service:
            yield _error((*where, key),
                         f"{host} is {service}, which the privacy statement names as a service "
                         "not used for tenant data")
    if destination.get("type") == "s3":
        yield from _s3_region_findings(where, destination, known_country)


def _s3_region_findings(where: KeyPath, destination: dict,
                        country: str | None) -> Iterator[_Finding]:
    host = _host_of(destination, "endpoint")
    region = eea.region_info(host, destination.get("region"))
    if region:
        read_as = ("" if eea.provider_of(host) == region.provider else
                   f" (a region named like this is read at {region.provider}'s meaning)")
        place = f"{region.provider} region {region.name} is {region.place} ({region.country})"
        yield from _region_findings((*where, "region"), place, read_as, region, country)
    named = eea.endpoint_region(host)
    if named and named != region:  # the same place needs saying once
        place = (f"endpoint {host} is {named.provider} region {named.name}, {named.place} "
                 f"({named.country})")
        yield from _region_findings((*where, "endpoint"), place, "", named, country)


def _region_findings(path: KeyPath, where: str, read_as: str, region: eea.Region,
                     country: str | None) -> Iterator[_Finding]:
    if not eea.is_eea(region.country):
        yield _error(path, f"{where}, outside the EEA{read_as}: {EEA_RULE}")
    elif country and eea.is_eea(country) and region.country != country:
        # A non-EEA country is already an error of its own.
        yield _error(path, f"{where}{read_as}, but {_dotted(path[:-1])}.country is {country}: "
                           "country must be where the data rests")


def _host_of(destination: dict, key: str) -> str | None:
    value = destination.get(key)
    if not isinstance(value, str):
        return None
    if key == "host":
        return value
    try:
        return urlsplit(value).hostname
    except ValueError:
        return None


def _rule_transport_encrypted(data: dict, file: Path) -> Iterator[_Finding]:
    urls = [((*where, key), "tenant data") for where, _ in _destination_entries(data)
            for key in DESTINATION_URL_KEYS]
    for path, what in (*urls, (("monitoring", "healthcheck_url"), "a ping")):
        url = _get(data, *path)
        # Another scheme is the schema pattern's finding.
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            problem = url_transport_problem(url, what)
            if problem:
                yield _error(path, problem)
    for where, destination in _destination_entries(data):
        host_key = destination.get("host_key")
        if destination.get("type") == "sftp" and isinstance(host_key, str):
            problem = host_key_problem(host_key)
            if problem:
                yield _error((*where, "host_key"), problem)


def url_transport_problem(url: str, what: str = "tenant data") -> str | None:
    """Why `url` would not travel encrypted, or None. The one transport rule for S3 endpoints
    and healthcheck URLs: https, or plain http to a loopback host only."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return "not a valid URL, e.g. https://s3.nl-ams.scw.cloud"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"must be an https URL (found {_shown(url)})"
    if not parts.hostname:
        return "the URL names no host, e.g. https://s3.nl-ams.scw.cloud"
    if scheme == "http" and not is_loopback(parts.hostname):
        return (f"plain http to {parts.hostname}: {what} must travel encrypted. Use https "
                "(http is accepted only for a loopback host: 127.0.0.0/8, ::1, localhost)")
    return None


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: traffic that never leaves this machine."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_key_problem(line: str) -> str | None:
    """Why a pinned host key is not an OpenSSH public key line 'TYPE BASE64', or None."""
    parts = line.split()
    if len(parts) < 2:
        return ("must be one OpenSSH public key line 'TYPE BASE64', e.g. the output of "
                "ssh-keyscan -t ed25519 HOST without the host name")
    key_type, blob = parts[0], parts[1]
    if not _accepted_host_key_type(key_type):
        if _accepted_host_key_type(blob):
            return "starts with a host name (known_hosts format): give only 'TYPE BASE64'"
        return (f"key type {_shown(key_type)} is not accepted: use ssh-ed25519, "
                "ecdsa-sha2-* or ssh-rsa")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        load_ssh_public_key(f"{key_type} {blob}".encode("ascii", "replace"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        return (f"the key data is not a valid {key_type} key ({exc}): the line is damaged "
                f"or mixed")
    return None


def _accepted_host_key_type(key_type: str) -> bool:
    return key_type in HOST_KEY_TYPES or key_type.startswith("ecdsa-sha2-")


def _rule_secret_files_private(data: dict, file: Path) -> Iterator[_Finding]:
    copy_paths = [(*where, key) for where, _ in _destination_entries(data)[1:]
                  for key in DESTINATION_SECRET_FILE_KEYS]
    for path in (*SECRET_FILE_KEYS, *copy_paths, *_database_secret_paths(data)):
        value = _get(data, *path)
        if isinstance(value, str) and value.startswith("/"):
            yield from _secret_file_findings(path, Path(value))


# Present only where maintenance runs, by design: its absence from the nightly host is right.
ELSEWHERE_SECRET_FILE_KEYS: tuple[KeyPath, ...] = (("maintenance_credentials_file",),)


def _secret_file_findings(path: KeyPath, secret_file: Path) -> Iterator[_Finding]:
    # The run refuses exactly what is refused here, with the same words (bkp.secrets).
    problem = secret_file_problem(secret_file, _dotted(path[-1:]))
    if problem is None or (problem.absent and path[-1:] in ELSEWHERE_SECRET_FILE_KEYS):
        return
    if problem.absent:
        yield _warning(path, f"{problem.message}: backups will fail until it does")
    else:
        yield _error(path, problem.message)


def _rule_password_env_set(data: dict, file: Path) -> Iterator[_Finding]:
    name = data.get("password_env")
    if isinstance(name, str) and name and name not in os.environ:
        yield _warning(("password_env",), f"environment variable {name} is not set here: "
                                          "backups fail unless it is set where bkp runs")


def _rule_sensitive_not_kept_forever(data: dict, file: Path) -> Iterator[_Finding]:
    retention = _mapping(data.get("retention"))
    yearly = retention.get("yearly")
    if (data.get("classification") == "sensitive" and _is_int(yearly) and yearly > 0
            and retention.get("legal_hold") is not True):
        yield _warning(("retention", "yearly"),
                       "a sensitive tenant keeps yearly snapshots: the privacy statement's "
                       "shorter-retention rule (storage limitation, GDPR art. 5(1)(e)) says "
                       "personal data is not kept longer than needed for its purpose. Set "
                       "yearly: 0, or legal_hold: true when the law requires keeping it")


def _rule_repository_outside_sources(data: dict, file: Path) -> Iterator[_Finding]:
    for where, destination in _destination_entries(data):
        repository = _local_repository(destination)
        for source in _absolute_sources(data):
            if repository:
                problem = nesting_problem(repository, source, "a source of this tenant")
                if problem:
                    yield _error((*where, "path"), problem)


def _local_repository(destination: dict) -> str | None:
    path = destination.get("path")
    if destination.get("type") == "local" and isinstance(path, str) and path.startswith("/"):
        return path
    return None


def _absolute_sources(data: dict) -> list[str]:
    sources = data.get("sources")
    if not isinstance(sources, list):
        return []
    return [s for s in sources if isinstance(s, str) and s.startswith("/")]


def nesting_problem(repository: str, source: str, whose: str) -> str | None:
    """Why a local repository and a source overlap, or None. A repository inside a source
    is backed up into itself, night after night; a source inside a repository puts tenant
    data (or the repository) where restic and prune write."""
    try:
        repo, src = local_path_identity(repository), local_path_identity(source)
    except (OSError, ValueError):
        return None
    return _nesting_text(repository, repo, source, src, whose)


def _nesting_text(repository: str, repo: str, source: str, src: str, whose: str) -> str | None:
    if _within(repo, src):
        return (f"the repository {repository} is inside {source}, {whose}: a backup would "
                "copy the repository into itself. Keep repositories outside all sources")
    if _within(src, repo):
        return (f"{source}, {whose}, is inside the repository {repository}: keep tenant data "
                "out of the repository")
    return None


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _rule_rest_destination(data: dict, file: Path) -> Iterator[_Finding]:
    legal_hold = _get(data, "retention", "legal_hold") is True
    for where, destination in _destination_entries(data):
        if destination.get("type") == "rest":
            yield from _rest_findings(where, destination, legal_hold)


def _rest_findings(where: KeyPath, destination: dict, legal_hold: bool) -> Iterator[_Finding]:
    for key in ("url", "maintenance_url"):
        url = destination.get(key)
        if isinstance(url, str) and _url_names_user(url) and not _url_has_password(url):
            yield _error((*where, key),
                         "the URL names a user (user@): the REST user and password live in "
                         "credentials_file, as one line user:password")
    ca_file = destination.get("ca_file")
    if isinstance(ca_file, str) and ca_file.startswith("/"):
        problem = ca_file_problem(Path(ca_file))
        if problem and problem.absent:
            yield _warning((*where, "ca_file"),
                           f"{problem.message}: backups will fail until it does")
        elif problem:
            yield _error((*where, "ca_file"), problem.message)
    yield from _maintenance_findings(destination, legal_hold, where)


def _maintenance_findings(destination: dict, legal_hold: bool,
                          where: KeyPath = ("destination",)) -> Iterator[_Finding]:
    """An append-only destination is only worth its name when the credential that may delete
    is another one than the nightly credential."""
    append_only = destination.get("append_only") is True
    for key in ("maintenance_url", "maintenance_credentials_file"):
        if key in destination and not append_only:
            yield _error((*where, key),
                         f"{key} serves only an append_only destination: set append_only: "
                         f"true (the nightly credential cannot delete) or remove {key}")
    nightly = destination.get("credentials_file")
    deleting = destination.get("maintenance_credentials_file")
    if append_only and deleting is None and not legal_hold:
        yield _error((*where, "maintenance_credentials_file"),
                     "missing: an append_only destination needs the credential `bkp maintain` "
                     "applies retention with (one that may delete); without it nothing is ever "
                     "forgotten. Or set retention.legal_hold: true")
    if (isinstance(nightly, str) and isinstance(deleting, str) and nightly.startswith("/")
            and deleting.startswith("/") and _same_secret(nightly, deleting)):
        yield _error((*where, "maintenance_credentials_file"),
                     "holds the nightly credential of credentials_file: the credential that "
                     "may delete must be another one, kept only where maintenance runs")


def _same_secret(first: str, second: str) -> bool:
    """The same file, or two files holding the same credential."""
    if local_path_identity(first) == local_path_identity(second):
        return True
    try:
        return Path(first).read_bytes().strip() == Path(second).read_bytes().strip()
    except OSError:
        return False


def _url_names_user(url: str) -> bool:
    try:
        return urlsplit(url).username is not None
    except ValueError:
        return False


def _rule_local_is_not_off_site(data: dict, file: Path) -> Iterator[_Finding]:
    for where, destination in _destination_entries(data):
        if destination.get("type") == "local":
            yield _warning((*where, "type"),
                           f"a local {'destination' if where == ('destination',) else 'copy'} "
                           "is not off-site: what destroys this server can destroy the backup "
                           "too. Use s3, sftp or rest for tenant data")


def _rule_copies_at_other_sites(data: dict, file: Path) -> Iterator[_Finding]:
    """BIO 8.13.03: one incident must not damage both the data's backup and its copy."""
    entries = _destination_entries(data)
    if len(entries) < 2:
        return  # no copy: nothing to compare
    placed: list[tuple[str, Destination]] = []
    for where, entry in entries:
        destination = _site_view(entry)
        if destination is None:
            continue
        for name, other in placed:
            if where != ("destination",):
                reason = same_site(other, destination)
                if reason == "it is the same repository":
                    yield _error(where, f"the same repository as {name}: a copy must be "
                                        "another repository, at another site")
                    break
                if reason:
                    yield _error((*where, "site"),
                                 f"at the same site as {name} ({reason}): each copy must be "
                                 "at another site than the destination and the other copies, "
                                 "so one incident cannot destroy both; name another site or "
                                 "use another host")
                    break
        placed.append((_dotted(where) if where == ("destination",) else
                       f"copy {_copy_id(data, where[1])}", destination))


def _site_view(entry: dict) -> Destination | None:
    """Enough of a destination to tell its site (None while its keys are of the wrong type:
    the schema says so)."""
    values = {key: entry.get(key) for key in ("type", "site", "endpoint", "url", "host",
                                                "path", "bucket", "prefix")}
    if not isinstance(values["type"], str) or not all(
            value is None or isinstance(value, str) for value in values.values()):
        return None
    port = entry.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool):
        return None
    values["prefix"] = values["prefix"] or ""
    return Destination(country="", port=port, **values)


def _copy_id(data: dict, index: int) -> str:
    """A copy's id as bkp names it: its `id`, or its 1-based position."""
    given = _get(data, "copies", index, "id")
    return given if isinstance(given, str) else str(index + 1)


def _rule_copy_ids_unique(data: dict, file: Path) -> Iterator[_Finding]:
    """`--copy ID` and the status of each copy must name exactly one copy."""
    copies = data.get("copies")
    if not isinstance(copies, list):
        return
    seen: dict[str, int] = {}
    for index in range(len(copies)):
        given = _get(data, "copies", index, "id")
        if given is not None and not isinstance(given, str):
            continue
        name = _copy_id(data, index)
        if given is not None and name.isdigit() and int(name) != index + 1:
            yield _error(("copies", index, "id"),
                         f"id {name} is a number other than this copy's position "
                         f"({index + 1}): `--copy {name}` would be ambiguous; use a name such "
                         "as fra")
        elif name in seen:
            yield _error(("copies", index, "id"),
                         f"copy id {name} is used twice (also copy {seen[name] + 1}): each "
                         "copy needs its own id")
        else:
            seen[name] = index


def _rule_databases_distinct(data: dict, file: Path) -> Iterator[_Finding]:
    seen: dict[tuple, int] = {}
    for index, database in _database_entries(data):
        key = (database.get("type"), database.get("name"))
        if not all(isinstance(k, str) for k in key):
            continue
        if key in seen:
            yield _error(("databases", index, "name"),
                         f"{key[0]} database {key[1]} is listed twice (also entry "
                         f"{seen[key] + 1}): each database is dumped once")
        else:
            seen[key] = index


def _rule_database_transport_encrypted(data: dict, file: Path) -> Iterator[_Finding]:
    """A dump carries the tenant's personal data: over the network it travels under TLS;
    a socket or loopback never leaves this machine."""
    for index, database in _database_entries(data):
        host = database.get("host")
        if not isinstance(host, str) or host.startswith("/") or is_loopback(host.strip("[]")):
            continue
        if database.get("sslmode") in (None, "disable"):
            yield _error(("databases", index, "sslmode"),
                         f"{host} is reached over the network: the dump carries tenant data and "
                         "must travel encrypted. Set sslmode: verify-full (with ca_file for a "
                         "private CA), or use a socket")


def _rule_database_clients_installed(data: dict, file: Path) -> Iterator[_Finding]:
    """A missing pg_dump is found now, not at 02:00."""
    kinds = {d.get("type"): i for i, d in reversed(_database_entries(data))}
    if not kinds:
        return  # most tenants: the client code is not even imported (a fleet's status)
    from bkp.databases.clients import missing_client

    for kind, index in kinds.items():
        problem = missing_client(kind) if kind in DEFAULT_DATABASE_PORTS else None
        if problem:
            yield _error(("databases", index, "type"), problem)


CROSS_FIELD_RULES = (
    _rule_tenant_id_in_full,
    _rule_values_are_one_line,
    _rule_file_named_after_tenant,
    _rule_no_inline_secrets,
    _rule_cron_schedules,
    _rule_retention_keeps_something,
    _rule_keep_until_is_a_date,
    _rule_rpo_is_a_number,
    _rule_data_rests_in_eea,
    _rule_transport_encrypted,
    _rule_secret_files_private,
    _rule_password_env_set,
    _rule_sensitive_not_kept_forever,
    _rule_repository_outside_sources,
    _rule_rest_destination,
    _rule_local_is_not_off_site,
    _rule_copies_at_other_sites,
    _rule_copy_ids_unique,
    _rule_databases_distinct,
    _rule_database_transport_encrypted,
    _rule_database_clients_installed,
)


# --- building -------------------------------------------------------------------------------

def _build_destination(values: dict) -> Destination:
    values = dict(values)
    for key in ("credentials_file", "identity_file", "ca_file", "maintenance_credentials_file"):
        if key in values:
            values[key] = Path(values[key])
    return Destination(**values)


def _build_copies(data: dict) -> tuple[Copy, ...]:
    copies = []
    for index, values in enumerate(data.get("copies", ())):
        values = dict(values)
        name = values.pop("id", None) or str(index + 1)
        copies.append(Copy(name, index + 1, _build_destination(values)))
    return tuple(copies)


def _build_database(values: dict) -> Database:
    values = dict(values)
    for key in ("password_file", "ca_file"):
        if key in values:
            values[key] = Path(values[key])
    return Database(**values)


def _build_policy(data: dict, file: Path) -> Policy:
    # The schema allows exactly the dataclass fields, so the mappings can be passed as such.
    password_file = data.get("password_file")
    return Policy(
        tenant=data["tenant"],
        file=file,
        purpose=data["purpose"],
        classification=data["classification"],
        sources=tuple(data["sources"]),
        destination=_build_destination(data["destination"]),
        description=data.get("description", ""),
        exclude=tuple(data.get("exclude", ())),
        password_file=Path(password_file) if password_file else None,
        password_command=data.get("password_command"),
        password_env=data.get("password_env"),
        schedule=Schedule(**data.get("schedule", {})),
        retention=Retention(**data.get("retention", {})),
        drill=DrillSettings(**data.get("drill", {})),
        rpo_hours=float(data.get("rpo_hours", 26)),
        timeout_minutes=data.get("timeout_minutes", 360),
        monitoring=Monitoring(**data.get("monitoring", {})),
        databases=tuple(_build_database(d) for d in data.get("databases", ())),
        copies=_build_copies(data),
        document=json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            default=str),
    )


# --- public ---------------------------------------------------------------------------------

def validate_file(path: Path) -> PolicyReport:
    """Validate one policy file; every problem becomes a Problem, nothing is raised."""
    path = Path(path)
    report = PolicyReport(file=path, tenant=path.stem or None)
    try:
        _validate_into(report)
    except _Unusable as unusable:
        report.errors = [unusable.problem]
    except Exception as exc:  # the promise is a report for any file, even on a bug here
        report.errors.append(Problem("", f"internal error while validating: {exc!r}"))
    if report.errors:
        report.policy = None
    return report


def _validate_into(report: PolicyReport) -> None:
    document = _parse_yaml(_read_text(report.file), fast=True)
    report._document = document
    data = document.data
    if not isinstance(data, dict):
        found = "an empty file" if data is None else _type_name(data)
        raise _Unusable(Problem("", f"a policy is a mapping of keys (tenant, destination, ...); "
                                    f"found {found}", document.line_of(())))
    findings = [_error(path, "written twice: the later value silently replaces the earlier "
                             "one; keep one") for path in document.duplicate_keys]
    findings += _schema_findings(data)
    for rule in CROSS_FIELD_RULES:
        findings += rule(data, report.file)
    report.errors = _problems(document, [f for f in findings if not f.warning])
    report.warnings = _problems(document, [f for f in findings if f.warning])
    if not any(p.path.split(".")[0] == "destination" for p in report.errors):
        report.destination = _build_destination(data["destination"])
    report.copies = _valid_copies(data, report.errors)
    report.sources = tuple(_absolute_sources(data))
    if not report.errors:
        report.policy = _build_policy(data, report.file)


def _valid_copies(data: dict, errors: list[Problem]) -> tuple:
    """(path, Destination) of each copy without errors of its own, for the rules between
    files."""
    wrong = {p.path.split(".")[1] for p in errors if p.path.startswith("copies.")
             and len(p.path.split(".")) > 1}
    copies = []
    for where, entry in _destination_entries(data)[1:]:
        if str(where[1]) not in wrong and "copies" not in {p.path for p in errors}:
            values = {k: v for k, v in entry.items() if k != "id"}
            try:
                copies.append((where, _build_destination(values)))
            except TypeError:
                continue
    return tuple(copies)


def _problems(document: _Document, findings: list[_Finding]) -> list[Problem]:
    return _tidy([Problem(_dotted(f.path), f.message, document.line_of(f.path))
                  for f in findings])


def validate_files(paths: list[Path]) -> list[PolicyReport]:
    """Validate each file, then the rules between files: one file per tenant, one tenant
    per repository."""
    with _paths_resolved_once():
        reports = [validate_file(Path(path)) for path in paths]
        _check_between_files(reports)
    return reports


def _check_between_files(reports: list[PolicyReport]) -> None:
    _check_one_file_per_tenant(reports)
    check_repositories_not_shared(reports)
    _check_repositories_outside_other_sources(reports)


def _validate_for_tenants(files: list[Path], wanted: set[str]) -> list[PolicyReport]:
    """The wanted tenants' files validated in full, with the rules between files checked
    against every other file of the directory, as `validate_files(files)` would report them
    for those tenants, without validating a thousand other policies in full.

    Each other file is first read cheaply (`_sketch`: its repositories and sources, no
    schema, no rules). Only a file that could conflict with a wanted tenant (the same
    repository, a source overlapping its local repository), or that the cheap read cannot
    vouch for, is validated in full; the rules between files then run on exactly those. A
    conflict found in full is always among them: the full validation keeps a repository
    only when it is built from the same values the sketch reads, so it has the same
    identity."""
    own = [validate_file(path) for path in files if path.stem in wanted]
    identities = {destination.repository_identity()
                  for report in own for _, destination in report.repositories()}
    local_repositories = []
    for report in own:
        for _, destination in report.repositories():
            if destination.type == "local" and destination.path:
                with contextlib.suppress(OSError, ValueError):
                    local_repositories.append(local_path_identity(destination.path))
    by_file = {id(path): report for path, report in
               zip([p for p in files if p.stem in wanted], own, strict=True)}
    reports = []
    for path in files:
        if id(path) in by_file:
            reports.append(by_file[id(path)])
        elif _may_conflict(path, identities, local_repositories):
            reports.append(validate_file(path))
    _check_between_files(reports)
    return reports


def _may_conflict(path: Path, identities: set[tuple], local_repositories: list[str]) -> bool:
    sketch = _sketch(path)
    if sketch is None:
        return True
    repositories, sources = sketch
    if not identities.isdisjoint(repositories):
        return True
    for source in sources if local_repositories else ():
        try:
            identity = local_path_identity(source)
        except (OSError, ValueError):
            continue  # the full rule skips it too
        if any(_within(identity, repo) or _within(repo, identity)
               for repo in local_repositories):
            return True
    return False


def _sketch(path: Path) -> tuple[list[tuple], list[str]] | None:
    """(identities of every repository, absolute sources) of a policy file, read without the
    schema or the rules; None when the cheap read cannot tell (then the file is validated
    in full). A file that cannot be read or is no mapping has neither, in full too."""
    try:
        text = _read_text(path)
    except _Unusable:
        return [], []
    try:
        data = _quick_load(text)
        if not isinstance(data, dict):
            return [], []
        repositories = [
            _build_destination({k: v for k, v in entry.items() if k != "id"})
            .repository_identity() for _, entry in _destination_entries(data)]
        return repositories, _absolute_sources(data)
    except Exception:  # anything unexpected: the full validation decides
        return None


def _quick_load(text: str) -> Any:
    """The data of a policy as the full read (`_parse_yaml`) gets it, faster. ASCII JSON
    without a backslash is read by the json module: YAML reads such text to the same
    strings, keys and structure (a number like 1e3 differs, and only makes the sketch see a
    repository the full read would refuse). Anything else goes to libyaml when PyYAML has
    it (its scanner is the one PyYAML's Python scanner was ported from)."""
    if text.isascii() and "\\" not in text:
        try:
            return json.loads(text)
        except ValueError:
            pass
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # a safe loader: SafeLoader or its C twin


def _check_one_file_per_tenant(reports: list[PolicyReport]) -> None:
    for report, others in _groups(reports, lambda r: r.tenant):
        names = ", ".join(str(other.file) for other in others)
        report.add_error(("tenant",), f"tenant {report.tenant} also has a policy in {names}: "
                                      "keep one file per tenant")


def check_repositories_not_shared(reports: list[PolicyReport]) -> None:
    """No repository (a destination or a copy) belongs to two files."""
    places = [(report, where, destination.repository_identity())
              for report in reports for where, destination in report.repositories()]
    by_identity: dict = {}  # grouped, not compared pairwise: a fleet has a thousand
    for place in places:
        by_identity.setdefault(place[2], []).append(place)
    files: dict[int, str] = {}
    for report, where, identity in places:
        sharing = by_identity[identity]
        if len(sharing) < 2:
            continue
        for other, _, _ in sharing:
            files.setdefault(id(other), _same_file(other.file))
        others = [(other, other_where) for other, other_where, _ in sharing
                  if other is not report and files[id(other)] != files[id(report)]]
        if not others:
            continue
        names = ", ".join(
            (f"{other.file} (tenant {other.tenant}"
             + ("" if other_where == other.destination_path else
                f", copy {other_where[-1] + 1 if isinstance(other_where[-1], int) else ''}")
             + ")") if other.tenant else f"{other.file} (the evidence repository)"
            for other, other_where in others)
        report.add_error(where,
                         f"the repository is also the destination of {names}: two tenants "
                         f"(or a tenant and bkp's evidence) never share a repository")


def _check_repositories_outside_other_sources(reports: list[PolicyReport]) -> None:
    """A local repository inside another tenant's source (or the other way round) would
    carry one tenant's backups into another tenant's backups, or the reverse.

    Every path is resolved once, and each repository is looked up in an index of the
    sources (its ancestors by name, what lies below it by sorted order), not compared with
    every other tenant's: with a thousand tenants the pairs cost a minute per command."""
    local = [(report, where, destination) for report in reports
             for where, destination in report.repositories()
             if destination.type == "local" and destination.path]
    if not local:
        return
    files = {id(report): _same_file(report.file) for report in reports}
    by_source: dict[str, list[tuple[str, PolicyReport]]] = {}
    resolved: dict[str, str | None] = {}  # tenants often name the same source path
    for report in reports:
        for source in report.sources:
            if source not in resolved:
                try:
                    resolved[source] = local_path_identity(source)
                except (OSError, ValueError):
                    resolved[source] = None
            if resolved[source] is not None:
                by_source.setdefault(resolved[source], []).append((source, report))
    ordered = sorted(by_source)
    for report, where, destination in local:
        try:
            repo = local_path_identity(destination.path)
        except (OSError, ValueError):
            continue
        for identity in _overlapping(repo, by_source, ordered):
            for source, other in by_source[identity]:
                if other is report or files[id(other)] == files[id(report)]:
                    continue
                problem = _nesting_text(destination.path, repo, source, identity,
                                        f"a source of tenant {other.tenant} ({other.file})")
                report.add_error((*where, "path"), problem)


def _overlapping(repo: str, by_source: dict, ordered: list[str]) -> list[str]:
    """The source paths the repository lies within, or that lie within it, in the order
    they sort."""
    found = set()
    parent = repo
    while True:  # the repository itself and each directory above it
        if parent in by_source:
            found.add(parent)
        above = os.path.dirname(parent)
        if above == parent:
            break
        parent = above
    below = repo.rstrip("/") + "/"
    index = bisect.bisect_left(ordered, below)
    while index < len(ordered) and ordered[index].startswith(below):
        found.add(ordered[index])
        index += 1
    return sorted(found)


def _groups(reports: list[PolicyReport], key) -> Iterator[tuple[PolicyReport, list]]:
    """Each report whose key it shares with reports of other files, with those others. Keys
    are computed once each and grouped (a thousand tenants: not a million comparisons)."""
    keys = [key(report) for report in reports]
    groups: dict = {}
    for report, mine in zip(reports, keys, strict=True):
        if mine is not None:
            groups.setdefault(mine, []).append(report)
    for report, mine in zip(reports, keys, strict=True):
        members = groups.get(mine, []) if mine is not None else []
        if len(members) < 2:
            continue
        others = [other for other in members if other is not report
                  and _same_file(other.file) != _same_file(report.file)]
        if others:
            yield report, others


def _same_file(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return str(path.absolute())


def policy_files(directory: Path) -> list[Path]:
    """The tenant policy files in a directory: *.yaml and *.yml, not starting with _ or '.'."""
    directory = Path(directory)
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise PolicyError(f"cannot read the policies directory {directory}: "
                          f"{exc.strerror or exc}; set --policies or BKP_POLICIES") from exc
    return sorted(entry for entry in entries
                  if entry.suffix in (".yaml", ".yml")
                  and not entry.name.startswith(("_", "."))
                  and not entry.is_dir())


def load_policies(directory: Path, tenants: list[str] | None = None,
                  ) -> tuple[list[Policy], list[PolicyReport]]:
    """The valid policies of a directory and the reports of the invalid ones.

    With `tenants`, only those files are validated in full; the rules between files (one
    tenant per repository, no local repository inside another tenant's source or the other
    way round) still hold against every other file, read cheaply (`_validate_for_tenants`),
    so a command for one tenant stays cheap in a directory of a thousand and still refuses
    to write one tenant's backups where another's are. A tenant without a policy file is a
    PolicyError.
    """
    for tenant in tenants or ():
        if not is_tenant_id(tenant):
            raise UsageError(f"{shown(tenant)} is not a tenant id: "
                             f"{TENANT_ID_RULE}")
    files = policy_files(directory)
    if tenants is not None:
        with _paths_resolved_once():
            reports = _validate_for_tenants(files, set(tenants))
        known = {report.tenant for report in reports}
        unknown = [tenant for tenant in dict.fromkeys(tenants) if tenant not in known]
        if unknown:
            everyone = sorted({f.stem for f in files})
            raise PolicyError(f"no policy for tenant {', '.join(unknown)} in {directory}; "
                              f"known tenants: {', '.join(everyone) or 'none'}")
        reports = [report for report in reports if report.tenant in tenants]
    else:
        reports = validate_files(files)
    valid = [report.policy for report in reports if report.policy is not None]
    return valid, [report for report in reports if not report.valid]


def load_policy(directory: Path, tenant: str) -> Policy:
    """The policy of one tenant; PolicyError listing every problem when it is invalid."""
    policies, invalid = load_policies(directory, [tenant])
    if invalid:
        report = invalid[0]
        lines = "\n".join(f"  {problem.describe(report.file)}" for problem in report.errors)
        raise PolicyError(f"the policy of tenant {tenant} is invalid:\n{lines}",
                          problems=report.errors)
    return policies[0]
