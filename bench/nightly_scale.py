#!/usr/bin/env python3
"""One night of many small tenants: `bkp run --jobs 1` and `--jobs 2` against raw restic.

50 small tenants (local repositories, a few files each), every one due (`schedule.backup`
"0 2 * * *" and an empty catalog). The repositories are initialised once (`bkp init --all`,
untimed; the raw ones are copies of bkp's, so both pay the same key derivation) and that
pristine state is restored before every timed night, so each night starts from the same
place. Per run, in an order that rotates:

- `bkp run --json --jobs 1`, wall time;
- `bkp run --json --jobs 2`, wall time;
- raw: for each tenant `restic backup` then `restic forget --prune`, sequentially, with the
  same flags bkp passes; the sum of those processes' wall times.

    bench/nightly_scale.py [--runs 3] [--tenants 50]

Targets: jobs2/jobs1 <= 0.6 (2 cores); bkp's overhead per tenant outside restic,
(jobs1 wall - raw sum) / tenants, < 0.1 s.
Results: a table on stdout, JSON in bench/results/nightly_scale.json.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BKP,
    PASSWORD,
    Measure,
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
    watched,
    write_results,
    write_secret,
)

BENCH_ROOT = Path("/var/tmp/bkp-bench")
TARGETS = {"jobs2_over_jobs1": 0.6, "overhead_per_tenant_s": 0.1}


def make_data(root: Path, tenants: int) -> list[Path]:
    """A few small random files per tenant, and one *.tmp file the excludes skip."""
    rng = random.Random(50)
    folders = []
    for t in range(tenants):
        folder = root / f"t{t:03d}"
        (folder / "docs").mkdir(parents=True)
        for i in range(rng.randint(3, 8)):
            (folder / "docs" / f"file{i}.dat").write_bytes(os.urandom(rng.randint(200, 40_000)))
        (folder / "scratch.tmp").write_bytes(os.urandom(1000))
        folders.append(folder)
    return folders


class Night:
    """Policies, BKP_HOME, secrets and repositories of all tenants under one directory,
    initialised once and restored to that pristine state before every timed night."""

    def __init__(self, base: Path, data: list[Path]):
        self.base = base
        self.live = base / "live"
        self.pristine = base / "pristine"
        self.policies = self.live / "policies"
        self.home = self.live / "home"
        self.home.mkdir(mode=0o700, parents=True)
        self.tenants: list[Tenant] = []
        self.raw: list[RawRepo] = []
        for i, source in enumerate(data):
            name = f"bench-t{i:03d}"
            password = write_secret(self.live / "secrets" / f"{name}.key", PASSWORD + "\n")
            tenant = Tenant(name, [str(source)], {
                "type": "local", "country": "NL", "path": str(self.live / "bkp-repos" / name)},
                password)
            tenant.write_policy(self.policies)
            self.tenants.append(tenant)
            self.raw.append(RawRepo(str(self.live / "raw-repos" / name), password,
                                    self.live / "raw-cache" / name))
        self.env = clean_env(BKP_POLICIES=str(self.policies), BKP_HOME=str(self.home),
                             BKP_OPERATOR="bench")

    def init(self) -> None:
        started = time.perf_counter()
        (self.live / "bkp-repos").mkdir()
        _, doc = bkp_json(["init", "--all"], self.env, "bkp init --all")
        bad = [t for t in doc["tenants"] if t.get("status") != "initialised"]
        if bad or len(doc["tenants"]) != len(self.tenants):
            die(f"bkp init --all: {bad[:1] or doc}")
        # The raw repositories are copies: restic calibrates its key derivation per `init`,
        # so separate inits can differ by 2x in what every later call pays to open them.
        shutil.copytree(self.live / "bkp-repos", self.live / "raw-repos", symlinks=True)
        shutil.copytree(self.live, self.pristine, symlinks=True)
        print(f"initialised {len(self.tenants)} repositories in "
              f"{time.perf_counter() - started:.0f}s (untimed)", file=sys.stderr)

    def restore(self) -> None:
        shutil.rmtree(self.live)
        shutil.copytree(self.pristine, self.live, symlinks=True)
        os.sync()

    def bkp_run(self, jobs: int) -> dict:
        self.restore()
        measure, doc = bkp_json(["run", "--jobs", str(jobs)], self.env, f"bkp run --jobs {jobs}")
        if len(doc["runs"]) != len(self.tenants):
            die(f"bkp run --jobs {jobs} backed up {len(doc['runs'])} of {len(self.tenants)} "
                f"tenants: were they not all due?")
        return {"wall_s": measure.wall, "cpu_s": measure.cpu,
                "restic_calls": sum(r.get("restic_calls") or 0 for r in doc["runs"]),
                "sum_duration_s": sum(r.get("duration_s") or 0 for r in doc["runs"])}

    def watched_run(self) -> dict:
        """One more (untimed) `bkp run --jobs 1` with a restic shim on PATH: bkp's own time,
        measured as the wall time outside restic processes, whatever restic itself costs."""
        self.restore()
        return watched([str(BKP), "run", "--jobs", "1", "--json"], self.env,
                       self.base / "shim", "bkp run (watched)")

    def raw_run(self) -> dict:
        self.restore()
        started = time.perf_counter()
        total = Measure(0.0, 0.0)
        for tenant, repo in zip(self.tenants, self.raw, strict=True):
            total += repo.nightly(tenant, sync=False)
        return {"wall_s": time.perf_counter() - started, "restic_sum_s": total.wall,
                "cpu_s": total.cpu,
                "restic_calls": 2 * len(self.tenants)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode (default 3)")
    parser.add_argument("--tenants", type=int, default=50, help="tenants (default 50)")
    parser.add_argument("--cache", type=Path, default=BENCH_ROOT,
                        help=f"parent of the work directory (default {BENCH_ROOT})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    environment = environment_info()
    work = Path(tempfile.mkdtemp(prefix="nightly-", dir=args.cache))
    modes = ["jobs1", "jobs2", "raw"]
    samples: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        night = Night(work, make_data(work / "data", args.tenants))
        night.init()
        for run in range(args.runs):
            for mode in modes[run % 3:] + modes[:run % 3]:  # rotate who goes first
                result = night.raw_run() if mode == "raw" else night.bkp_run(int(mode[-1]))
                samples[mode].append(result)
                print(f"  run {run + 1}/{args.runs} {mode:<6} {result['wall_s']:7.2f}s "
                      f"(cpu {result['cpu_s']:6.2f}s)", file=sys.stderr)
        watch = night.watched_run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    jobs1 = median([s["wall_s"] for s in samples["jobs1"]])
    jobs2 = median([s["wall_s"] for s in samples["jobs2"]])
    raw = median([s["restic_sum_s"] for s in samples["raw"]])
    per_tenant = (jobs1 - raw) / args.tenants
    cpu = {m: median([s["cpu_s"] for s in samples[m]]) for m in modes}
    cpu_per_tenant = (cpu["jobs1"] - cpu["raw"]) / args.tenants
    doc = {
        "benchmark": "nightly_scale", "environment": environment, "runs": args.runs,
        "tenants": args.tenants, "samples": samples,
        "median": {"bkp_jobs1_s": jobs1, "bkp_jobs2_s": jobs2, "raw_restic_sum_s": raw},
        "ratios": {"jobs2_over_jobs1": ratio(jobs2, jobs1), "jobs1_over_raw": ratio(jobs1, raw),
                   "jobs2_over_raw": ratio(jobs2, raw)},
        "overhead_per_tenant_s": per_tenant,
        "cpu_median_s": cpu, "cpu_overhead_per_tenant_s": cpu_per_tenant,
        "watched_jobs1": watch,
        "outside_restic_per_tenant_s": watch["outside_restic_s"] / args.tenants,
        "bkp_restic_calls_per_tenant": samples["jobs1"][0]["restic_calls"] / args.tenants,
        "targets": TARGETS,
    }
    doc["ok"] = {
        "jobs2_over_jobs1": doc["ratios"]["jobs2_over_jobs1"] <= TARGETS["jobs2_over_jobs1"],
        "overhead_per_tenant_s": per_tenant < TARGETS["overhead_per_tenant_s"]}
    warning = load_warning(doc["environment"])
    path = write_results("nightly_scale", doc)

    def verdict(key: str) -> str:
        return "ok" if doc["ok"][key] else "MISSED"

    print(f"\nbkp run over {args.tenants} small local tenants vs raw restic "
          f"({args.runs} runs, medians, {os.cpu_count()} cpus)")
    print(f"{'':26}{'wall':>7}{'cpu':>10}")
    print(f"  bkp run --jobs 1        {fmt(jobs1, 2, ' s'):>9}{fmt(cpu['jobs1'], 2, ' s'):>10}   "
          f"{fmt(doc['ratios']['jobs1_over_raw'])}x raw")
    print(f"  bkp run --jobs 2        {fmt(jobs2, 2, ' s'):>9}{fmt(cpu['jobs2'], 2, ' s'):>10}   "
          f"{fmt(doc['ratios']['jobs2_over_raw'])}x raw")
    print(f"  raw restic (sum)        {fmt(raw, 2, ' s'):>9}{fmt(cpu['raw'], 2, ' s'):>10}   "
          f"backup + forget --prune per tenant, sequential")
    print(f"  jobs2 / jobs1           {fmt(doc['ratios']['jobs2_over_jobs1']):>9}   "
          f"target <= {TARGETS['jobs2_over_jobs1']}  {verdict('jobs2_over_jobs1')}")
    print(f"  overhead per tenant     {fmt(per_tenant, 3, ' s'):>9}   "
          f"target < {TARGETS['overhead_per_tenant_s']} s  {verdict('overhead_per_tenant_s')}")
    print(f"  cpu overhead per tenant {fmt(cpu_per_tenant, 3, ' s'):>9}   "
          f"(bkp jobs1 cpu - raw cpu) / tenants: steadier when the machine is shared")
    print(f"  outside restic / tenant {fmt(doc['outside_restic_per_tenant_s'], 3, ' s'):>9}   "
          f"one watched jobs1 night: {watch['outside_restic_s']:.2f}s of {watch['wall_s']:.2f}s "
          f"outside restic ({watch['before_first_s']:.2f}s before the first call, "
          f"{watch['between_s']:.2f}s between calls, {watch['after_last_s']:.2f}s after)")
    print(f"  restic calls per tenant {doc['bkp_restic_calls_per_tenant']:>9.1f}   "
          f"processes seen: {watch['processes']} for {args.tenants} tenants")
    if warning:
        print(warning)
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
