"""Everything that knows restic's flags, exit codes and JSON.

Builders are pure functions returning argv lists; `Restic` runs them through the runner and
turns failures into one-line messages that say what to do. The password never appears in
argv: it reaches restic through RESTIC_PASSWORD_FILE, RESTIC_PASSWORD_COMMAND or
RESTIC_PASSWORD in restic's own environment. A repository location that carries a credential
(a REST server's user:password) travels the same way, as RESTIC_REPOSITORY.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from bkp import names, runner
from bkp.errors import BkpError, OperationError, PolicyError, SafetyError, VerificationError
from bkp.policy import Policy, Retention
from bkp.secrets import SecretEnv

RESTIC = "restic"
DRY_RUN_SINCE = (0, 13)  # `backup --dry-run`
# Every restic repository is encrypted; there is no switch to turn it off. What the
# evidence report names as encryption at rest.
ENCRYPTION = ("restic repository encryption: AES-256 in counter mode with Poly1305-AES "
              "authentication, key derived from the repository password with scrypt")
# restic ≥ 0.17 documents these exit codes; 0.14 uses 1 for all of them and we read stderr.
EXIT_PARTIAL = 3
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12


@dataclass(frozen=True)
class Repository:
    """How to reach one tenant's repository: URL, extended options, child environment."""

    url: str  # given as --repo; "" when the location is in `env` (it carries a credential)
    options: tuple[str, ...] = ()  # "-o key=value" pairs, never secrets
    env: SecretEnv = field(default_factory=SecretEnv)
    cache_dir: Path | None = None
    label: str = ""  # what an operator recognises: the URL without credentials
    no_cache: bool = False  # BKP_HOME cannot take restic's cache (a read-only copy)
    cacert: Path | None = None  # the certificate a REST server's TLS certificate chains to
    # `restic copy` and `init --copy-chunker-params`: the other repository's certificate
    # (restic has one --cacert list for both repositories)
    source_cacert: Path | None = None

    def __post_init__(self) -> None:
        if not self.url and LOCATION_ENV not in self.env.env:
            raise ValueError("a Repository needs a url or a location in its environment")


LOCATION_ENV = "RESTIC_REPOSITORY"
# The source repository of `copy` and `init --copy-chunker-params` (restic >= 0.14; 0.13
# called it --repo2): its location and password reach restic through these, never argv.
SOURCE_ENV = {"RESTIC_REPOSITORY": "RESTIC_FROM_REPOSITORY",
              "RESTIC_PASSWORD_FILE": "RESTIC_FROM_PASSWORD_FILE",
              "RESTIC_PASSWORD_COMMAND": "RESTIC_FROM_PASSWORD_COMMAND",
              "RESTIC_PASSWORD": "RESTIC_FROM_PASSWORD"}
COPY_SINCE = (0, 14)


def option_key(option: str) -> str:
    return option.partition("=")[0]


def transport_conflicts(source: Repository, target: Repository) -> list[str]:
    """What one restic process cannot hold for two repositories: restic's `copy` applies
    one set of -o options and one environment to both, so an sftp.command, s3.region or
    AWS key meant for one would be used for the other. Returns the clashing names."""
    clashes = []
    theirs = {option_key(o): o for o in source.options}
    for option in target.options:
        if option_key(option) in theirs and theirs[option_key(option)] != option:
            clashes.append(option_key(option))
    for name, value in target.env.env.items():
        if name in SOURCE_ENV or name == LOCATION_ENV:
            continue  # the source's own are renamed to RESTIC_FROM_*
        if name in source.env.env and source.env.env[name] != value:
            clashes.append(name)
    return clashes


def pair_repository(source: Repository, target: Repository) -> Repository:
    """`target` as restic's repository and `source` as its --from-repo, in one process:
    the source's location and password under RESTIC_FROM_*, its transport settings beside
    the target's (the caller made sure they do not clash: transport_conflicts)."""
    clashes = transport_conflicts(source, target)
    if clashes:
        raise ValueError(f"transport settings clash: {', '.join(clashes)}")
    env = dict(target.env.env)
    for name, value in source.env.env.items():
        env[SOURCE_ENV.get(name, name)] = value
    if source.url:
        env["RESTIC_FROM_REPOSITORY"] = source.url
    options = tuple(dict.fromkeys((*target.options, *source.options)))
    return Repository(url=target.url, options=options,
                      env=SecretEnv(env, tuple(dict.fromkeys(
                          (*target.env.secrets, *source.env.secrets)))),
                      cache_dir=target.cache_dir, label=target.label, no_cache=target.no_cache,
                      cacert=target.cacert, source_cacert=source.cacert)


