"""Destinations: where a tenant's repository lives (local, sftp, s3, rest).

Each destination does a preflight before restic touches anything (is the server the one we
pinned, is the bucket where the policy says), knows whether a repository already exists
there, and builds the restic Repository. boto3 and paramiko are imported only by the
destination that needs them: `bkp --help` must stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from bkp.policy import Policy
from bkp.restic import Repository, Restic


@dataclass(frozen=True)
class Preflight:
    reachable: bool
    initialised: bool | None  # None: not looked at; restic's own error will say
    detail: str = ""


@dataclass(frozen=True)
class StoredObject:
    """One object at a repository's location: a file, an S3 object version or delete
    marker, a REST object. What an erasure inventories, removes and must not find after."""

    name: str  # relative to the repository's location
    size: int = 0
    version: str | None = None  # S3: the version id ("null" in an unversioned bucket)
    marker: bool = False  # S3: a delete marker
    modified: datetime | None = None  # S3: when this version was written (Object Lock)

    @property
    def is_key(self) -> bool:
        return self.name.startswith("keys/")

    def describe(self) -> str:
        if self.marker:
            return f"{self.name} (delete marker {self.version})"
        if self.version and self.version != "null":
            return f"{self.name} (version {self.version})"
        return self.name


class Destination(Protocol):
    policy: Policy

    def preflight(self) -> Preflight: ...

    def nightly_preflight(self) -> Preflight:
        """The checks every nightly backup needs, at the least cost (may equal preflight)."""

    def prepare(self) -> None:
        """Create what restic init needs (directories); never touches an existing repository."""

    def confirm_unchanged(self) -> None:
        """After restic wrote: the repository is still the one the nightly preflight found
        (raises OperationError when it is not)."""

    def repository(self) -> Repository: ...

    def usage_bytes(self) -> int | None: ...

    def observed(self) -> dict:
        """What a run saw of where its data went (type, off_site, transport, the pinned
        host key, the bucket's own region, TLS): evidence for the report, no secret."""

    def snapshot_ids(self) -> set[str] | None:
        """The ids of the repository's snapshots, read as the names of its snapshot files
        (no key derivation, no restic process), or None when they cannot be read cheaply.
        Used only to confirm a record of the snapshots (see tenants.retention)."""

    # Erasure (bkp offboard): through the destination itself, never restic, which will not
    # remove the key it uses. `stored_objects` lists every object at the location (all
    # versions), `remove_keys` removes the repository's key files first (every surviving
    # object is then unreadable), `remove_objects` everything else; both return what they
    # removed and raise OperationError, having removed part, when the location fails them.

    def stored_objects(self) -> list[StoredObject]: ...

    def remove_keys(self) -> list[StoredObject]: ...

    def remove_objects(self) -> list[StoredObject]: ...

    def erasure_blocked_until(self) -> str | None:
        """Why the provider will not let the objects go yet (S3 Object Lock), naming the
        earliest date it will; None when nothing holds them."""


def snapshot_names(names) -> set[str]:
    """Snapshot ids among file names: restic names a snapshot file by its 64-hex id."""
    return {name for name in names if isinstance(name, str) and len(name) == 64
            and all(c in "0123456789abcdef" for c in name)}


def destination_for(policy: Policy, home: Path) -> Destination:
    kind = policy.destination.type
    if kind == "local":
        from bkp.destinations.local import LocalDestination

        return LocalDestination(policy, home)
    if kind == "sftp":
        from bkp.destinations.sftp import SftpDestination

        return SftpDestination(policy, home)
    if kind == "s3":
        from bkp.destinations.s3 import S3Destination

        return S3Destination(policy, home)
    if kind == "rest":
        from bkp.destinations.rest import RestDestination

        return RestDestination(policy, home)
    raise ValueError(f"unknown destination type {kind!r}")


def open_repository(policy: Policy, home: Path) -> Restic:
    """A tenant's repository for restic, after the full preflight (pinned host key, bucket
    region): refused before restic runs. What every command that reads a repository does."""
    destination = destination_for(policy, home)
    destination.preflight()
    return Restic(destination.repository(), policy.tenant,
                  timeout=policy.timeout_minutes * 60)


def cache_dir(home: Path, tenant: str) -> Path:
    return home / "cache" / tenant


def cache_options(home: Path, tenant: str) -> dict:
    """restic's cache under BKP_HOME, or none where BKP_HOME cannot be written (a read
    on a read-only BKP_HOME must still work; restic fails on a cache it cannot write)."""
    path = cache_dir(home, tenant)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return {"cache_dir": path, "no_cache": not os.access(existing, os.W_OK)}
