"""The per-drill report an auditor reads: what was restored, how it was checked, the result."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bkp import __version__
from bkp.catalog import HOST, utc_now
from bkp.context import Context
from bkp.policy import Policy


def report_path(ctx: Context, tenant: str, number: int, run_id: int) -> Path:
    folder = ctx.settings.home / "reports" / "drills" / tenant
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"drill-{number:04d}-run-{run_id:06d}.md"


def render_report(policy: Policy, data: dict, operator: str, written: str) -> str:
    verdict = {"passed": "PASSED", "failed": "FAILED: problems found",
               "error": "COULD NOT RUN", "interrupted": "INTERRUPTED"}.get(data["result"],
                                                                         data["result"])
    restore_s = data.get("restore_s")
    rto = (f"{restore_s / 60:.1f} min (limit {policy.drill.rto_minutes} min)"
           if restore_s is not None else "not reached")
    sample = ("every file" if policy.drill.sample == 0 else f"{policy.drill.sample} files")
    lines = [
        f"# Restore drill {data['number']} of {policy.tenant}: {verdict}",
        "",
        f"- Written: {written} (UTC) on host {HOST}, operator: {operator}; catalog run "
        f"{data['run_id']}",
        f"- Tools: bkp {__version__}, restic {data.get('restic_version') or 'unknown'}",
        f"- Repository: {data.get('repository') or '-'}",
        f"- Tenant: {policy.tenant} ({policy.description or policy.purpose}), "
        f"classification {policy.classification}",
        f"- Destination: {policy.destination.type}, country {policy.destination.country}",
        f"- Snapshot: {data.get('snapshot_id') or 'none'} taken {data.get('snapshot_time') or '-'}",
        f"- Duration: {data.get('duration_s')} s; restore and verification: {rto}",
        "",
        "## What was checked",
        "",
        f"1. Restored the snapshot into scratch space with restic's read-back verification: "
        f"{data['files_checked']} files, {data['bytes_restored']} bytes.",
        "2. Compared the restored tree with the snapshot's own listing: every file present "
        "with its size.",
        f"3. Compared a sample ({sample}) with the live source by SHA-256 where the source is "
        f"unchanged since the snapshot: {data['sample_checked']} compared, "
        f"{data['sample_skipped']} skipped because they changed or were removed.",
        f"4. Checked the repository, reading pack subset {data.get('subset_read') or '-'} "
        f"(the subsets rotate so a year of drills reads every pack).",
        f"5. Compared the restore time with the RTO of {policy.drill.rto_minutes} minutes.",
        *_database_steps(data.get("databases")),
        *_immutability_step(data.get("immutability"), "immutability" in data),
        *_copies_immutability(data.get("copies_immutability")),
        "",
        "## Result",
        "",
    ]
    if data.get("error"):
        lines.append(f"The drill could not complete: {data['error']}")
    elif data["problems"]:
        lines += [f"- {p['message']}" for p in data["problems"]]
    else:
        lines.append("No problems found. The scratch copy was removed after the checks.")
    return "\n".join(lines) + "\n"


def _database_steps(databases: list | None) -> list[str]:
    """Per database: the dump loaded into a scratch server, and what it held."""
    if not databases:
        return []
    lines = ["6. Loaded each database's latest dump into a scratch server and compared its "
             "tables and row counts with those recorded when the dump was made:", "",
             "| database | type | dump | result | tables | rows | load |",
             "|---|---|---|---|---|---|---|"]
    for db in databases:
        load = f"{db['load_s']:.1f} s" if db.get("load_s") is not None else "-"
        lines.append(f"| {db['name']} | {db['type']} | {(db.get('snapshot_id') or '-')[:8]} | "
                     f"{db['status']} | {db['tables']} | {db['rows']} | {load} |")
    return lines


def _immutability_step(proof: dict | None, asked: bool) -> list[str]:
    """An append-only or object-locked destination: the deletion tried, and its answer."""
    if not asked:
        return []
    if proof is None:
        return ["7. Tried to delete the canary snapshot with the nightly credential: not "
                "reached."]
    said = ("REFUSED: the nightly credential cannot delete backups" if
            proof["deletion"] == "refused" else
            "SUCCEEDED: the backups are deletable by the nightly credential")
    return [f"7. Tried to delete the canary snapshot {proof['canary'][:8]} (a few bytes bkp "
            f"wrote, no tenant data) with the nightly credential, by {proof['method']}: "
            f"{said} ({proof['detail']})."]


def _copies_immutability(copies: list | None) -> list[str]:
    """The append-only or object-locked copies: this drill proves the destination only; a
    copy is proven by its own copy drill, whose last proof is named."""
    if not copies:
        return []
    lines = ["", "Copies at other sites are proven only by their own copy drill (`bkp drill "
             "TENANT --copy ID`):", ""]
    for copy in copies:
        last = copy.get("last_proof")
        if copy["proven"]:
            lines.append(f"- copy {copy['id']}: immutability proven by copy drill run "
                         f"{last['run_id']} ({last['time'][:19]}Z, the deletion refused).")
        elif last is None:
            lines.append(f"- copy {copy['id']}: immutability NOT proven: no copy drill yet.")
        else:
            lines.append(f"- copy {copy['id']}: immutability NOT proven: the last copy drill "
                         f"(run {last['run_id']}, {last['time'][:19]}Z) {last['status']}, "
                         f"deletion {last.get('deletion') or 'not tried'}.")
    return lines


def write_report(ctx: Context, policy: Policy, data: dict) -> tuple[Path, str]:
    """Write the report; returns its path and SHA-256, which goes into the drill's audit
    event so that an edited report is detectable."""
    path = report_path(ctx, policy.tenant, data["number"], data["run_id"])
    content = render_report(policy, data, ctx.settings.operator, utc_now()).encode("utf-8")
    path.write_bytes(content)
    path.chmod(0o600)
    return path, hashlib.sha256(content).hexdigest()