def rest_location(url: str, user: str, password: str) -> SecretEnv:
    """restic's REST repository `rest:https://user:password@host:port/path/` for restic's
    environment: it carries the password, so never --repo (argv is readable by every user
    of the host). Every spelling restic or a server could echo is redacted; restic itself
    prints the location as user:***@."""
    parts = urlsplit(url)
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
    location = "rest:" + urlunsplit((parts.scheme, f"{userinfo}@{parts.netloc}",
                                     parts.path.rstrip("/") + "/", "", ""))
    hidden = [location, f"{userinfo}@"]
    # A short password would be masked inside ordinary words of restic's messages, which bkp
    # reads to tell the cause of a failure; restic never prints it outside the location.
    if len(password) >= 8:
        hidden += [password, quote(password, safe="")]
    return SecretEnv({LOCATION_ENV: location}, tuple(dict.fromkeys(hidden)))


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def parse_version(text: str) -> Version:
    match = re.search(r"restic (\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise OperationError(f"cannot read restic's version from {text.strip()[:80]!r}")
    return Version(*(int(g) for g in match.groups()))


@functools.lru_cache(maxsize=1)
def version() -> Version:
    if not runner.which(RESTIC):
        raise OperationError("restic is not installed: run scripts/install.sh "
                             "(or apt-get install restic)")
    done = runner.run([RESTIC, "version"], timeout=30)
    return parse_version(done.stdout)


def version_on_record() -> str | None:
    """restic's version for a run record: not knowing it never fails a run."""
    try:
        return str(version())
    except BkpError:
        return None


# ---------------------------------------------------------------- argv builders (pure)

def global_args(repo: Repository) -> list[str]:
    args = [RESTIC, "--repo", repo.url] if repo.url else [RESTIC]
    for cacert in dict.fromkeys(c for c in (repo.cacert, repo.source_cacert) if c):
        args += ["--cacert", str(cacert)]
    for option in repo.options:
        args += ["--option", option]
    if repo.no_cache:
        args.append("--no-cache")
    elif repo.cache_dir:
        args += ["--cache-dir", str(repo.cache_dir)]
    return args


# ---------------------------------------------------------------- tags
# Snapshots carry the tenant, purpose and classification as `key=value` tags, so the catalog
# can be rebuilt from the repository alone. restic splits every --tag on ',' (the old
# format let a purpose "a,tenant=other" add a tenant tag), trims spaces and drops empty
# tags; `--tag a,b` selects snapshots with a AND b, two --tag flags a OR b. So each value is
# percent-encoded down to [A-Za-z0-9_.~-] and %XX, and a scheme tag says so: snapshots
# without it were written before, with raw values, and are still read as written.

TAG_SCHEME = "bkp-tags"
TAG_SCHEME_VERSION = "2"
_TAG_KEY = re.compile(r"[a-z][a-z0-9_-]*")
_ENCODED_VALUE = re.compile(r"(?:[A-Za-z0-9_.~-]|%[0-9A-Fa-f]{2})*")
_LEGACY_KEYS = ("tenant", "purpose", "classification")
_LISTED_KEYS = (*_LEGACY_KEYS, "kind", "database", "database_type", "dump")


class TagError(ValueError):
    """A snapshot's tags cannot be read without guessing."""


def tag(key: str, value: str) -> str:
    """One `key=value` tag that restic stores as it is: nothing to split, trim or drop."""
    if not _TAG_KEY.fullmatch(key):
        raise ValueError(f"not a tag key: {key!r}")
    return f"{key}={quote(value, safe='', errors='surrogatepass')}"


def format_tags(values: dict[str, str]) -> list[str]:
    """The scheme tag and one tag per value (parse_tags reverses it)."""
    return [f"{TAG_SCHEME}={TAG_SCHEME_VERSION}", *(tag(k, v) for k, v in values.items())]


# What a snapshot holds. Snapshots written before kinds existed carry none: they are files.
KIND_FILES = "files"
KIND_DATABASE = "database"
# A database dump's table list and row counts, kept beside the dump in the repository so
# that a host rebuilt from nothing can still drill it (tags `dump=` the dump's snapshot id).
KIND_INVENTORY = "inventory"


def tenant_tags(policy: Policy, kind: str = KIND_FILES, **more: str) -> list[str]:
    """Tags that let the catalog be rebuilt from the repository alone."""
    return format_tags({"tenant": policy.tenant, "purpose": policy.purpose,
                        "classification": policy.classification, "kind": kind, **more})


def kind_selector(tenant: str, kind: str = KIND_FILES, **more: str) -> str:
    """`--tag` value selecting one kind of a tenant's snapshots (AND of the tags)."""
    return ",".join([tenant_tag(tenant), tag("kind", kind),
                     *(tag(k, v) for k, v in more.items())])


def snapshot_group(snapshot: dict) -> tuple[str, str | None, str | None]:
    """(kind, database, database type) of a listed snapshot: retention and "latest" apply
    per group (a PostgreSQL and a MariaDB database may share a name)."""
    kind = snapshot.get("kind") or KIND_FILES
    if kind == KIND_FILES:
        return kind, None, None
    return kind, snapshot.get("database"), snapshot.get("database_type")


def tenant_tag(tenant: str) -> str:
    """The selector of a tenant's snapshots. A tenant id (and bkp's own `_evidence`) is its
    own encoding, so the tag is the same in both schemes: one selector finds old and new
    snapshots. Anything else could not be selected exactly, and is refused."""
    selector = tag("tenant", tenant)
    if not tenant or selector != f"tenant={tenant}":
        raise PolicyError(f"{names.shown(tenant)} is not a tenant id: {names.TENANT_ID_RULE}")
    return selector


def parse_tags(tags: Sequence[str]) -> dict[str, str]:
    """A snapshot's tags -> its values (tenant, purpose, classification, ...).

    Tags that are not `key=value` (an operator's own) are ignored; a value given twice, a
    damaged encoding or a newer scheme is a TagError: a snapshot's owner is never guessed."""
    schemes = [t.partition("=")[2] for t in tags if t.partition("=")[0] == TAG_SCHEME]
    if not schemes:
        return _parse_legacy_tags(list(tags))
    if set(schemes) != {TAG_SCHEME_VERSION}:
        raise TagError(f"tags of scheme {', '.join(sorted(set(schemes)))} were written by a "
                       f"newer bkp (this one reads {TAG_SCHEME_VERSION}): upgrade bkp")
    values: dict[str, str] = {}
    for key, value in _key_values(tags):
        if key == TAG_SCHEME:
            continue
        if not _ENCODED_VALUE.fullmatch(value):
            raise TagError(f"tag {key}={value} is not encoded as bkp encodes tags")
        try:
            decoded = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise TagError(f"tag {key}={value} does not decode to UTF-8 text") from None
        _put(values, key, decoded)
    return values


def snapshot_tenant(tags: Sequence[str]) -> str | None:
    """The tenant a snapshot's tags name, or None when they name none or are ambiguous."""
    try:
        return parse_tags(tags).get("tenant")
    except TagError:
        return None


def _key_values(tags: Sequence[str]) -> list[tuple[str, str]]:
    pairs = [t.partition("=") for t in tags]
    return [(key, value) for key, sep, value in pairs if sep and _TAG_KEY.fullmatch(key)]


def _put(values: dict[str, str], key: str, value: str) -> None:
    if key in values:
        raise TagError(f"the snapshot has two {key} tags ({values[key]!r} and {value!r})")
    values[key] = value


def _parse_legacy_tags(tags: list[str]) -> dict[str, str]:
    """Before the scheme, bkp wrote exactly [tenant=T, purpose=P, classification=C] and
    restic split P at its commas, in order: the tags between the purpose tag and the last
    classification tag are the rest of the purpose."""
    keys = [t.partition("=")[0] for t in tags]
    if keys[:2] == ["tenant", "purpose"] and "classification" in keys[2:]:
        last = len(keys) - 1 - keys[::-1].index("classification")
        return {"tenant": tags[0].partition("=")[2],
                "purpose": ",".join(tags[1:last]).partition("=")[2],
                "classification": tags[last].partition("=")[2]}
    values: dict[str, str] = {}
    for key, value in _key_values(tags):
        if key in _LEGACY_KEYS:
            _put(values, key, value)
    return values


def init_argv(repo: Repository) -> list[str]:
    return [*global_args(repo), "init"]


def init_copy_argv(pair: Repository) -> list[str]:
    """A copy's repository with the chunker parameters of the source (RESTIC_FROM_*), so
    the same files deduplicate in both."""
    return [*global_args(pair), "init", "--copy-chunker-params"]


def copy_argv(pair: Repository, snapshot_ids: Sequence[str]) -> list[str]:
    """Copy exactly these snapshots of the source (RESTIC_FROM_*) into the repository; bkp
    chose them (every snapshot the copy lacks and its keep rules would keep)."""
    return [*global_args(pair), "copy", "--", *snapshot_ids]


def backup_argv(repo: Repository, policy: Policy, host: str,
                dry_run: bool = False) -> list[str]:
    """`dry_run`: restic reads and compares everything and writes nothing (restic >= 0.13)."""
    args = [*global_args(repo), "backup", "--json", "--host", host,
            *(["--dry-run"] if dry_run else [])]
    for tag in tenant_tags(policy):
        args += ["--tag", tag]
    for pattern in policy.exclude:
        args += ["--exclude", pattern]
    return [*args, "--", *policy.sources]


def backup_stdin_argv(repo: Repository, policy: Policy, host: str, filename: str,
                      kind: str, **more: str) -> list[str]:
    """A snapshot of one stream (a database dump): restic reads stdin, nothing touches disk."""
    args = [*global_args(repo), "backup", "--json", "--host", host, "--stdin",
            "--stdin-filename", filename]
    for value in tenant_tags(policy, kind, **more):
        args += ["--tag", value]
    return args


# ---------------------------------------------------------------- the immutability canary
# A tiny snapshot bkp writes into an append-only or object-locked repository so that every
# drill can try to delete something with the nightly credential. It carries no tenant tag:
# everything that selects a tenant's snapshots (listings, "latest", retention, catalog
# sync, reports) never sees it, and it never holds tenant data.
CANARY_TAG = "bkp-canary"
KIND_CANARY = "canary"
CANARY_FILENAME = "bkp-canary"
CANARY_CONTENT = (b"bkp immutability canary: written by bkp so that each restore drill can "
                  b"prove the nightly credential cannot delete backups. No tenant data.\n")


CANARY_TAGS = (f"{TAG_SCHEME}={TAG_SCHEME_VERSION}", CANARY_TAG, f"kind={KIND_CANARY}")


def canary_argv(repo: Repository, host: str) -> list[str]:
    args = [*global_args(repo), "backup", "--json", "--host", host, "--stdin",
            "--stdin-filename", CANARY_FILENAME]
    for value in CANARY_TAGS:
        args += ["--tag", value]
    return args


def is_canary(snapshot: dict) -> bool:
    """A snapshot bkp wrote as its canary: exactly the canary's tags and path. A tenant
    snapshot someone tagged bkp-canary (restic tag --add) is tenant data, never a canary the
    drill may try to delete."""
    return (sorted(snapshot["tags"]) == sorted(CANARY_TAGS)
            and snapshot["paths"] == [f"/{CANARY_FILENAME}"])


def canaries_argv(repo: Repository) -> list[str]:
    return [*global_args(repo), "snapshots", "--json", "--tag", CANARY_TAG]


def forget_ids_argv(repo: Repository, snapshot_ids: Sequence[str]) -> list[str]:
    """Forget exactly these snapshots (bkp applied the keep rules per kind) and prune."""
    return [*global_args(repo), "forget", "--prune", "--", *snapshot_ids]


def forget_snapshots_argv(repo: Repository, snapshot_ids: Sequence[str]) -> list[str]:
    """Forget exactly these snapshots, without pruning (an erasure prunes on its own terms)."""
    return [*global_args(repo), "forget", "--", *snapshot_ids]


def prune_all_unused_argv(repo: Repository) -> list[str]:
    """Prune until no unused data is left: an erasure request must not leave a byte of the
    erased snapshots in partly used packs (restic keeps 5% unused by default)."""
    return [*global_args(repo), "prune", "--max-unused", "0"]


def cat_config_argv(repo: Repository) -> list[str]:
    """The smallest read that needs the repository open: its key and its config."""
    return [*global_args(repo), "cat", "config"]


# `restic rewrite` (drop paths from existing snapshots) arrived in restic 0.15.
REWRITE_SINCE = (0, 15)


def rewrite_argv(repo: Repository, snapshot_ids: Sequence[str],
                 paths: Sequence[str]) -> list[str]:
    """Rewrite snapshots without `paths`, forgetting the originals (restic >= 0.15)."""
    args = [*global_args(repo), "rewrite", "--forget"]
    for path in paths:
        args += ["--exclude", path]
    return [*args, "--", *snapshot_ids]


def dump_argv(repo: Repository, snapshot_id: str, filename: str) -> list[str]:
    """One file of a snapshot to stdout (a database dump, an inventory)."""
    return [*global_args(repo), "dump", "--", snapshot_id, filename]


def forget_argv(repo: Repository, tenant: str, retention: Retention) -> list[str]:
    """forget + prune in one restic call; prune only runs when something was forgotten.

    Grouping is off: the repository holds one tenant, and grouping by host or paths would
    let a renamed host or an added source keep old snapshots forever.
    """
    args = [*global_args(repo), "forget", "--json", "--prune", "--group-by", "",
            "--tag", tenant_tag(tenant)]
    for rule, count in retention.keep_rules().items():
        args += [f"--keep-{rule}", str(count)]
    return args


def snapshots_argv(repo: Repository, tenant: str | None = None) -> list[str]:
    args = [*global_args(repo), "snapshots", "--json"]
    if tenant:
        args += ["--tag", tenant_tag(tenant)]
    return args


def snapshot_selector(tenant: str, snapshot: str | None,
                      kind: str | None = KIND_FILES) -> list[str]:
    """`latest` means the tenant's latest file snapshot (not a database dump): a repository
    never holds another tenant, but the tag keeps a mistaken shared repository from
    restoring someone else's data. Snapshots older than kinds are found by
    Restic.latest_files (restic has no tag negation)."""
    if snapshot or kind is None:
        return [snapshot or "latest", "--tag", tenant_tag(tenant)]
    return ["latest", "--tag", kind_selector(tenant, kind)]


def ls_argv(repo: Repository, tenant: str, snapshot: str | None,
            lock: bool = True, kind: str | None = KIND_FILES) -> list[str]:
    # --no-lock lets the listing be read while a restore of the same snapshot holds its lock.
    unlocked = [] if lock else ["--no-lock"]
    return [*global_args(repo), "ls", *unlocked, "--json",
            *snapshot_selector(tenant, snapshot, kind)]


def restore_argv(repo: Repository, tenant: str, snapshot: str | None, target: Path,
                 includes: Sequence[str] = (), verify: bool = True,
                 kind: str | None = KIND_FILES) -> list[str]:
    args = [*global_args(repo), "restore", *snapshot_selector(tenant, snapshot, kind),
            "--target", str(target)]
    for path in includes:
        args += ["--include", path]
    return [*args, "--verify"] if verify else args


def check_argv(repo: Repository, subset: str | None = None) -> list[str]:
    args = [*global_args(repo), "check"]
    return [*args, f"--read-data-subset={subset}"] if subset else args


def unlock_argv(repo: Repository) -> list[str]:
    """Removes only stale locks: those of dead processes on this host, or expired ones."""
    return [*global_args(repo), "unlock"]


# ---------------------------------------------------------------- output parsing (pure)

@dataclass(frozen=True)
class BackupSummary:
    snapshot_id: str | None
    files: int
    bytes_added: int
    bytes_processed: int
    files_new: int = 0
    files_changed: int = 0
    errors: tuple[str, ...] = ()


def parse_backup_output(stdout: str) -> BackupSummary:
    summary: dict = {}
    errors: list[str] = []
    for line in stdout.splitlines():
        message = _json_line(line)
        kind = message.get("message_type")
        if kind == "summary":
            summary = message
        elif kind == "error":
            err = message.get("error") or {}
            text = err.get("message", "") if isinstance(err, dict) else str(err)
            errors.append(f"{message.get('item', '')}: {text}".strip(": "))
    return BackupSummary(
        snapshot_id=summary.get("snapshot_id"),
        files=int(summary.get("total_files_processed", 0)),
        bytes_added=int(summary.get("data_added", 0)),
        bytes_processed=int(summary.get("total_bytes_processed", 0)),
        files_new=int(summary.get("files_new", 0)),
        files_changed=int(summary.get("files_changed", 0)),
        errors=tuple(errors),
    )


def parse_backup_progress(line: str) -> dict | None:
    message = _json_line(line)
    return message if message.get("message_type") == "status" else None


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FullDestinationStall:
    """Watches `backup --json` status lines for restic 0.14's hang after a failed pack
    upload (it waits for an uploader that has gone and prints status forever). On a local
    destination the cause can be seen: no progress for a while on a filesystem with no room
    for a pack. Then it says "full" (a runner stop reason) and keeps what it saw in
    `detail`; on any doubt it says nothing and the policy's timeout stays the backstop."""

    STALL_SECONDS = 15.0
    ROOM_NEEDED = 64 << 20  # restic's packs are 16 MiB by default; several are written at once

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic,
                 free_bytes: Callable[[str], int] = _free_bytes) -> None:
        self.path = path
        self.clock = clock
        self.free_bytes = free_bytes
        self.detail = ""
        self._progress: tuple | None = None
        self._since = self.clock()

    def seen(self, status: dict | None) -> str | None:
        """One parsed status line (None: a line that is not one)."""
        if status is None:
            return None
        progress = (status.get("bytes_done"), status.get("files_done"))
        now = self.clock()
        if progress != self._progress:
            self._progress, self._since = progress, now
            return None
        if now - self._since < self.STALL_SECONDS:
            return None
        try:
            free = self.free_bytes(self.path)
        except OSError:
            return None
        if free >= self.ROOM_NEEDED:
            return None
        self.detail = (f"only {free >> 20} MiB free at {self.path}, and restic made no "
                       f"progress for {now - self._since:.0f}s")
        return "full"


