#!/usr/bin/env python3
"""What `bkp drill` costs against the raw commands that do the same checks.

One tenant of ~1 GB (the data of backup_overhead.py), backed up once with bkp (untimed).
Each run times, in alternating order:
- bkp: `bkp drill TENANT` (ls, restore --verify into scratch, listing and sample checks,
  check --read-data-subset, report, scratch removed);
- raw: `restic restore --verify` of the same snapshot + `restic check
  --read-data-subset=` the same subset bkp read in that run + `sha256sum` of the same
  sample files, restored and live + `rm -rf` of the scratch copy.

    bench/drill.py [--runs 3] [--size-mb 1024] [--sample 20]

Target: bkp / raw <= 1.10. Results: a table, and bench/results/drill.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    BKP,
    PASSWORD,
    RawRepo,
    Tenant,
    clean_env,
    environment_info,
    median,
    ratio,
    timed,
    write_results,
    write_secret,
)
from backup_overhead import build_data

from bkp.restic import parse_ls
from bkp.tenants.drill import choose_sample

TENANT = "bench-drill"


def setup(work: Path, data: Path, sample: int) -> tuple[dict, RawRepo]:
    home, policies = work / "home", work / "policies"
    home.mkdir(mode=0o700)
    key = write_secret(work / "secrets" / f"{TENANT}.key", PASSWORD + "\n")
    repo = work / "offsite" / TENANT
    repo.parent.mkdir(parents=True)
    tenant = Tenant(TENANT, [str(data)], {"type": "local", "country": "NL", "path": str(repo)},
                    key)
    doc = tenant.policy()
    doc["schedule"]["drill"] = "0 6 1 * *"  # monthly: the subsets are n/12
    doc["drill"] = {"sample": sample, "rto_minutes": 240}
    policies.mkdir(mode=0o700)
    (policies / f"{TENANT}.yaml").write_text(json.dumps(doc, indent=2) + "\n")
    env = clean_env(BKP_HOME=str(home), BKP_POLICIES=str(policies), BKP_OPERATOR="bench")
    for step in (["init", TENANT], ["backup", TENANT]):
        timed([str(BKP), *step], env, f"bkp {step[0]}", sync=False)
    raw = RawRepo(str(repo), key, home / "cache" / TENANT)
    return env, raw


def sample_paths(raw: RawRepo, sample: int) -> tuple[str, list[str]]:
    done = subprocess.run(raw.argv("ls", "--json", "latest", "--tag", f"tenant={TENANT}"),
                          env=raw.env(), capture_output=True, text=True, check=True)
    listing = parse_ls(done.stdout)
    return listing.snapshot_id, [n.path for n in choose_sample(listing, sample)]


def bkp_drill(env: dict) -> tuple[float, str]:
    measure, done = timed([str(BKP), "drill", TENANT, "--json"], env, "bkp drill")
    result = json.loads(done.stdout)["drills"][0]
    if result["status"] != "passed":
        sys.exit(f"bkp drill did not pass: {result}")
    return measure.wall, result["subset_read"]


def raw_drill(raw: RawRepo, snapshot: str, subset: str, sample: list[str],
              scratch: Path) -> float:
    env = raw.env()
    total = 0.0
    steps = [
        raw.argv("restore", snapshot, "--target", str(scratch), "--verify"),
        raw.argv("check", f"--read-data-subset={subset}"),
        ["sha256sum", *[str(scratch) + p for p in sample], *sample],
        ["rm", "-rf", str(scratch)],
    ]
    for i, argv in enumerate(steps):
        measure, _ = timed(argv, env, f"raw step {argv[1] if i < 2 else argv[0]}", sync=i == 0)
        total += measure.wall
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/bkp-bench"))
    args = parser.parse_args()

    data = build_data(args.size_mb, args.cache)
    work = Path(tempfile.mkdtemp(prefix="drill-", dir=args.cache))
    try:
        env, raw = setup(work, data, args.sample)
        snapshot, sample = sample_paths(raw, args.sample)
        bkp_times, raw_times = [], []
        for run in range(args.runs):
            if run % 2 == 0:
                wall, subset = bkp_drill(env)
                bkp_times.append(wall)
                raw_times.append(raw_drill(raw, snapshot, subset, sample, work / "raw"))
            else:
                # raw first: it reads the subset bkp will read next (bkp's rotation is known)
                n, t = (int(x) for x in subset.split("/"))
                upcoming = f"{n % t + 1}/{t}"
                raw_times.append(raw_drill(raw, snapshot, upcoming, sample, work / "raw"))
                wall, subset = bkp_drill(env)
                bkp_times.append(wall)
            print(f"run {run + 1}: bkp {bkp_times[-1]:.2f}s  raw {raw_times[-1]:.2f}s  "
                  f"subset {subset}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    doc = {"benchmark": "drill", "environment": environment_info(), "runs": args.runs,
           "size_mb": args.size_mb, "sample": args.sample,
           "bkp_s": bkp_times, "raw_s": raw_times,
           "bkp_median_s": median(bkp_times), "raw_median_s": median(raw_times),
           "ratio": ratio(median(bkp_times), median(raw_times)), "target": 1.10}
    path = write_results("drill", doc)
    print(f"drill of ~{args.size_mb} MiB, sample {args.sample}, {args.runs} runs")
    print(f"  bkp drill  median {doc['bkp_median_s']:.2f}s")
    print(f"  raw        median {doc['raw_median_s']:.2f}s  (restore --verify + check subset"
          f" + sha256sum + rm)")
    print(f"  ratio      {doc['ratio']:.3f}  (target <= 1.10)   -> {path}")


if __name__ == "__main__":
    main()
