#!/usr/bin/env python3
"""What `bkp backup` costs on top of the restic work it orchestrates.

For each destination (local, sftp through a loopback sshd this script starts) and each run:
a fresh bkp tenant (`bkp init`, untimed) and a raw repository that is a copy of it (same
key derivation cost: restic calibrates it per `init`); then the first backup and an
unchanged nightly re-run, each timed as `bkp backup TENANT` against `restic backup` +
`restic forget --prune` with the same sources, tags, excludes, keep rules, host and cache
layout. The side that goes first
alternates from run to run, and dirty pages are flushed (untimed) before every timed step.

Also: `bkp --help` start-up (median of 20) and the restic processes one nightly backup
starts (bkp's own `restic_calls`, and what a `restic` shim on PATH actually saw).

    bench/backup_overhead.py [--runs 3] [--size-mb 1024] [--destinations local,sftp]

Targets: first backup <= 1.05x raw, re-run <= 1.25x raw, `bkp --help` <= 0.25 s.
Results: a table on stdout, JSON in bench/results/backup_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
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
    Sshd,
    Tenant,
    bkp_json,
    clean_env,
    die,
    environment_info,
    fmt,
    load_warning,
    median,
    ratio,
    start_sshd,
    timed,
    watched,
    write_results,
    write_secret,
)

BENCH_ROOT = Path("/var/tmp/bkp-bench")
TARGETS = {"first": 1.05, "rerun": 1.25, "startup_s": 0.25}
CASES = {"first": "first backup", "rerun": "nightly re-run, unchanged data"}


# ---------------------------------------------------------------- data

def build_data(size_mb: int, cache: Path) -> Path:
    """~size_mb of random (incompressible, undeduplicable) files, generated once.

    Thousands of small files (a few hundred bytes to 128 KiB, log-uniform), some medium
    ones (1-8 MiB), a few large ones, and some *.tmp files the excludes must skip.
    """
    target = cache / f"data-{size_mb}mb-v1"
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="data-", dir=cache))
    rng = random.Random(4711)
    budget = size_mb * 1024 * 1024
    small_budget, medium_budget = budget * 15 // 100, budget * 15 // 100
    print(f"generating ~{size_mb} MiB of test data in {target} (once) ...", file=sys.stderr)
    started = time.perf_counter()

    written, i = 0, 0
    while written < small_budget:
        size = int(2 ** rng.uniform(9, 17))  # 512 B .. 128 KiB
        path = staging / "small" / f"d{i // 100:03d}" / f"f{i:05d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        written, i = written + size, i + 1
    for j in range(i // 25):  # excluded by the policy's "*.tmp"
        (staging / "small" / f"d{j % max(1, i // 100):03d}" / f"scratch{j}.tmp").write_bytes(
            os.urandom(rng.randint(100, 20_000)))
    written, j = 0, 0
    while written < medium_budget:
        size = rng.randint(1, 8) * 1024 * 1024
        path = staging / "medium" / f"m{j:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        written, j = written + size, j + 1
    large = budget - small_budget - medium_budget
    (staging / "large").mkdir()
    for k in range(3):
        with open(staging / "large" / f"l{k}.img", "wb") as fh:
            left = large // 3
            while left > 0:
                chunk = min(left, 4 * 1024 * 1024)
                fh.write(os.urandom(chunk))
                left -= chunk
    (staging / ".complete").write_text("")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(f"  {i} small, {j} medium, 3 large files in {time.perf_counter() - started:.0f}s",
          file=sys.stderr)
    return target


def data_stats(root: Path) -> dict:
    files = total = excluded = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if name == ".complete":
                continue
            if name.endswith(".tmp"):
                excluded += 1
                continue
            files += 1
            total += os.lstat(os.path.join(folder, name)).st_size
    return {"files": files, "bytes": total, "excluded_tmp_files": excluded}


# ---------------------------------------------------------------- one destination

class Side:
    """A fresh bkp tenant and a fresh raw repository, both holding the same data."""

    def __init__(self, kind: str, run: int, data: Path, work: Path, sshd: Sshd | None):
        self.kind = kind
        self.base = work / f"{kind}-{run}"
        self.secrets = self.base / "secrets"
        self.policies = self.base / "policies"
        self.home = self.base / "home"
        self.home.mkdir(mode=0o700, parents=True)
        name = f"bench-{kind}"
        password_file = write_secret(self.secrets / f"{name}.key", PASSWORD + "\n")
        if kind == "local":
            self.bkp_repo, self.raw_repo = self.base / "bkp-repo", self.base / "raw-repo"
            destination = {"type": "local", "country": "NL", "path": str(self.bkp_repo)}
            self.raw = RawRepo(str(self.raw_repo), password_file, self.base / "raw-cache")
        else:
            assert sshd is not None
            self.server_dir = sshd.root / f"{kind}-{run}"  # the "server" is this machine
            self.bkp_repo = self.server_dir / "bkp-repo"
            self.raw_repo = self.server_dir / "raw-repo"
            destination = sshd.destination(name, str(self.bkp_repo))
            self.raw = sshd.raw_repo(name, str(self.raw_repo), password_file,
                                     self.base / "raw-cache")
        self.tenant = Tenant(name, [str(data)], destination, password_file)
        self.tenant.write_policy(self.policies)
        self.env = clean_env(BKP_POLICIES=str(self.policies), BKP_HOME=str(self.home),
                             BKP_OPERATOR="bench")

    def init(self) -> None:
        """`bkp init`, then the raw repository is a copy of it: restic calibrates its key
        derivation at init time, so two separate inits can differ by 2x in what every later
        restic call pays to open the repository."""
        bkp_json(["init", self.tenant.name], self.env, f"bkp init {self.tenant.name}")
        shutil.copytree(self.bkp_repo, self.raw_repo, symlinks=True)

    def bkp(self) -> tuple[Measure, dict]:
        measure, doc = bkp_json(["backup", self.tenant.name], self.env,
                                f"bkp backup {self.tenant.name}")
        return measure, doc["runs"][0]

    def watch(self) -> dict:
        """One more (untimed) nightly with a restic shim on PATH: which restic processes
        bkp starts, and where the time outside them goes."""
        return watched([str(BKP), "backup", self.tenant.name, "--json"], self.env,
                       self.base / "shim", "bkp backup (watched)")

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        if self.kind == "sftp":
            shutil.rmtree(self.server_dir, ignore_errors=True)


def bench_destination(kind: str, runs: int, data: Path, work: Path,
                      sshd: Sshd | None) -> dict:
    times: dict[str, dict[str, list[Measure]]] = {c: {"bkp": [], "raw": []} for c in CASES}
    restic_calls: list[int] = []
    durations: dict[str, list[float]] = {c: [] for c in CASES}
    shim: dict = {}
    for run in range(runs):
        side = Side(kind, run, data, work, sshd)
        try:
            side.init()
            bkp_first = run % 2 == 0
            for case in CASES:
                order = ("bkp", "raw") if bkp_first else ("raw", "bkp")
                for who in order:
                    if who == "bkp":
                        measure, row = side.bkp()
                        restic_calls.append(row.get("restic_calls"))
                        durations[case].append(row.get("duration_s"))
                    else:
                        measure = side.raw.nightly(side.tenant)
                    times[case][who].append(measure)
                last = {who: times[case][who][-1] for who in order}
                print(f"  {kind} run {run + 1}/{runs} {CASES[case]:<31} "
                      f"bkp {last['bkp'].wall:7.2f}s (cpu {last['bkp'].cpu:6.2f}s)  "
                      f"raw {last['raw'].wall:7.2f}s (cpu {last['raw'].cpu:6.2f}s)",
                      file=sys.stderr)
            if run == runs - 1:
                shim = side.watch()
        finally:
            side.remove()
    result: dict = {"cases": {}, "restic_calls_per_backup": restic_calls,
                    "restic_processes_seen": shim}
    for case in CASES:
        bkp, raw = times[case]["bkp"], times[case]["raw"]
        bkp_med, raw_med = median([m.wall for m in bkp]), median([m.wall for m in raw])
        bkp_cpu, raw_cpu = median([m.cpu for m in bkp]), median([m.cpu for m in raw])
        r = ratio(bkp_med, raw_med)
        result["cases"][case] = {
            "label": CASES[case], "bkp_s": [m.wall for m in bkp], "raw_s": [m.wall for m in raw],
            "bkp_median_s": bkp_med, "raw_median_s": raw_med, "ratio": r,
            "bkp_cpu_s": [m.cpu for m in bkp], "raw_cpu_s": [m.cpu for m in raw],
            "bkp_cpu_median_s": bkp_cpu, "raw_cpu_median_s": raw_cpu,
            "cpu_ratio": ratio(bkp_cpu, raw_cpu),
            "bkp_reported_duration_s": durations[case], "target": TARGETS[case],
            "ok": r is not None and r <= TARGETS[case]}
    return result


# ---------------------------------------------------------------- start-up

def startup(samples: int) -> dict:
    env = clean_env()
    timed([str(BKP), "--help"], env, "bkp --help", sync=False)  # warm the page cache
    times = [timed([str(BKP), "--help"], env, "bkp --help", sync=False)[0].wall
             for _ in range(samples)]
    python = BKP.parent / "python"
    bare = [timed([str(python), "-c", "pass"], env, "python", sync=False)[0].wall
            for _ in range(samples)]
    return {"bkp_help_s": times, "median_s": median(times), "target_s": TARGETS["startup_s"],
            "ok": median(times) <= TARGETS["startup_s"], "bare_python_median_s": median(bare),
            "slowest_imports": import_profile(python, env)}


def import_profile(python: Path, env: dict) -> list[dict]:
    """Where `bkp --help` spends its import time: python -X importtime, self time summed
    per top-level package."""
    done = subprocess.run([str(python), "-X", "importtime", "-m", "bkp", "--help"], env=env,
                          capture_output=True, text=True)
    per_package: dict[str, int] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            package = match.group(2).split(".")[0]
            per_package[package] = per_package.get(package, 0) + int(match.group(1))
    rows = [{"package": k, "self_ms": v / 1000} for k, v in per_package.items()]
    return sorted(rows, key=lambda r: -r["self_ms"])[:8]


# ---------------------------------------------------------------- report

def report(doc: dict) -> None:
    print()
    print(f"bkp backup vs raw restic backup + forget --prune "
          f"({doc['data']['files']} files, {doc['data']['bytes'] / 2**20:.0f} MiB, "
          f"{doc['runs']} runs, medians)")
    print(f"{'destination':<12}{'case':<32}{'bkp':>8}{'raw':>8}{'ratio':>7}{'target':>8}"
          f"{'':8}{'cpu bkp':>9}{'cpu raw':>9}{'ratio':>7}")
    for kind, result in doc["destinations"].items():
        for case in result["cases"].values():
            verdict = "ok" if case["ok"] else "MISSED"
            print(f"{kind:<12}{case['label']:<32}{fmt(case['bkp_median_s'], 2, 's'):>8}"
                  f"{fmt(case['raw_median_s'], 2, 's'):>8}{fmt(case['ratio']):>7}"
                  f"{'<= ' + str(case['target']):>8}  {verdict:<6}"
                  f"{fmt(case['bkp_cpu_median_s'], 2, 's'):>9}"
                  f"{fmt(case['raw_cpu_median_s'], 2, 's'):>9}{fmt(case['cpu_ratio']):>7}")
    s = doc["startup"]
    print(f"\nbkp --help start-up: {fmt(s['median_s'], 3, ' s')} median of "
          f"{len(s['bkp_help_s'])} (target <= {s['target_s']} s: "
          f"{'ok' if s['ok'] else 'MISSED'}); bare python {fmt(s['bare_python_median_s'], 3)} s")
    print("  import time by package: " + ", ".join(
        f"{r['package']} {r['self_ms']:.0f} ms" for r in s["slowest_imports"][:6]))
    for kind, result in doc["destinations"].items():
        calls = sorted(set(result["restic_calls_per_backup"]))
        seen = result["restic_processes_seen"]
        print(f"restic processes per nightly backup ({kind}): restic_calls={calls}; "
              f"a restic shim saw {seen.get('processes')}: {' '.join(seen.get('subcommands', []))}")
        if seen.get("processes"):
            print(f"  one watched re-run: {seen['wall_s']:.2f}s wall, "
                  f"{seen['inside_restic_s']:.2f}s in restic; outside: "
                  f"{seen['before_first_s']:.3f}s before the first restic, "
                  f"{seen['between_s']:.3f}s between, {seen['after_last_s']:.3f}s after the last")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--size-mb", type=int, default=1024, help="test data size (default 1024)")
    parser.add_argument("--destinations", default="local,sftp",
                        help="comma-separated: local, sftp (default both)")
    parser.add_argument("--startup-samples", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=BENCH_ROOT,
                        help=f"where the test data is kept between runs (default {BENCH_ROOT})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    kinds = [k for k in args.destinations.split(",") if k]
    if unknown := set(kinds) - {"local", "sftp"}:
        die(f"unknown destination(s): {', '.join(sorted(unknown))}")
    if not BKP.exists():
        die(f"{BKP} not found: install bkp into .venv (scripts/install.sh) or set BKP_BENCH_BKP")

    data = build_data(args.size_mb, args.cache)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.cache))
    sshd = None
    doc: dict = {"benchmark": "backup_overhead", "environment": environment_info(),
                 "runs": args.runs, "data": {"path": str(data), **data_stats(data)},
                 "destinations": {}}
    try:
        doc["startup"] = startup(args.startup_samples)
        if "sftp" in kinds:
            sshd = start_sshd(work / "sshd")
        for kind in kinds:
            doc["destinations"][kind] = bench_destination(kind, args.runs, data, work, sshd)
    finally:
        if sshd:
            sshd.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    warning = load_warning(doc["environment"])
    path = write_results("backup_overhead", doc)
    report(doc)
    if warning:
        print(warning)
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