def stall_watch(repo: Repository) -> FullDestinationStall | None:
    """A watch for a local repository (its URL is a path); remote free space is not seen."""
    return FullDestinationStall(repo.url) if repo.url.startswith("/") else None


@dataclass(frozen=True)
class ForgetResult:
    kept: int
    removed: int
    kept_snapshots: tuple[dict, ...] = ()  # {"id", "time"} of every snapshot kept


def parse_forget_output(stdout: str) -> ForgetResult:
    """forget --json prints one JSON array; prune (0.14) may add plain text after it."""
    for line in stdout.splitlines():
        if line.startswith("["):
            try:
                groups = json.loads(line)
            except json.JSONDecodeError:
                continue
            kept = [{"id": s.get("id"), "time": s.get("time")} for g in groups
                    for s in g.get("keep") or []]
            removed = sum(len(g.get("remove") or []) for g in groups)
            return ForgetResult(len(kept), removed, tuple(kept))
    return ForgetResult(0, 0)


# restic's keep rules, as its forget applies them: newest first, a snapshot is kept when it
# opens a new bucket (hour, day, ISO week, month, year; every snapshot for `last`) of a rule
# that still has room. Buckets are read in the time zone the snapshot's time was written in.

def _bucket(rule: str, moment: datetime, index: int) -> int:
    if rule == "last":
        return index
    year, month, day = moment.year, moment.month, moment.day
    if rule == "hourly":
        return ((year * 100 + month) * 100 + day) * 100 + moment.hour
    if rule == "daily":
        return (year * 100 + month) * 100 + day
    if rule == "weekly":
        iso = moment.isocalendar()
        return iso.year * 100 + iso.week
    if rule == "monthly":
        return year * 100 + month
    return year


