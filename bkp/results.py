"""The results of per-tenant work, as typed values: one class per JSON document element of
the command-line contract, with constructors for the outcomes that are not the work's own
(refused by a lock, invalid policy, skipped after a stop, a failure nobody foresaw).

`status` keeps the contract's words (ok|failed for runs, passed|failed for drills); the
added field `result` says why something did not succeed: failed, error (could not run),
interrupted, refused, invalid or skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar


@dataclass
class TenantResult:
    """Base: a tenant, a contract status, and why (`result`)."""

    tenant: str
    status: str
    error: str | None = None
    result: str | None = None

    FAILED: ClassVar[str] = "failed"

    @classmethod
    def failure(cls, tenant: str, error: str, result: str = "failed"):
        return cls(tenant=tenant, status=cls.FAILED, error=error, result=result)

    @classmethod
    def refused(cls, tenant: str, error: str):
        """Another bkp process works on the tenant: nothing was done, nothing recorded."""
        return cls.failure(tenant, error, "refused")

    @classmethod
    def invalid(cls, tenant: str, error: str):
        return cls.failure(tenant, error, "invalid")

    @classmethod
    def skipped(cls, tenant: str):
        return cls.failure(tenant, "bkp was stopped before this tenant", "skipped")

    def to_json(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra", None) or {}
        return {**data, **extra}


@dataclass
class InitEntry(TenantResult):
    repository: str | None = None
    extra: dict = field(default_factory=dict)  # copies


@dataclass
class BackupRun(TenantResult):
    snapshot_id: str | None = None
    files: int | None = None
    bytes_added: int | None = None
    duration_s: float | None = None
    run_id: int | None = None
    snapshots_kept: int | None = None
    restic_calls: int | None = None
    extra: dict = field(default_factory=dict)  # added by later work (copies, databases)


@dataclass
class DrillRun(TenantResult):
    snapshot_id: str | None = None
    files_checked: int | None = None
    bytes_restored: int | None = None
    duration_s: float | None = None
    problems: list = field(default_factory=list)
    run_id: int | None = None
    number: int | None = None
    snapshot_time: str | None = None
    subset_read: str | None = None
    sample_checked: int | None = None
    sample_skipped: int | None = None
    restore_s: float | None = None
    rto_minutes: int | None = None
    restic_version: str | None = None
    repository: str | None = None
    report: str | None = None
    report_sha256: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class MaintainEntry(TenantResult):
    """`bkp maintain`: retention applied on an append-only destination."""

    snapshots_kept: int | None = None  # file snapshots kept (as backup runs count them)
    snapshots_forgotten: int | None = None  # snapshots of every kind forgotten and pruned
    repository: str | None = None  # the maintenance location, without credential
    run_id: int | None = None
    duration_s: float | None = None
    restic_calls: int | None = None
    extra: dict = field(default_factory=dict)  # copies: each append-only copy's result


@dataclass
class SyncEntry(TenantResult):
    snapshots: int | None = None
    added: int = 0
    latest: dict | None = None


@dataclass
class EvidenceCopy:
    status: str  # ok | failed
    snapshot_id: str | None = None
    run_id: int | None = None
    audit_head: str | None = None
    events: int | None = None
    files: int | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]
