#!/usr/bin/env python3
"""A thousand tenants on a cluster: what one pod costs, and what the gatherer costs.

1. A pod's unchanged night: `bkp backup T` with a new, empty BKP_HOME (no catalog), its one
   policy among 1,000 in the policies directory, its result key (BKP_RESULT_KEY) and the
   results inbox, against raw `restic backup` + `restic forget --prune` on a copy of the same
   repository. Two bkp cases: without the pod's own record of the kept snapshots (restic
   forget runs, as on the first night; target <= 1.10) and with it (forget skipped because
   the keep rules would forget nothing; target < 1.0). The tenants' repositories are local,
   and a command for a tenant with a local repository reads every policy (whether that
   repository lies in another tenant's source can only be told so): a third bkp case,
   `alone`, runs the skipped-forget night with only the tenant's own policy in the
   directory, which is what the rendered manifests mount into a pod.
2. The gatherer: `bkp catalog sync --all --no-snapshots` ingesting 1,000 signed results into
   a catalog that has seen none (target < 30 s), and, apart, what reading one repository's
   snapshot list costs (`bkp catalog sync T`): the part `--jobs N` spreads.
3. `bkp status` over the 1,000 tenants of that catalog (target < 1 s). Before the ingest, the
   catalog is given --history-days past nights per tenant (a year by default: 365,000 runs),
   written straight into its runs table by this script: status must stay fast after a year
   of nights, not only on the first morning.

The 1,000 results are one real pod's result, re-signed for each tenant with that tenant's
own result key by bkp's own signing code (bkp.evidence.pod_results, run by the venv's
python): running 1,000 pods here would measure restic, not the gatherer.

    bench/fleet.py [--runs 3] [--tenants 1000] [--mb 20] [--history-days 365]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import (
    BKP,
    PASSWORD,
    RawRepo,
    Tenant,
    bkp_json,
    clean_env,
    die,
    environment_info,
    fmt,
    load_warning,
    median,
    ratio,
    timed,
    write_results,
    write_secret,
)

TARGET_FORGET = 1.10
TARGET_SKIPPED = 1.0
TARGET_INGEST_S = 30.0
TARGET_STATUS_S = 1.0
RETENTION = {"last": 100}  # nothing is ever forgotten during the benchmark
POD = "t0000"
PYTHON = BKP.parent / "python"

RESIGN = r"""
import json, sys
from pathlib import Path
from bkp.evidence.pod_results import load_private, object_name, result_document, sign
template, keys, inbox = (Path(arg) for arg in sys.argv[1:4])
count = int(sys.argv[4])
base = json.loads(template.read_text())["document"]
for i in range(1, count):
    tenant = f"t{i:04d}"
    swap = lambda rows: [dict(row, tenant=tenant) for row in rows]
    document = result_document(tenant, "backup", swap(base["runs"]), swap(base["events"]),
                               {}, base["host"])
    key = load_private(keys / f"{tenant}.result.key")
    (inbox / object_name(document)).write_bytes(sign(document, key))