def kept_by_rules(snapshots: Sequence[dict], rules: dict[str, int]) -> set[str]:
    """The ids of `snapshots` ({"id", "time"}) that restic's forget would keep."""
    ordered = sorted(snapshots, key=lambda s: _restic_time(s["time"]), reverse=True)
    room = dict(rules)
    last: dict[str, int | None] = dict.fromkeys(rules)
    kept = set()
    for index, snapshot in enumerate(ordered):
        moment = _restic_time(snapshot["time"])
        for rule in rules:
            if room[rule] <= 0:
                continue
            value = _bucket(rule, moment, index)
            if value != last[rule]:
                last[rule], room[rule] = value, room[rule] - 1
                kept.add(snapshot["id"])
    return kept


def _restic_time(text: str) -> datetime:
    """RFC 3339 (nanoseconds are cut to µs), keeping its own offset."""
    return datetime.fromisoformat(text)


_COPIED_FROM = re.compile(r"^snapshot ([0-9a-f]{8,64}) of \[")
_COPIED_TO = re.compile(r"^snapshot ([0-9a-f]{8,64}) saved")


def parse_copy_output(stdout: str) -> dict[str, str]:
    """restic copy's text (it has no --json): source short id -> the copy's short id, for
    every snapshot it copied."""
    copied, source = {}, None
    for line in stdout.splitlines():
        line = line.strip()
        found = _COPIED_FROM.match(line)
        if found:
            source = found.group(1)[:8]
            continue
        saved = _COPIED_TO.match(line)
        if saved and source:
            copied[source] = saved.group(1)[:8]
            source = None
    return copied


