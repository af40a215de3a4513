#!/usr/bin/env python3
"""What a nightly backup with one copy at another site costs in `bkp` on top of the restic
work it orchestrates.

For each run: a fresh tenant with a local destination and one copy on an sftp server (a
loopback sshd this script starts), initialised by `bkp init` (untimed; the copy with the
destination's chunker parameters); raw repositories that are copies of both (the same keys
and chunker parameters). Then the first backup and an unchanged nightly re-run, each timed
as `bkp backup TENANT` against what an operator would script by hand:

    restic backup + restic forget --prune            (the destination)
    restic copy --from-repo DESTINATION              (every snapshot the copy lacks)
    restic forget --prune                            (the copy)

with the same sources, tags, excludes, keep rules, host and cache layout. The side that
goes first alternates from run to run; dirty pages are flushed (untimed) before each step.

    bench/copies.py [--runs 3] [--size-mb 256]

Target: median ratio bkp/raw <= 1.10 for the first and for the unchanged night.
Results: a table on stdout, JSON in bench/results/copies.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
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
from backup_overhead import build_data, data_stats

BENCH_ROOT = Path("/var/tmp/bkp-bench")
TARGET = 1.10
CASES = {"first": "first backup + copy", "rerun": "nightly re-run, unchanged data"}


class Side:
    """A fresh bkp tenant with one copy, and raw repositories that are copies of both."""

    def __init__(self, run: int, data: Path, work: Path, sshd: Sshd):
        self.base = work / f"copies-{run}"
        self.home = self.base / "home"
        self.home.mkdir(mode=0o700, parents=True)
        self.policies = self.base / "policies"
        name = "bench-copies"
        password_file = write_secret(self.base / "secrets" / f"{name}.key", PASSWORD + "\n")
        self.bkp_repo, self.raw_repo = self.base / "bkp-repo", self.base / "raw-repo"
        self.server_dir = sshd.root / f"copies-{run}"
        self.bkp_copy, self.raw_copy = self.server_dir / "bkp-copy", self.server_dir / "raw-copy"
        copy = {"id": "fra", "site": "site-b", **sshd.destination(name, str(self.bkp_copy))}
        destination = {"type": "local", "country": "NL", "site": "site-a",
                       "path": str(self.bkp_repo)}
        self.tenant = Tenant(name, [str(data)], destination, password_file)
        policy = self.tenant.policy()
        policy["copies"] = [copy]
        self.policies.mkdir(mode=0o700, parents=True)
        (self.policies / f"{name}.yaml").write_text(json.dumps(policy, indent=2) + "\n")
        self.raw = RawRepo(str(self.raw_repo), password_file, self.base / "raw-cache")
        self.raw_second = sshd.raw_repo(name, str(self.raw_copy), password_file,
                                        self.base / "raw-cache")
        self.env = clean_env(BKP_POLICIES=str(self.policies), BKP_HOME=str(self.home),
                             BKP_OPERATOR="bench")

    def init(self) -> None:
        bkp_json(["init", self.tenant.name], self.env, "bkp init")
        shutil.copytree(self.bkp_repo, self.raw_repo, symlinks=True)
        shutil.copytree(self.bkp_copy, self.raw_copy, symlinks=True)

    def bkp(self) -> tuple[Measure, dict]:
        measure, doc = bkp_json(["backup", self.tenant.name], self.env, "bkp backup")
        return measure, doc["runs"][0]

    def raw_night(self) -> Measure:
        total = self.raw.nightly(self.tenant)
        env = {**self.raw_second.env(), "RESTIC_FROM_REPOSITORY": self.raw.url,
               "RESTIC_FROM_PASSWORD_FILE": str(self.raw.password_file)}
        copied, _ = timed(self.raw_second.argv("copy", "--tag", f"tenant={self.tenant.name}"),
                          env, "raw restic copy", sync=False)
        forgot, _ = timed(self.raw_second.forget_argv(self.tenant), self.raw_second.env(),
                          "raw restic forget (copy)", sync=False)
        return total + copied + forgot

    def watch(self) -> dict:
        """One more (untimed) night with a restic shim on PATH: which restic processes bkp
        starts, and where the time outside them goes."""
        return watched([str(BKP), "backup", self.tenant.name, "--json"], self.env,
                       self.base / "shim", "bkp backup (watched)")

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.server_dir, ignore_errors=True)


def bench(runs: int, data: Path, work: Path, sshd: Sshd) -> dict:
    times = {case: {"bkp": [], "raw": []} for case in CASES}
    calls: list[int] = []
    shim: dict = {}
    for run in range(runs):
        side = Side(run, data, work, sshd)
        try:
            side.init()
            order = ("bkp", "raw") if run % 2 == 0 else ("raw", "bkp")
            for case in CASES:
                for who in order:
                    if who == "bkp":
                        measure, row = side.bkp()
                        if [c["status"] for c in row.get("copies", [])] != ["ok"]:
                            raise SystemExit(f"bench: the copy failed: {row}")
                        calls.append(row.get("restic_calls"))
                    else:
                        measure = side.raw_night()
                    times[case][who].append(measure)
                last = {who: times[case][who][-1] for who in order}
                print(f"  run {run + 1}/{runs} {CASES[case]:<31} "
                      f"bkp {last['bkp'].wall:7.2f}s (cpu {last['bkp'].cpu:6.2f}s)  "
                      f"raw {last['raw'].wall:7.2f}s (cpu {last['raw'].cpu:6.2f}s)",
                      file=sys.stderr)
            if run == runs - 1:
                shim = side.watch()
        finally:
            side.remove()
    result = {"cases": {}, "restic_calls_per_backup": calls, "restic_processes_seen": shim}
    for case, label in CASES.items():
        bkp, raw = times[case]["bkp"], times[case]["raw"]
        bkp_med, raw_med = median([m.wall for m in bkp]), median([m.wall for m in raw])
        bkp_cpu, raw_cpu = median([m.cpu for m in bkp]), median([m.cpu for m in raw])
        r = ratio(bkp_med, raw_med)
        result["cases"][case] = {
            "label": label, "bkp_s": [m.wall for m in bkp], "raw_s": [m.wall for m in raw],
            "bkp_median_s": bkp_med, "raw_median_s": raw_med, "ratio": r,
            "bkp_cpu_s": [m.cpu for m in bkp], "raw_cpu_s": [m.cpu for m in raw],
            "bkp_cpu_median_s": bkp_cpu, "raw_cpu_median_s": raw_cpu,
            "cpu_ratio": ratio(bkp_cpu, raw_cpu), "target": TARGET,
            "ok": r is not None and r <= TARGET}
    return result


def report(doc: dict) -> None:
    print()
    print(f"bkp backup with one sftp copy vs raw restic backup + forget + copy + forget "
          f"({doc['data']['files']} files, {doc['data']['bytes'] / 2**20:.0f} MiB, "
          f"{doc['runs']} runs, medians)")
    print(f"{'case':<33}{'bkp':>8}{'raw':>8}{'ratio':>7}{'target':>8}{'':8}"
          f"{'cpu bkp':>9}{'cpu raw':>9}{'ratio':>7}")
    for case in doc["result"]["cases"].values():
        print(f"{case['label']:<33}{fmt(case['bkp_median_s'], 2, 's'):>8}"
              f"{fmt(case['raw_median_s'], 2, 's'):>8}{fmt(case['ratio']):>7}"
              f"{'<= ' + str(case['target']):>8}  {'ok' if case['ok'] else 'MISSED':<6}"
              f"{fmt(case['bkp_cpu_median_s'], 2, 's'):>9}"
              f"{fmt(case['raw_cpu_median_s'], 2, 's'):>9}{fmt(case['cpu_ratio']):>7}")
    calls = sorted(set(doc["result"]["restic_calls_per_backup"]))
    print(f"restic processes per bkp backup: {calls}")
    seen = doc["result"]["restic_processes_seen"]
    if seen.get("processes"):
        print(f"one watched re-run: {seen['wall_s']:.2f}s wall, {seen['inside_restic_s']:.2f}s "
              f"in {seen['processes']} restic processes ({' '.join(seen['subcommands'])}); "
              f"outside: {seen['before_first_s']:.3f}s before the first, "
              f"{seen['between_s']:.3f}s between, {seen['after_last_s']:.3f}s after the last")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--cache", type=Path, default=BENCH_ROOT)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    data = build_data(args.size_mb, args.cache)
    environment = environment_info()
    work = Path(tempfile.mkdtemp(prefix="copies-", dir=args.cache))
    sshd = start_sshd(work / "sshd")
    try:
        result = bench(args.runs, data, work, sshd)
    finally:
        sshd.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = {"benchmark": "copies", "runs": args.runs, "data": data_stats(data),
           "environment": environment, "result": result}
    note = load_warning(environment)
    path = write_results("copies", doc)
    report(doc)
    if note:
        print(note)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
