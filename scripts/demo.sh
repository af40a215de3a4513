#!/usr/bin/env bash
# Install everything, then run one night of bkp (`bkp run`: the due backups and restore
# drills) over three demo tenants whose backups go to
# local repositories standing in for the off-site server (one tenant with a copy at a
# second "site"; one tenant with a PostgreSQL database the night dumps and the drill loads),
# copy bkp's own records to an evidence repository at a third "site", show `bkp status`,
# and end by writing the auditor's evidence report (HTML)
# and printing its path.
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
  site: demo-site-a
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

# A demo PostgreSQL with an application database (patients and appointments), so that the
# night dumps it and the drill loads the dump into a scratch server and compares its rows.
start_demo_postgresql() {
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  local data="$demo/postgres" sockets="$demo/pg"
  local password="$demo/secrets/zorgapp.db"
  [ -f "$password" ] || (umask 077; head -c 18 /dev/urandom | base64 > "$password")
  mkdir -p "$sockets" && chown postgres: "$sockets"
  if [ ! -d "$data" ]; then
    install -d -o postgres -m 700 "$data"
    runuser -u postgres -- "$bin/initdb" -D "$data" --auth-local=peer --auth-host=reject >/dev/null
    sed -i '1i local all bkp_reader scram-sha-256' "$data/pg_hba.conf"
  fi
  if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -w -l "$data/server.log" \
      -o "-c listen_addresses='' -c unix_socket_directories=$sockets -p 5499" start >/dev/null
  fi
  local psql=(runuser -u postgres -- psql -X -q -h "$sockets" -p 5499 -v ON_ERROR_STOP=1)
  if ! "${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='zorgapp'" | grep -q 1; then
    "${psql[@]}" -d postgres -c "CREATE DATABASE zorgapp"
    "${psql[@]}" -d zorgapp -c "CREATE TABLE patients (id serial PRIMARY KEY, bsn text, name text);
      INSERT INTO patients (bsn, name) SELECT lpad(i::text, 9, '0'), 'patient ' || i FROM generate_series(1, 500) i;
      CREATE TABLE appointments (id serial PRIMARY KEY, patient int REFERENCES patients, at timestamptz);
      INSERT INTO appointments (patient, at) SELECT 1 + i % 500, now() + i * interval '1 hour' FROM generate_series(1, 2000) i;"
  fi
  # The read-only role bkp dumps with; its password lives only in the secrets file.
  "${psql[@]}" -d postgres -c "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bkp_reader') THEN CREATE ROLE bkp_reader LOGIN; END IF; END\$\$;
    GRANT pg_read_all_data TO bkp_reader;" >/dev/null
  # on stdin, never in argv (base64: no quote to escape)
  "${psql[@]}" -d postgres -f - >/dev/null <<SQL
ALTER ROLE bkp_reader PASSWORD '$(cat "$password")';
SQL
  cat >> "$BKP_POLICIES/demo-zorg.yaml" <<YAML
databases:
  - type: postgresql
    name: zorgapp
    host: $sockets
    port: 5499
    user: bkp_reader
    password_file: $password
YAML
}

make_tenant demo-zorg sensitive zorgdossiers
make_tenant demo-bakkerij normal salarisadministratie
make_tenant demo-huisarts sensitive identiteitsverificatie
# demo-huisarts keeps a second copy at another "site" (a second local repository standing
# in for another datacenter): every night's snapshots are copied there too.
cat >> "$BKP_POLICIES/demo-huisarts.yaml" <<YAML
copies:
  - id: site-b
    type: local
    country: NL
    site: demo-site-b
    path: $demo/site-b/demo-huisarts
YAML
mkdir -p "$demo/site-b"
# bkp's own records (catalog, audit trail, drill reports, certificates) go to an evidence
# repository at a third "site" after every night, so they survive losing this host.
evidence_key="$demo/secrets/evidence.key"
[ -f "$evidence_key" ] || (umask 077; head -c 24 /dev/urandom | base64 > "$evidence_key")
mkdir -p "$demo/evidence-site"
cat > "$demo/bkp.yaml" <<YAML
organization: Demo Hosting bv
evidence:
  destination:
    type: local
    country: NL
    path: $demo/evidence-site/bkp-evidence
  password_file: $evidence_key
YAML
export BKP_CONFIG="$demo/bkp.yaml"
echo "== demo PostgreSQL with demo-zorg's application database"
start_demo_postgresql

echo "== validating policies in $BKP_POLICIES"
"$bkp" policy validate
echo "== preparing repositories"
"$bkp" init --all
echo "== tonight's run: every backup and restore drill that is due (what cron calls)"
rc=0
"$bkp" run --jobs 2 || rc=$?
echo "== status"
"$bkp" status
echo "== the auditor's evidence report (signed with the certificates' key)"
"$bkp" certificate public-key >/dev/null 2>&1 || "$bkp" certificate key create >/dev/null
mkdir -p "$demo/reports"
report="$demo/reports/evidence-report-$(date -u +%Y%m%dT%H%M%SZ).html"
"$bkp" report --format html --output "$report"
"$bkp" report verify "$report"
echo "evidence report: $report"
echo "== the same nights on Kubernetes: one CronJob per tenant and task (bkp schedule)"
# A cluster reaches each tenant's files and the backup disks through volumes named in its
# own bkp.yaml (here PersistentVolumeClaims), and leaves its signed results in an inbox the
# central gatherer (`bkp catalog sync --all`) ingests. demo-zorg stays on this host: its
# database is reached by a local socket, which a pod does not have.
cluster="$demo/cluster"
mkdir -p "$cluster/policies" "$cluster/result-keys" "$cluster/inbox"
cp "$BKP_POLICIES/demo-bakkerij.yaml" "$BKP_POLICIES/demo-huisarts.yaml" "$cluster/policies/"
cat > "$cluster/bkp.yaml" <<YAML
organization: Demo Hosting bv
kubernetes:
  namespace: bkp-demo
  tenants:
    demo-bakkerij:
      sources: {persistentVolumeClaim: {claimName: demo-bakkerij-files}}
      repository: {persistentVolumeClaim: {claimName: demo-backup-disk}}
    demo-huisarts:
      sources: {persistentVolumeClaim: {claimName: demo-huisarts-files}}
      repository: {persistentVolumeClaim: {claimName: demo-backup-disk}}
  inbox: {persistentVolumeClaim: {claimName: demo-results}}
results:
  inbox: {type: local, country: NL, path: $cluster/inbox}
  keys: $cluster/result-keys
YAML
BKP_POLICIES="$cluster/policies" "$bkp" --config "$cluster/bkp.yaml" catalog result-keys --all \
  >/dev/null
BKP_POLICIES="$cluster/policies" "$bkp" --config "$cluster/bkp.yaml" schedule \
  --format kubernetes --image registry.example.nl/bkp:demo --output "$cluster/manifests.yaml"
echo "manifests: $cluster/manifests.yaml ($(grep -c '^kind: CronJob' "$cluster/manifests.yaml") CronJobs)"
exit "$rc"