def parse_snapshots(stdout: str) -> list[dict]:
    text = stdout.strip() or "[]"
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OperationError(f"restic printed an unreadable snapshot list: {exc}") from None
    return [{"id": s.get("id"), "short_id": s.get("short_id") or (s.get("id") or "")[:8],
             "time": s.get("time"), "paths": s.get("paths") or [], "tags": s.get("tags") or [],
             "host": s.get("hostname"), "original": s.get("original"),
             **_snapshot_values(s.get("tags") or [])}
            for s in items or []]


def _snapshot_values(tags: list[str]) -> dict:
    """tenant, purpose and classification as written; None where the tags do not say."""
    try:
        values = parse_tags(tags)
    except TagError:
        values = {}
    return {key: values.get(key) for key in _LISTED_KEYS}


@dataclass(frozen=True)
class Node:
    path: str
    type: str  # file | dir | symlink | ...
    size: int
    mtime: str


@dataclass(frozen=True)
class Listing:
    snapshot_id: str
    short_id: str
    time: str
    paths: tuple[str, ...]
    nodes: tuple[Node, ...]

    @property
    def files(self) -> list[Node]:
        return [n for n in self.nodes if n.type == "file"]

    @property
    def total_bytes(self) -> int:
        return sum(n.size for n in self.files)


class NoSnapshot(OperationError):
    """restic found no snapshot to work on: no backup yet, or one that was lost."""


def parse_ls(stdout: str) -> Listing:
    """`ls --json`: the snapshot on the first line, then one node per line."""
    snapshot: dict = {}
    nodes = []
    for line in stdout.splitlines():
        item = _json_line(line)
        if item.get("struct_type") == "snapshot" and not snapshot:
            snapshot = item
        elif item.get("struct_type") == "node":
            nodes.append(Node(item.get("path", ""), item.get("type", ""),
                              int(item.get("size") or 0), item.get("mtime", "")))
    if not snapshot:
        raise NoSnapshot("no snapshot found: is there a backup yet? (`bkp snapshots "
                             "TENANT` lists them)")
    return Listing(snapshot.get("id", ""), snapshot.get("short_id", "")[:8] or
                   snapshot.get("id", "")[:8], snapshot.get("time", ""),
                   tuple(snapshot.get("paths") or ()), tuple(nodes))


def parse_restored_snapshot(stdout: str) -> str | None:
    """The short id restic names when it starts restoring (`restoring <Snapshot 46beafa4 of`)."""
    match = re.search(r"restoring <?snapshot ([0-9a-f]{8})", stdout, re.I)
    return match.group(1) if match else None


def _json_line(line: str) -> dict:
    line = line.strip()
    if not line.startswith("{"):
        return {}
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- failures
# Every restic failure is classified from its cause, because the exit code says what bkp
# found: 5 only when restic reported damage in the repository, 4 when bkp refused before
# anything was sent, 1 when the work could not be done (and why). An unknown failure is
# never called damage: a verdict needs evidence.

@dataclass(frozen=True)
class Cause:
    name: str
    pattern: re.Pattern
    advice: str
    error: type[BkpError] = OperationError


def _cause(name: str, pattern: str, advice: str, error: type[BkpError] = OperationError):
    return name, Cause(name, re.compile(pattern, re.I), advice, error)


