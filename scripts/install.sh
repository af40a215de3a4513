#!/usr/bin/env bash
# Install everything bkp needs on a fresh Debian/Ubuntu machine, as root:
# the system packages (restic, OpenSSH, Python venv) and bkp in ./.venv.
# One script for the README, CI and the Dockerfile.
#   scripts/install.sh          runtime only
#   scripts/install.sh --dev    also the test tools (pytest, moto, hypothesis, ruff, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "usage: scripts/install.sh [--dev]" >&2; exit 2 ;;
  esac
done

# restic from the distribution; OpenSSH client for restic's sftp backend and the server for
# the test fixtures; util-linux and e2fsprogs for the media path (losetup, lsblk, mkfs);
# hdparm and nvme-cli for hardware erase commands; the database clients for tenant dumps
# (pg_dump, mariadb-dump) and the servers bkp starts itself as scratch servers in drills;
# rclone for copies between two sftp servers or two S3 services (restic's rclone backend
# gives each side its own transport).
packages=(restic openssh-client openssh-server python3 python3-venv ca-certificates
          util-linux e2fsprogs hdparm nvme-cli
          postgresql-client-15 postgresql-15 mariadb-client mariadb-server rclone)
if [ "$dev" = 1 ]; then
  # systemd-analyze verifies the units `bkp schedule --format systemd` renders; rclone also
  # serves restic's REST protocol (append-only too) in the tests; chromium renders the
  # evidence report's HTML headless in the tests (a real browser: not blank, nothing fetched).
  packages+=(nwipe systemd chromium)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: missing system packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  echo "install.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Scratch database servers in drills run as this unprivileged system user (PostgreSQL
# refuses root, and a tenant's dump should act with no rights beyond scratch files); bkp
# creates it on first use too.
if [ "$(id -u)" = 0 ] && ! getent passwd bkp-scratch >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
          --shell /usr/sbin/nologin bkp-scratch
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
lock=requirements.lock
[ "$dev" = 1 ] && lock=requirements-test.lock
pip_quietly() {
  # pip's chatter (mirror warnings, setuptools notices) is shown only when it fails.
  local out rc=0
  out=$(.venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1) || rc=$?
  [ "$rc" = 0 ] || printf '%s\n' "$out" >&2
  return "$rc"
}
pip_quietly --require-hashes -r "$lock"
pip_quietly --no-deps -e .
# bkp's own bytecode, compiled now: an editable install leaves it to the first run, and a
# container (read-only root file system, uid 10001) or PYTHONDONTWRITEBYTECODE can never
# write it, so every job would compile all of bkp again (a few tenths of a second each).
.venv/bin/python -m compileall -q bkp
echo "install.sh: bkp $(.venv/bin/bkp --version | awk '{print $NF}') with $(restic version | cut -d' ' -f1-2) ready in $(pwd)/.venv" >&2
