#!/usr/bin/env bash
# Install everything, then run one night of bkp (`bkp run`: the due backups and restore
# drills) over three demo tenants whose backups go to
# local repositories standing in for the off-site server, and end with `bkp status`.
# Re-running it is safe: it adds a new night to the same demo installation.
#   BKP_DEMO_DIR   where the demo lives (default /var/lib/bkp-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

demo="${BKP_DEMO_DIR:-/var/lib/bkp-demo}"
export BKP_HOME="$demo/state" BKP_POLICIES="$demo/policies" BKP_OPERATOR="${BKP_OPERATOR:-demo}"
bkp=".venv/bin/bkp"
mkdir -p "$demo"/{policies,secrets,tenants,offsite} "$BKP_HOME"
chmod 700 "$demo/secrets" "$BKP_HOME"

make_tenant() {  # tenant classification purpose
  local tenant=$1 classification=$2 purpose=$3
  local data="$demo/tenants/$tenant"
  if [ ! -d "$data" ]; then
    mkdir -p "$data/records" "$data/scans"
    for i in $(seq 1 200); do
      printf 'record %s of %s\nBSN 0000000%02d\n' "$i" "$tenant" "$((i % 100))" > "$data/records/r$i.txt"
    done
    head -c 2000000 /dev/urandom > "$data/scans/scan-0001.bin"
  fi
  date -u +"night of %FT%TZ" > "$data/records/last-night.txt"
  local key="$demo/secrets/$tenant.key"
  [ -f "$key" ] || (umask 077; head -c 32 /dev/urandom | base64 > "$key")
  cat > "$BKP_POLICIES/$tenant.yaml" <<YAML
tenant: $tenant
description: demo tenant $tenant
purpose: $purpose
classification: $classification
sources:
  - $data
exclude:
  - "*.tmp"
destination:
  type: local
  country: NL
  path: $demo/offsite/$tenant
password_file: $key
schedule:
  backup: "0 2 * * *"
  drill: "0 6 1 * *"
retention:
  last: 3
  daily: 7
  weekly: 4
  monthly: 6
drill:
  sample: 20
  rto_minutes: 60
rpo_hours: 26
YAML
}

make_tenant demo-zorg sensitive zorgdossiers
make_tenant demo-bakkerij normal salarisadministratie
make_tenant demo-huisarts sensitive identiteitsverificatie

echo "== validating policies in $BKP_POLICIES"
"$bkp" policy validate
echo "== preparing repositories"
"$bkp" init --all
echo "== tonight's run: every backup and restore drill that is due (what cron calls)"
rc=0
"$bkp" run --jobs 2 || rc=$?
echo "== status"
"$bkp" status
exit "$rc"
