"""Monitoring operators already use: Healthchecks.io-style pings and a Prometheus textfile.

A failing ping endpoint never fails a backup: pings are best effort with a short timeout.
A ping leaves the building: it travels encrypted (https, plain http only to a loopback host)
and its body names tenant ids, statuses and exit codes, never an error text (which can
carry paths and file names of tenant data).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from bkp import names
from bkp.context import Outcome
from bkp.policy import Policy, url_transport_problem

log = logging.getLogger("bkp.monitoring")

PING_TIMEOUT = 10
BODY_LIMIT = 10_000  # Healthchecks.io keeps the first 10 kB of a ping body


def ping_url(base: str, event: str) -> str:
    """Healthchecks.io convention: BASE/start, BASE (success), BASE/fail."""
    base = base.rstrip("/")
    return {"start": f"{base}/start", "success": base, "fail": f"{base}/fail"}[event]


def ping(base: str | None, event: str, body: str = "") -> bool:
    if not base:
        return False
    problem = url_transport_problem(base, "a ping")
    if problem:
        log.warning("healthcheck ping not sent to %s: %s", _without_query(base), problem)
        return False
    import urllib.error  # a pod with no healthcheck URL never needs http (start-up cost)
    import urllib.request

    url = ping_url(base, event)
    request = urllib.request.Request(url, data=body.encode("utf-8")[:BODY_LIMIT], method="POST",
                                     headers={"User-Agent": "bkp"})
    try:
        with urllib.request.urlopen(request, timeout=PING_TIMEOUT) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("healthcheck ping %s failed: %s (the backup itself is not affected)",
                    _without_query(url), exc)
        return False


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def ping_body(runs: Sequence[Outcome] = (), drills: Sequence[Outcome] = (),
              evidence: Outcome | None = None) -> str:
    """One line per tenant and kind, `TENANT KIND STATUS exit N`, and `evidence copy STATUS
    exit N` for the copy of bkp's own records: nothing else."""
    lines = [_ping_line(o, "backup") for o in runs] + [_ping_line(o, "drill") for o in drills]
    if evidence is not None:
        lines.append(f"evidence copy {_status(evidence)} exit {int(evidence.exit_code)}")
    return "\n".join(lines)


def _ping_line(outcome: Outcome, kind: str) -> str:
    tenant = outcome.tenant if names.is_tenant_id(outcome.tenant) else "(invalid tenant id)"
    return f"{tenant} {kind} {_status(outcome)} exit {int(outcome.exit_code)}"


def _status(outcome: Outcome) -> str:
    status = str(outcome.data.get("status") or "")
    return status if re.fullmatch(r"[a-z_]{1,20}", status) else "unknown"


# ---------------------------------------------------------------- Prometheus textfile

def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


METRICS = [
    ("bkp_run_last_ok", "gauge", "1 when the last bkp run succeeded for every tenant, else 0."),
    ("bkp_run_last_timestamp_seconds", "gauge", "Unix time the last bkp run ended."),
    ("bkp_catalog_ok", "gauge", "0 when the last bkp run could not open its catalog."),
    ("bkp_backup_last_success_timestamp_seconds", "gauge",
     "Unix time the last successful backup of the tenant ended."),
    ("bkp_backup_last_ok", "gauge", "1 when the most recent backup succeeded, else 0."),
    ("bkp_backup_last_duration_seconds", "gauge", "Duration of the most recent backup."),
    ("bkp_backup_last_bytes_added", "gauge", "Bytes the most recent good backup added."),
    ("bkp_backup_rpo_ok", "gauge", "1 when the last good backup is within rpo_hours."),
    ("bkp_backup_snapshots", "gauge", "Snapshots kept after the last retention run."),
    ("bkp_drill_last_passed", "gauge", "1 when the most recent restore drill passed, else 0."),
    ("bkp_drill_last_timestamp_seconds", "gauge", "Unix time the most recent drill ended."),
    ("bkp_drill_last_duration_seconds", "gauge", "Duration of the most recent drill."),
]


def _number(value: float) -> str:
    # Full precision: `:g` would turn a Unix timestamp into 1.79547e+09, minutes off.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_textfile(samples: Iterable[tuple[str, dict[str, str], float]]) -> str:
    """node_exporter textfile format: HELP/TYPE once per metric, then its samples."""
    by_name: dict[str, list[str]] = {}
    for name, labels, value in samples:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        selector = f"{{{label_text}}}" if label_text else ""
        by_name.setdefault(name, []).append(f"{name}{selector} {_number(value)}")
    lines = []
    for name, kind, help_text in METRICS:
        if name in by_name:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *by_name[name]]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Atomic replace: node_exporter must never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bkp-", suffix=".prom.tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pinged(policy: Policy, work) -> Outcome:
    """Run one tenant's backup between its own healthcheck pings (start, then success or
    fail)."""
    url = policy.monitoring.healthcheck_url
    ping(url, "start")
    outcome = work()
    ping(url, "fail" if outcome.exit_code else "success",
                    ping_body(runs=[outcome]))
    return outcome