"""


def make_data(root: Path, mb: int) -> Path:
    data = root / "data"
    for i in range(200):
        folder = data / f"d{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.bin").write_bytes(os.urandom(mb * (1 << 20) // 200))
    return data


class Fleet:
    """A central installation (catalog, keys, inbox) and 1,000 tenants' policies, of which
    one (t0000) has data and a repository."""

    def __init__(self, work: Path, tenants: int, mb: int):
        self.work, self.tenants = work, tenants
        data = make_data(work, mb)
        password = write_secret(work / "secrets" / "tenant.key", PASSWORD + "\n")
        self.policies = work / "policies"
        self.policies.mkdir(mode=0o700)
        (work / "repos").mkdir()  # the "mounted backup disk"
        for i in range(tenants):
            tenant = Tenant(f"t{i:04d}", [str(data)], {
                "type": "local", "country": "NL", "path": str(work / "repos" / f"t{i:04d}")},
                password)
            (self.policies / f"{tenant.name}.yaml").write_text(
                json.dumps(tenant.policy() | {"retention": RETENTION}))
        self.tenant = Tenant(POD, [str(data)], {"type": "local", "country": "NL",
                                                "path": str(work / "repos" / POD)}, password)
        self.inbox, self.keys = work / "inbox", work / "keys"
        self.config = work / "bkp.yaml"
        self.config.write_text(json.dumps({"results": {
            "inbox": {"type": "local", "country": "NL", "path": str(self.inbox)},
            "keys": str(self.keys)}}))
        self.central_home = work / "central"
        self.pods = 0

    def central_env(self, home: Path | None = None) -> dict[str, str]:
        return clean_env(BKP_POLICIES=str(self.policies), BKP_CONFIG=str(self.config),
                         BKP_HOME=str(home or self.central_home), BKP_OPERATOR="bench")

    def pod_env(self) -> dict[str, str]:
        """What the manifest gives a backup pod: an empty BKP_HOME of its own."""
        self.pods += 1
        home = self.work / "pods" / str(self.pods)
        home.mkdir(parents=True, mode=0o700)
        return clean_env(BKP_POLICIES=str(self.policies), BKP_CONFIG=str(self.config),
                         BKP_HOME=str(home), BKP_OPERATOR="scheduler",
                         BKP_SNAPSHOT_HOST=POD,
                         BKP_RESULT_KEY=str(self.keys / f"{POD}.result.key"))

    def alone(self) -> dict[str, str]:
        """A pod as the manifest makes it: its own policy is the only file it sees."""
        env = self.pod_env()
        own = self.work / "own-policy"
        if not own.exists():
            own.mkdir(mode=0o700)
            shutil.copy(self.policies / f"{POD}.yaml", own)
        return {**env, "BKP_POLICIES": str(own)}

    def forget_record(self) -> None:
        (self.inbox / "kept" / f"{POD}.json").unlink(missing_ok=True)


def raw_night(raw: RawRepo, tenant: Tenant):
    """restic backup + restic forget --prune with the tenant's keep rules (which forget
    nothing here: no prune on either side)."""
    first, _ = timed(raw.backup_argv(tenant), raw.env(), "raw restic backup")
    argv = raw.argv("forget", "--json", "--prune", "--group-by", "", "--tag",
                    f"tenant={tenant.name}")
    for rule, count in RETENTION.items():
        argv += [f"--keep-{rule}", str(count)]
    second, _ = timed(argv, raw.env(), "raw restic forget", sync=False)
    return first + second


def pod_nights(fleet: Fleet, runs: int) -> dict:
    bkp_json(["init", POD], fleet.central_env(), "bkp init")
    bkp_json(["catalog", "result-keys", "--all"], fleet.central_env(), "bkp result-keys")
    shutil.copytree(fleet.work / "repos" / POD, fleet.work / "raw-repo")
    raw = RawRepo(str(fleet.work / "raw-repo"), fleet.tenant.password_file,
                  fleet.work / "raw-cache")
    bkp_json(["backup", POD], fleet.pod_env(), "first pod backup")  # both start from one
    raw_night(raw, fleet.tenant)
    samples: dict[str, list] = {"forget": [], "skipped": [], "alone": [], "raw": []}
    calls: dict[str, list] = {"forget": [], "skipped": [], "alone": []}
    cases = ["forget", "skipped", "alone", "raw"]
    for run in range(runs):
        for case in cases[run % 4:] + cases[:run % 4]:  # who goes first rotates
            if case == "raw":
                measure = raw_night(raw, fleet.tenant)
            else:
                if case == "forget":
                    fleet.forget_record()
                elif not (fleet.inbox / "kept" / f"{POD}.json").exists():
                    bkp_json(["backup", POD], fleet.pod_env(), "pod backup (untimed)")
                env = fleet.alone() if case == "alone" else fleet.pod_env()
                measure, doc = bkp_json(["backup", POD], env, f"pod ({case})")
                calls[case].append(doc["runs"][0]["restic_calls"])
            samples[case].append({"wall": measure.wall, "cpu": measure.cpu})
        print(f"  night {run + 1}/{runs}: " + "  ".join(
            f"{case} {samples[case][-1]['wall']:.2f}s" for case in cases), file=sys.stderr)
    out = {"restic_calls": calls, "samples": samples}
    for kind in ("wall", "cpu"):
        medians = {case: median([s[kind] for s in samples[case]]) for case in cases}
        out[f"median_{kind}_s"] = medians
        out[f"ratio_forget_{kind}"] = ratio(medians["forget"], medians["raw"])
        out[f"ratio_skipped_{kind}"] = ratio(medians["skipped"], medians["raw"])
        out[f"ratio_alone_{kind}"] = ratio(medians["alone"], medians["raw"])
    out["targets"] = {"forget": TARGET_FORGET, "skipped_below": TARGET_SKIPPED}
    out["ok"] = (out["ratio_forget_wall"] <= TARGET_FORGET
                 and out["ratio_skipped_wall"] < TARGET_SKIPPED)
    return out


def fill_inbox(fleet: Fleet) -> None:
    """Results for every tenant, as their pods would sign them (see the module's note)."""
    template = sorted(p for p in fleet.inbox.iterdir()
                      if p.is_file() and f"-{POD}-backup-" in p.name)[-1]
    done = subprocess.run([str(PYTHON), "-c", RESIGN, str(template), str(fleet.keys),
                           str(fleet.inbox), str(fleet.tenants)], capture_output=True, text=True)
    if done.returncode:
        die(f"signing the results failed:\n{done.stderr[-2000:]}")


def add_history(catalog: Path, tenants: int, days: int) -> int:
    """Past nights for every tenant, one backup run each, as a year of `bkp run` leaves them."""
    db = sqlite3.connect(catalog)
    try:
        rows = [(f"t{t:04d}", f"{start:%Y-%m-%dT%H:%M:%S}.000000Z",
                 f"{start + timedelta(minutes=4):%Y-%m-%dT%H:%M:%S}.000000Z")
                for t in range(tenants)
                for start in (datetime(2025, 1, 1, 2, tzinfo=UTC) + timedelta(days=d)
                              for d in range(days))]
        with db:
            db.executemany("insert into runs (tenant, kind, trigger, status, started_at, "
                           "ended_at, host, operator) values (?, 'backup', 'cron', 'ok', ?, ?, "
                           "'bench', 'bench')", rows)
        return len(rows)
    finally:
        db.close()


def gatherer(fleet: Fleet, runs: int, history_days: int) -> dict:
    fill_inbox(fleet)
    history = add_history(fleet.central_home / "catalog.db", fleet.tenants, history_days)
    objects = sum(1 for p in fleet.inbox.iterdir() if p.is_file())
    ingest, status, repository = [], [], []
    for run in range(runs):
        home = fleet.work / f"gatherer-{run}"
        shutil.copytree(fleet.central_home, home)  # a catalog that has ingested nothing
        measure, doc = timed([str(BKP), "catalog", "sync", "--all", "--no-snapshots",
                              "--json"], fleet.central_env(home), "catalog sync --all")
        found = json.loads(doc.stdout)["results"]
        if found["ingested"] != objects or found["rejected"]:
            die(f"the gatherer ingested {found['ingested']} of {objects}: {found}")
        ingest.append({"wall": measure.wall, "cpu": measure.cpu})
        for _ in range(runs):
            seen, shown = timed([str(BKP), "status", "--json"], fleet.central_env(home),
                                "bkp status", check=False)
            tenants = json.loads(shown.stdout)["tenants"]
            if len(tenants) != fleet.tenants:
                die(f"bkp status showed {len(tenants)} tenants")
            status.append({"wall": seen.wall, "cpu": seen.cpu})
        one, _ = timed([str(BKP), "catalog", "sync", POD, "--json"], fleet.central_env(home),
                       "catalog sync T")
        repository.append({"wall": one.wall, "cpu": one.cpu})
        print(f"  gathering {run + 1}/{runs}: ingest {measure.wall:.2f}s, status "
              f"{status[-1]['wall']:.2f}s, one repository's snapshots {one.wall:.2f}s",
              file=sys.stderr)
    out = {"results": objects, "history_runs": history, "ingest": ingest, "status": status,
           "one_repository_snapshots": repository,
           "ingest_median_s": median([s["wall"] for s in ingest]),
           "status_median_s": median([s["wall"] for s in status]),
           "one_repository_median_s": median([s["wall"] for s in repository]),
           "targets": {"ingest_s": TARGET_INGEST_S, "status_s": TARGET_STATUS_S}}
    out["ok"] = (out["ingest_median_s"] < TARGET_INGEST_S
                 and out["status_median_s"] < TARGET_STATUS_S)
    return out


def compile_bytecode() -> None:
    """bkp's bytecode, as scripts/install.sh (and so the image) leaves it: without it,
    under PYTHONDONTWRITEBYTECODE every timed run would compile bkp from source."""
    where = subprocess.run([str(PYTHON), "-c", "import bkp; print(bkp.__path__[0])"],
                           capture_output=True, text=True, env=clean_env())
    if where.returncode:
        die(f"cannot import bkp: {where.stderr[-500:]}")
    subprocess.run([str(PYTHON), "-m", "compileall", "-q", where.stdout.strip()], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--history-days", type=int, default=365,
                        help="past nights per tenant in the gatherer's catalog")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if not BKP.exists() or not PYTHON.exists():
        die(f"{BKP} not found: run scripts/install.sh first")
    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="bkp-bench-fleet-"))
    try:
        info = environment_info()
        fleet = Fleet(work, args.tenants, args.mb)
        doc = {"environment": info, "tenants": args.tenants, "mb": args.mb,
               "pod_night": pod_nights(fleet, args.runs),
               "gatherer": gatherer(fleet, args.runs, args.history_days)}
        doc["load"] = load_warning(info)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    night, gather = doc["pod_night"], doc["gatherer"]
    wall, cpu = night["median_wall_s"], night["median_cpu_s"]
    print(f"pod, unchanged night ({args.mb} MB, one policy among {args.tenants}, median of "
          f"{args.runs}); raw restic backup + forget {fmt(wall['raw'])}s "
          f"(cpu {fmt(cpu['raw'])}s)")
    print(f"  with forget:    {fmt(wall['forget'])}s (cpu {fmt(cpu['forget'])}s)  ratio "
          f"{fmt(night['ratio_forget_wall'])} (cpu {fmt(night['ratio_forget_cpu'])}), "
          f"target <= {TARGET_FORGET}; restic calls {night['restic_calls']['forget']}")
    print(f"  forget skipped: {fmt(wall['skipped'])}s (cpu {fmt(cpu['skipped'])}s)  ratio "
          f"{fmt(night['ratio_skipped_wall'])} (cpu {fmt(night['ratio_skipped_cpu'])}), "
          f"target < {TARGET_SKIPPED}; restic calls {night['restic_calls']['skipped']}")
    print(f"  skipped, only its own policy in the directory (as the manifests mount it): "
          f"{fmt(wall['alone'])}s (cpu {fmt(cpu['alone'])}s)  ratio "
          f"{fmt(night['ratio_alone_wall'])} (cpu {fmt(night['ratio_alone_cpu'])})")
    print(f"gatherer: ingest of {gather['results']} results {fmt(gather['ingest_median_s'])}s "
          f"(target < {TARGET_INGEST_S:.0f}s); bkp status over {args.tenants} tenants "
          f"with {args.history_days} past nights each "
          f"{fmt(gather['status_median_s'], 3)}s (target < {TARGET_STATUS_S:.0f}s); one "
          f"repository's snapshot list {fmt(gather['one_repository_median_s'])}s (x "
          f"{args.tenants} / --jobs N when the gatherer reads them)")
    if doc["load"]:
        print(doc["load"])
    print(f"results: {write_results('fleet', doc)}")


if __name__ == "__main__":
    main()
