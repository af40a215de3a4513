"""`bkp run`: what cron calls. Every backup and drill that is due now, once per slot.

A global run lock makes an overlapping `bkp run` exit at once instead of queuing behind the
one still working. Runs that died (SIGKILL, power loss) are closed as `interrupted` first,
and their slots are due again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bkp import locks
from bkp.catalog import parse_time
from bkp.context import Context, Outcome, highest_exit, run_per_tenant
from bkp.policy import Policy
from bkp.results import BackupRun, DrillRun
from bkp.tenants import monitoring
from bkp.tenants.backup import backup_tenant
from bkp.tenants.drill import drill_tenant
from bkp.tenants.monitoring import pinged
from bkp.tenants.schedule import Due, plan_due, slot_label
from bkp.tenants.status import tenant_status


@dataclass
class RunReport:
    runs: list[Outcome] = field(default_factory=list)
    drills: list[Outcome] = field(default_factory=list)
    not_due: list[Due] = field(default_factory=list)
    evidence: Outcome | None = None  # the copy of bkp's own records, when configured

    @property
    def exit_code(self) -> int:
        return highest_exit(self.runs + self.drills + ([self.evidence] if self.evidence else []))

    def to_json(self) -> dict:
        out = {"runs": [o.data for o in self.runs], "drills": [o.data for o in self.drills],
               "not_due": [{"tenant": d.tenant, "kind": d.kind, "slot": slot_label(d.slot)}
                           for d in self.not_due]}
        if self.evidence is not None:
            out["evidence"] = self.evidence.data
        return out


def plan(ctx: Context, policies: list[Policy], now: datetime) -> list[Due]:
    """Due decisions for every tenant and kind, from the policies and the catalog."""
    decisions = []
    for policy in policies:
        for kind, expression in (("backup", policy.schedule.backup),
                                 ("drill", policy.schedule.drill)):
            runs = ctx.catalog.runs(tenant=policy.tenant, kind=kind, limit=50)
            due = plan_due(policy.tenant, kind, expression, runs, now)
            if due:
                decisions.append(due)
    return decisions


def run_due(ctx: Context, policies: list[Policy], *, jobs: int = 1,
            now: datetime | None = None, healthcheck_url: str | None = None,
            prometheus_textfile: Path | None = None,
            invalid: list[Outcome] | None = None,
            evidence: Callable[[], Outcome] | None = None) -> RunReport:
    """`invalid` are the tenants whose policy could not be loaded: reported as failed runs,
    so that the night is not called green while a tenant silently drops out. `evidence`
    copies bkp's own records off-site after the night's work, when anything was recorded
    since the last copy."""
    with locks.run_lock(ctx.settings.locks):
        now = now or datetime.now(UTC)
        report = RunReport()
        decisions = plan(ctx, policies, now)
        report.not_due = [d for d in decisions if not d.due]
        due = {(d.tenant, d.kind): d for d in decisions if d.due}
        by_tenant = {p.tenant: p for p in policies}
        monitoring.ping(healthcheck_url, "start")

        backups = [by_tenant[t] for (t, kind) in due if kind == "backup"]
        report.runs = list(invalid or []) + run_per_tenant(
            backups, lambda p: pinged(p, lambda: backup_tenant(
                ctx, p, trigger="schedule", slot=slot_label(due[(p.tenant, "backup")].slot))),
            jobs, result=BackupRun)
        drills = [by_tenant[t] for (t, kind) in due if kind == "drill"]
        report.drills = run_per_tenant(
            drills, lambda p: drill_tenant(ctx, p, trigger="schedule",
                                           slot=slot_label(due[(p.tenant, "drill")].slot)), 1,
            result=DrillRun)

        if evidence is not None and records_changed_since_evidence(ctx):
            report.evidence = evidence()
        done = report.runs + report.drills + ([report.evidence] if report.evidence else [])
        failed = [o for o in done if o.exit_code]
        monitoring.ping(healthcheck_url, "fail" if failed else "success",
                        monitoring.ping_body(report.runs, report.drills, report.evidence))
        if prometheus_textfile:
            write_metrics(ctx, policies, prometheus_textfile, report)
        return report


def records_changed_since_evidence(ctx: Context) -> bool:
    """Whether anything was recorded since the last evidence copy (whose own event is then
    the newest one)."""
    last = ctx.catalog.last_audit_event()
    return last is None or not (last["action"] == "evidence" and last["outcome"] == "ok")


def metric_samples(ctx: Context, policies: list[Policy], report: RunReport | None = None):
    if report is not None:
        yield "bkp_run_last_ok", {}, 0.0 if report.exit_code else 1.0
        yield "bkp_run_last_timestamp_seconds", {}, datetime.now(UTC).timestamp()
    # This run's own outcomes win over the catalog: a failure the catalog could not record
    # (a full BKP_HOME) must not read as the previous night's success.
    failed_now = {o.tenant for o in (report.runs if report else []) if o.exit_code}
    for policy in policies:
        status = tenant_status(ctx.catalog, policy)
        labels = {"tenant": policy.tenant}
        last, good = status["last_backup"], status["last_good_backup"]
        if good:
            yield ("bkp_backup_last_success_timestamp_seconds", labels,
                   parse_time(good["time"]).timestamp())
        if policy.tenant in failed_now:
            yield "bkp_backup_last_ok", labels, 0.0
        elif last:
            yield "bkp_backup_last_ok", labels, 1.0 if last["status"] == "ok" else 0.0
        row = ctx.catalog.last_run(policy.tenant, "backup")
        if row and row["duration_s"] is not None:
            yield "bkp_backup_last_duration_seconds", labels, row["duration_s"]
        good_row = ctx.catalog.last_run(policy.tenant, "backup", status="ok")
        if good_row and good_row["bytes_added"] is not None:
            yield "bkp_backup_last_bytes_added", labels, good_row["bytes_added"]
        yield "bkp_backup_rpo_ok", labels, 1.0 if status["rpo_ok"] else 0.0
        if status.get("snapshot_count") is not None:
            yield "bkp_backup_snapshots", labels, status["snapshot_count"]
        drill = ctx.catalog.last_run(policy.tenant, "drill")
        if drill and drill["status"] not in ("running",):
            yield "bkp_drill_last_passed", labels, 1.0 if drill["status"] == "passed" else 0.0
            if drill["ended_at"]:
                yield ("bkp_drill_last_timestamp_seconds", labels,
                       parse_time(drill["ended_at"]).timestamp())
            if drill["duration_s"] is not None:
                yield "bkp_drill_last_duration_seconds", labels, drill["duration_s"]


def write_metrics(ctx: Context, policies: list[Policy], path: Path,
                  report: RunReport | None = None) -> None:
    monitoring.write_textfile(path, monitoring.render_textfile(
        metric_samples(ctx, policies, report)))


def report_run_not_started(healthcheck_url: str | None,
                           prometheus_textfile: Path | None) -> None:
    """The run could not even open its records (BKP_HOME full, read-only, catalog lost): say
    so where monitoring looks, since nothing can be written to the catalog."""
    monitoring.ping(healthcheck_url, "fail", "bkp run could not start: its catalog cannot be "
                    "opened or written (BKP_HOME full, read-only or lost); see the bkp "
                    "host's log")
    if prometheus_textfile:
        monitoring.write_textfile(prometheus_textfile, monitoring.render_textfile([
            ("bkp_run_last_ok", {}, 0.0),
            ("bkp_run_last_timestamp_seconds", {}, datetime.now(UTC).timestamp()),
            ("bkp_catalog_ok", {}, 0.0)]))


def after_manual_work(ctx: Context, policies: list[Policy], healthcheck_url: str | None,
                      prometheus_textfile: Path | None) -> bool:
    """Alerts follow the truth after a manual backup or drill: the metrics are rewritten,
    and when every tenant is now fine the run's own check is cleared (a failed night that an
    operator fixed by hand must not stay red until the next night). True when cleared."""
    if prometheus_textfile:
        write_metrics(ctx, policies, prometheus_textfile)
    if not healthcheck_url:
        return False
    states = [tenant_status(ctx.catalog, p) for p in policies]
    fine = all(s["state"] == "ok" and s.get("drill_ok") is not False for s in states)
    if fine:
        monitoring.ping(healthcheck_url, "success",
                        f"all {len(states)} tenants ok after a manual run")
    return fine