# In the order they are tried: transport and environment first (a read-only or full
# destination also makes restic fail to write its lock), damage last.
CAUSES: dict[str, Cause] = dict([
    _cause("host_key", r"host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
           "the SSH host key of the destination does not match the pinned host_key; OpenSSH "
           "refused before sending anything. Verify the server's key out of band before "
           "changing destination.host_key", SafetyError),
    # Go's TLS client refuses during the handshake, before any request (and its credential)
    # is sent: like a changed host key.
    _cause("certificate", r"x509: |tls: failed to verify certificate",
           "the TLS certificate of destination {repo} does not verify ({detail}); restic "
           "refused before sending anything. Verify the server's certificate out of band "
           "before changing destination.ca_file", SafetyError),
    _cause("read_only", r"read-only file system",
           "destination {repo} is read-only (restic could not write there: {detail}); "
           "remount it read-write or fix the server, then re-run"),
    _cause("full", r"no space left on device|disk quota exceeded|QuotaExceeded",
           "no space left ({detail}): free space on the destination, the cache under "
           "BKP_HOME or the restore target, then re-run"),
    _cause("ssh_auth", r"permission denied \(publickey|Permission denied, please try",
           "the SSH server refused the identity_file: check the key is authorised for the "
           "user"),
    _cause("unreachable",
           r"connection refused|no route to host|network is unreachable|i/o timeout|"
           r"connection timed out|could not resolve|no such host|ssh: connect to host|"
           r"unable to start the sftp session|Temporary failure in name resolution|"
           r"connection reset by peer|broken pipe|ssh command exited",
           "destination {repo} is unreachable ({detail}): check the network and the "
           "server, then re-run"),
    _cause("s3_auth", r"AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId",
           "the S3 endpoint refused the credentials ({detail}): check credentials_file"),
    _cause("rest_auth", r"\b401 Unauthorized|HTTP response \(401\)",
           "the REST server refused the credentials in credentials_file ({detail}): check "
           "the user and password against the server's htpasswd"),
    # An append-only server (rest-server, `rclone serve restic --append-only`) answers 403
    # to every deletion but of locks; restic 0.14 retries each for a minute.
    _cause("deletion_refused",
           r"Remove\(<(?:snapshot|data|index|key)/[0-9a-f]+>\) returned error, retrying "
           r"after \S+: .*\(403\)",
           "destination {repo} refused to delete ({detail}): it is append-only for this "
           "credential. Retention there goes through `bkp maintain` with "
           "maintenance_url, a server that allows deletion"),
    _cause("no_bucket", r"NoSuchBucket|bucket does not exist",
           "the S3 bucket does not exist: create it, then run `bkp init {tenant}`"),
    _cause("permission", r"permission denied",
           "restic was denied access ({detail}): check the owner and mode of the "
           "destination and of BKP_HOME"),
    _cause("no_repository", r"unable to open config file|Is there a repository at|"
                            r"repository does not exist",
           "no repository at {repo}: run `bkp init {tenant}` (or check the destination path)"),
    _cause("wrong_password", r"wrong password|no key found",
           "wrong repository password, or the repository's key files are damaged: check "
           "the policy's password source against the key escrow; if it matches, restore "
           "the keys/ folder from the escrow"),
    _cause("locked", r"repository is already locked|unable to create lock",
           "repository {repo} is locked by another process: wait for it, or see "
           "runbooks/nightly-operations.md to clear a stale lock"),
    _cause("damage",
           r"ciphertext verification failed|invalid data returned|Pack ID does not match|"
           r"repository contains errors|LoadIndex returned errors|error loading index|"
           r"is damaged|could not load snapshot|Unmarshal: invalid character|"
           r"failed to download|StreamPack|not found in index|"
           r"Load\(<(data|index|snapshot|key)/[0-9a-f]+>.*(no such file|not exist|NoSuchKey|"
           r"404)|There were \d+ errors|hash does not match|checksum mismatch",
           "the repository {repo} is damaged ({detail}): run `bkp drill {tenant}` for the "
           "full findings and see runbooks/restore-drill.md", VerificationError),
])
# restic >= 0.17 says some causes by its exit code; 0.14 uses 1 for all of them.
BY_EXIT_CODE = {EXIT_NO_REPOSITORY: "no_repository", EXIT_LOCKED: "locked",
                EXIT_WRONG_PASSWORD: "wrong_password"}
# Causes that retrying cannot fix: restic 0.14 retries a failed write for minutes with
# backoff, which would only delay the truth.
HOPELESS = ("read_only", "full", "permission", "deletion_refused")


@dataclass(frozen=True)
class Failure:
    cause: str  # a key of CAUSES, or "timeout", "unknown"
    message: str
    error: type[BkpError]

    @property
    def exit_code(self) -> int:
        return self.error.exit_code

    def exception(self) -> BkpError:
        return self.error(self.message)


def cause_of(done: runner.Completed) -> str:
    """The name of the cause of a failed restic process, from what it said."""
    if done.timed_out:
        return "timeout"
    if done.stopped:
        return done.stopped
    for name, cause in CAUSES.items():
        if name != "damage" and cause.pattern.search(done.stderr_tail):
            return name
    if done.returncode in BY_EXIT_CODE and version().at_least(0, 17):
        return BY_EXIT_CODE[done.returncode]
    if CAUSES["damage"].pattern.search(done.stderr_tail):
        return "damage"
    return "unknown"


def damage_reported(text: str) -> bool:
    """Whether restic's output names damage, even in a command that exited 0 (restic
    skips a snapshot file it cannot read and lists the rest)."""
    return bool(CAUSES["damage"].pattern.search(text))


def classify(done: runner.Completed, repo: Repository, tenant: str, action: str,
             detail: str | None = None) -> Failure:
    """One line: what went wrong and what to do, with the exception that carries its code.
    `detail`: what bkp itself saw, when it stopped restic (restic said nothing)."""
    name = cause_of(done)
    if name == "timeout":
        return Failure(name, f"restic {action} did not finish within {done.duration_s:.0f}s "
                             f"and was killed; check the destination, or raise "
                             f"timeout_minutes in the policy", OperationError)
    if name == "unknown":
        return Failure(name, f"restic {action} failed (exit {done.returncode}): "
                             f"{_last_meaningful_line(done.stderr_tail)}", OperationError)
    cause = CAUSES[name]
    detail = detail or _matching_line(cause.pattern, done.stderr_tail)
    return Failure(name, cause.advice.format(repo=repo.label or repo.url, tenant=tenant,
                                             detail=detail), cause.error)


def classify_damage(done: runner.Completed, repo: Repository, tenant: str) -> str:
    cause = CAUSES["damage"]
    return cause.advice.format(repo=repo.label or repo.url, tenant=tenant,
                               detail=_matching_line(cause.pattern, done.stderr_tail))


def explain_failure(done: runner.Completed, repo: Repository, tenant: str, action: str) -> str:
    return classify(done, repo, tenant, action).message


def stop_on_hopeless(line: str) -> str | None:
    """For the runner: stop restic at the first sign of a cause retrying cannot fix."""
    for name, cause in CAUSES.items():
        if cause.pattern.search(line):
            return name if name in HOPELESS else None
    return None


def _matching_line(pattern: re.Pattern, tail: str) -> str:
    lines = [ln.strip() for ln in tail.splitlines() if pattern.search(ln)]
    return _clip(lines[0]) if lines else _last_meaningful_line(tail)


def _clip(line: str, limit: int = 200) -> str:
    return line if len(line) <= limit else line[:limit] + "..."


