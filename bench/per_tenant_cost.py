#!/usr/bin/env python3
"""Per-tenant cost that does not grow with the fleet.

1. An unchanged nightly backup: `bkp backup T` against raw `restic backup` + `restic
   forget --prune` on copies of the same repository (target: bkp <= 0.75x raw). bkp skips
   forget when the snapshots it knows show that the keep rules would forget nothing; the
   tenant keeps `last: 30`, so every night of the benchmark is such a night (in real life:
   `daily: 7` makes six nights of seven such nights).
2. A command for one tenant in a policies directory of 1 and of 1,000 tenants
   (`bkp status T`): it reads and validates only that tenant's policy (target: ratio ~1).

    bench/per_tenant_cost.py [--runs N] [--mb SIZE] [--tenants N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
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

TARGET_NIGHT = 0.75
RETENTION = {"last": 30}


def make_data(root: Path, mb: int) -> Path:
    data = root / "data"
    for i in range(200):
        folder = data / f"d{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.bin").write_bytes(os.urandom(mb * (1 << 20) // 200))
    return data


def unchanged_nights(work: Path, runs: int, mb: int) -> dict:
    data = make_data(work, mb)
    secrets = work / "secrets"
    password = write_secret(secrets / "night.key", PASSWORD + "\n")
    tenant = Tenant("night", [str(data)], {"type": "local", "country": "NL",
                                           "path": str(work / "bkp-repo")}, password)
    policy = tenant.policy() | {"retention": RETENTION}
    policies = work / "policies"
    policies.mkdir(mode=0o700)
    (policies / "night.yaml").write_text(json.dumps(policy))
    home = work / "home"
    env = clean_env(BKP_POLICIES=str(policies), BKP_HOME=str(home), BKP_OPERATOR="bench")
    bkp_json(["init", "night"], env, "bkp init")
    shutil.copytree(work / "bkp-repo", work / "raw-repo")
    raw = RawRepo(str(work / "raw-repo"), password, work / "raw-cache")
    bkp_json(["backup", "night"], env, "bkp first backup")  # both sides start from a backup
    raw.nightly(tenant)
    bkp_times, raw_times, calls = [], [], []
    for run in range(runs):
        order = ("bkp", "raw") if run % 2 == 0 else ("raw", "bkp")
        for who in order:
            if who == "bkp":
                measure, doc = bkp_json(["backup", "night"], env, "bkp backup")
                bkp_times.append(measure.wall)
                calls.append(doc["runs"][0]["restic_calls"])
            else:
                first, _ = timed(raw.backup_argv(tenant), raw.env(), "raw backup")
                second, _ = timed([*_without_keep(raw.forget_argv(tenant)), "--keep-last",
                                   str(RETENTION["last"])], raw.env(), "raw forget",
                                  sync=False)
                raw_times.append((first + second).wall)
        print(f"  night {run + 1}/{runs}: bkp {bkp_times[-1]:.2f}s  raw {raw_times[-1]:.2f}s",
              file=sys.stderr)
    r = ratio(median(bkp_times), median(raw_times))
    return {"bkp_s": bkp_times, "raw_s": raw_times, "bkp_median_s": median(bkp_times),
            "raw_median_s": median(raw_times), "ratio": r, "target": TARGET_NIGHT,
            "ok": r is not None and r <= TARGET_NIGHT, "restic_calls_per_night": calls}


def _without_keep(argv: list[str]) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word.startswith("--keep-"):
            skip = True
        else:
            out.append(word)
    return out


def one_tenant_in_a_fleet(work: Path, runs: int, tenants: int) -> dict:
    password = write_secret(work / "secrets" / "k", PASSWORD + "\n")
    results = {}
    for size in (1, tenants):
        policies = work / f"policies-{size}"
        policies.mkdir(mode=0o700)
        for i in range(size):
            name = f"t{i:04d}"
            doc = Tenant(name, [str(work)], {"type": "local", "country": "NL",
                                             "path": str(work / "repos" / name)},
                         password).policy()
            (policies / f"{name}.yaml").write_text(json.dumps(doc))
        env = clean_env(BKP_POLICIES=str(policies), BKP_HOME=str(work / f"home-{size}"))
        times = [timed([str(BKP), "status", "t0000", "--json"], env, "bkp status")[0].wall
                 for _ in range(runs)]
        results[size] = {"median_s": median(times), "s": times}
    r = ratio(results[tenants]["median_s"], results[1]["median_s"])
    return {"tenants": tenants, "one": results[1], "fleet": results[tenants], "ratio": r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--tenants", type=int, default=1000)
    args = parser.parse_args()
    if not BKP.exists():
        die(f"{BKP} not found: run scripts/install.sh first")
    with tempfile.TemporaryDirectory(prefix="bkp-bench-cost-") as tmp:
        work = Path(tmp)
        (work / "nights").mkdir()
        (work / "fleet").mkdir()
        info = environment_info()
        doc = {"environment": info,
               "unchanged_night": unchanged_nights(work / "nights", args.runs, args.mb),
               "one_tenant_in_a_fleet": one_tenant_in_a_fleet(work / "fleet", args.runs,
                                                              args.tenants)}
        doc["load"] = load_warning(info)
    night, fleet = doc["unchanged_night"], doc["one_tenant_in_a_fleet"]
    print(f"unchanged night ({args.mb} MB, median of {args.runs}): bkp "
          f"{fmt(night['bkp_median_s'])}s, raw backup+forget {fmt(night['raw_median_s'])}s, "
          f"ratio {fmt(night['ratio'])} (target <= {TARGET_NIGHT}); restic calls per night "
          f"{night['restic_calls_per_night']}")
    print(f"bkp status for one tenant: {fmt(fleet['one']['median_s'], 3)}s among 1 policy, "
          f"{fmt(fleet['fleet']['median_s'], 3)}s among {fleet['tenants']}: ratio "
          f"{fmt(fleet['ratio'])}")
    print(f"results: {write_results('per_tenant_cost', doc)}")


if __name__ == "__main__":
    main()