# A frame of the Go stack trace restic 0.14 prints after some errors: "\tpath/file.go:123".
_GO_FRAME = re.compile(r"^\t\S+\.go:\d+")


def _without_stack_trace(tail: str) -> list[str]:
    """The lines before a Go stack trace: its last line (runtime.goexit) says nothing."""
    lines = tail.splitlines()
    for i in range(1, len(lines)):
        if _GO_FRAME.match(lines[i]):
            return lines[:i - 1]
    return lines


def _last_meaningful_line(tail: str) -> str:
    lines = [ln.strip() for ln in _without_stack_trace(tail) if ln.strip()
             and ln.strip() != "..." and not ln.startswith(("\t", " "))]
    fatal = [ln for ln in lines if ln.startswith("Fatal:")]
    return _clip((fatal or lines or ["no output"])[-1], 300)


# ---------------------------------------------------------------- execution

# Variables of bkp's own environment that must not reach restic: they could point it at
# another repository, credential or rclone remote (an operator's RCLONE_CONFIG_*).
INHERITED_DROPPED = ("RESTIC_", "AWS_", "RCLONE_")

@dataclass
class Restic:
    """Runs restic for one tenant's repository."""

    repo: Repository
    tenant: str
    timeout: float | None = None
    calls: int = 0  # counted so the benchmark can report restic processes per tenant
    # What "latest" means: the latest snapshot of this kind (None: of any kind, for bkp's
    # own evidence repository, where a newer snapshot of any making must be seen).
    latest_kind: str | None = KIND_FILES

    def run(self, argv: Sequence[str], action: str, *,
            on_stdout_line: Callable[[str], None] | None = None,
            check: bool = True, timeout: float | None = None,
            stop_on_stdout: Callable[[str], str | None] | None = None) -> runner.Completed:
        """Run restic; a lock left by a dead restic of this host is removed and the command
        tried once more. A live lock is never removed."""
        done = self._run_once(argv, on_stdout_line, timeout, stop_on_stdout)
        if not done.ok and cause_of(done) == "locked":
            unlocked = self._run_once(unlock_argv(self.repo), None, timeout)
            if unlocked.ok:
                done = self._run_once(argv, on_stdout_line, timeout, stop_on_stdout)
        if check and not done.ok:
            raise self.failure(done, action).exception()
        return done

    def failure(self, done: runner.Completed, action: str) -> Failure:
        return classify(done, self.repo, self.tenant, action)

    def _run_once(self, argv, on_stdout_line, timeout, stop_on_stdout=None) -> runner.Completed:
        self.calls += 1
        return runner.run(argv, env=self.repo.env.env, secrets=self.repo.env.secrets,
                          timeout=timeout or self.timeout, on_stdout_line=on_stdout_line,
                          drop_env_prefixes=INHERITED_DROPPED, stop_when=stop_on_hopeless,
                          stop_on_stdout=stop_on_stdout)

    def init(self) -> None:
        self.run(init_argv(self.repo), "init")

    def init_copy(self) -> None:
        """`repo` is a pair (pair_repository): initialise it with the source's chunker
        parameters."""
        self._require_copy()
        self.run(init_copy_argv(self.repo), "init --copy-chunker-params")

    def copy(self, snapshot_ids: Sequence[str]) -> dict[str, str]:
        """`repo` is a pair: copy these snapshots of the source into it; returns source
        short id -> copy short id of each snapshot copied."""
        self._require_copy()
        done = self.run(copy_argv(self.repo, snapshot_ids), "copy")
        return parse_copy_output(done.stdout)

    @staticmethod
    def _require_copy() -> None:
        if not version().at_least(*COPY_SINCE):
            raise OperationError(f"restic {version()} cannot copy between repositories with "
                                 f"--from-repo: copies need restic 0.14 or newer")

    def backup(self, policy: Policy, host: str,
               progress: Callable[[dict], None] | None = None,
               dry_run: bool = False) -> tuple[BackupSummary, int]:
        stall = stall_watch(self.repo)

        def on_line(line: str) -> str | None:
            """Progress for the caller; a reason to stop restic when it hangs on a full
            disk (each line parsed once for both)."""
            status = parse_backup_progress(line)
            if status and progress:
                progress(status)
            return stall.seen(status) if stall else None

        done = self.run(backup_argv(self.repo, policy, host, dry_run), "backup",
                        check=False, stop_on_stdout=on_line)
        summary = parse_backup_output(done.stdout)
        if done.returncode == EXIT_PARTIAL and summary.snapshot_id and not done.timed_out:
            return summary, EXIT_PARTIAL
        if not done.ok:
            seen = stall.detail if stall and done.stopped == "full" else None
            raise classify(done, self.repo, self.tenant, "backup", detail=seen).exception()
        return summary, 0

    def backup_stream(self, policy: Policy, host: str, filename: str, kind: str,
                      tags: dict[str, str], producer: Sequence[str],
                      producer_env: Mapping[str, str], producer_secrets: Sequence[str] = (),
                      on_chunk: Callable[[bytes], None] | None = None,
                      vet: Callable[[], str | None] | None = None) -> runner.Piped:
        """A snapshot of what `producer` writes (a database dump), streamed through bkp so
        that a producer that fails kills restic before the end of its input: a truncated
        stream never becomes a snapshot. Returns both processes; the caller judges."""
        self.calls += 1
        return runner.pipe(
            producer, backup_stdin_argv(self.repo, policy, host, filename, kind, **tags),
            producer_env=producer_env, consumer_env=self.repo.env.env,
            secrets=[*self.repo.env.secrets, *producer_secrets], timeout=self.timeout,
            on_chunk=on_chunk, vet=vet, drop_env_prefixes=("RESTIC_", "AWS_", "PG", "MYSQL_"))

    def backup_bytes(self, policy: Policy, host: str, filename: str, kind: str,
                     tags: dict[str, str], data: bytes) -> BackupSummary:
        """A snapshot of a few bytes bkp made (a dump's inventory)."""
        self.calls += 1
        done = runner.run(backup_stdin_argv(self.repo, policy, host, filename, kind, **tags),
                          env=self.repo.env.env, secrets=self.repo.env.secrets,
                          timeout=self.timeout, stdin_data=data,
                          drop_env_prefixes=("RESTIC_", "AWS_"))
        if not done.ok:
            raise self.failure(done, "backup").exception()
        return parse_backup_output(done.stdout)

    def forget_ids(self, snapshot_ids: Sequence[str]) -> None:
        self.run(forget_ids_argv(self.repo, snapshot_ids), "forget/prune")

    def erase_snapshots(self, snapshot_ids: Sequence[str]) -> str:
        """Forget these snapshots, then prune every unused byte; prune's report."""
        self.run(forget_snapshots_argv(self.repo, snapshot_ids), "forget")
        return self.run(prune_all_unused_argv(self.repo), "prune").stdout

    def opens(self) -> bool:
        """Whether restic can open the repository with the tenant's password. False only
        when restic says there is no repository or no key the password opens; any other
        failure (unreachable, refused) is no answer and raises."""
        done = self.run(cat_config_argv(self.repo), "cat config", check=False)
        if done.ok:
            return True
        failure = self.failure(done, "cat config")
        if failure.cause in ("no_repository", "wrong_password"):
            return False
        raise failure.exception()

    def dump(self, snapshot_id: str, filename: str, target: int) -> runner.Completed:
        """One file of a snapshot into the open file descriptor `target`."""
        self.calls += 1
        return runner.run(dump_argv(self.repo, snapshot_id, filename), env=self.repo.env.env,
                          secrets=self.repo.env.secrets, timeout=self.timeout,
                          drop_env_prefixes=("RESTIC_", "AWS_"), stdout_file=target)

    def dump_to_file(self, snapshot_id: str, filename: str, target: Path, *,
                     exclusive: bool) -> None:
        """One file of a snapshot written to `target` (mode 600; `exclusive`: never over an
        existing file). Half a file is removed: it must not be mistaken for the whole."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
        flags |= os.O_EXCL if exclusive else os.O_TRUNC
        fd = os.open(target, flags, 0o600)
        try:
            done = self.dump(snapshot_id, filename, fd)
        finally:
            os.close(fd)
        if not done.ok:
            target.unlink(missing_ok=True)
            raise self.failure(done, "dump").exception()

    def dump_bytes(self, snapshot_id: str, filename: str) -> bytes:
        """A small file of a snapshot (an inventory) as bytes."""
        done = self.run(dump_argv(self.repo, snapshot_id, filename), "dump")
        return done.stdout.encode("utf-8")

    def latest_files(self) -> str:
        """The id of the latest file snapshot, also where snapshots older than kinds carry no
        kind tag (restic cannot select "no kind"); NoSnapshot when there is none."""
        files = [s for s in self.snapshots() if snapshot_group(s)[0] == KIND_FILES]
        if not files:
            raise NoSnapshot("no snapshot found: is there a backup yet? (`bkp snapshots "
                             "TENANT` lists them)")
        return max(files, key=lambda s: _restic_time(s["time"]))["id"]

    def canaries(self) -> list[dict]:
        """The immutability canaries in the repository (usually one)."""
        done = self.run(canaries_argv(self.repo), "snapshots")
        return [s for s in parse_snapshots(done.stdout) if is_canary(s)]

    def write_canary(self, host: str) -> str:
        """A new canary snapshot of a few bytes bkp made; its id."""
        self.calls += 1
        done = runner.run(canary_argv(self.repo, host), env=self.repo.env.env,
                          secrets=self.repo.env.secrets, timeout=self.timeout,
                          stdin_data=CANARY_CONTENT, drop_env_prefixes=("RESTIC_", "AWS_"))
        if not done.ok:
            raise self.failure(done, "backup").exception()
        summary = parse_backup_output(done.stdout)
        if not summary.snapshot_id:
            raise OperationError("restic wrote the canary but named no snapshot id")
        return summary.snapshot_id

    def forget(self, retention: Retention) -> ForgetResult:
        done = self.run(forget_argv(self.repo, self.tenant, retention), "forget/prune")
        return parse_forget_output(done.stdout)

    def unlock_stale(self) -> None:
        """Remove locks of dead restic processes of this host (restic's own staleness test);
        a live lock is never touched."""
        self.run(unlock_argv(self.repo), "unlock")

    def ls(self, snapshot: str | None, lock: bool = True) -> Listing:
        done = self.run(ls_argv(self.repo, self.tenant, snapshot, lock, self.latest_kind), "ls")
        try:
            return parse_ls(done.stdout)
        except NoSnapshot:
            if snapshot is not None or self.latest_kind is None:
                raise
            # No snapshot tagged kind=files: a repository written before kinds existed.
            return self.ls(self.latest_files(), lock)

    def restore(self, snapshot: str | None, target: Path, includes: Sequence[str] = (),
                verify: bool = True) -> runner.Completed:
        """Returns the finished process: verification errors are findings for the caller."""
        return self.run(restore_argv(self.repo, self.tenant, snapshot, target, includes,
                                     verify, self.latest_kind), "restore", check=False)

    def check(self, subset: str | None) -> runner.Completed:
        return self.run(check_argv(self.repo, subset), "check", check=False)

    def interactive(self, args: Sequence[str]) -> int:
        """Plain restic with the operator's arguments on the terminal (`bkp restic`)."""
        self.calls += 1
        return runner.interactive([*global_args(self.repo), *args], env=self.repo.env.env,
                                  secrets=self.repo.env.secrets,
                                  drop_env_prefixes=("RESTIC_", "AWS_"))

    def snapshots(self) -> list[dict]:
        """The snapshots; VerificationError when restic skipped one it could not read."""
        done = self.run(snapshots_argv(self.repo, self.tenant), "snapshots")
        if damage_reported(done.stderr_tail):
            raise VerificationError(classify_damage(done, self.repo, self.tenant))
        # The tag selector also matches a snapshot of another tenant whose old-format tags
        # were injected with this tenant's tag: only the tenant the tags name is listed.
        return [s for s in parse_snapshots(done.stdout) if s["tenant"] == self.tenant]

    def other_tenants(self) -> set[str]:
        """Tenants other than this one that snapshots in the repository name (a repository
        never holds another tenant: an erasure of one that does is refused)."""
        done = self.run(snapshots_argv(self.repo), "snapshots")
        return {s["tenant"] for s in parse_snapshots(done.stdout)
                if s["tenant"] and s["tenant"] != self.tenant}

