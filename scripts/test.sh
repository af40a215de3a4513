#!/usr/bin/env bash
# Run the whole test suite (unit, integration with real restic/sshd/S3, end-to-end CLI).
# Installs what is missing first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
.venv/bin/ruff check .
# Three workers on two cores: many tests wait on restic, sshd, servers and timeouts
# rather than on the CPU, so a third worker fills those waits.
exec .venv/bin/pytest -q -n "${BKP_TEST_WORKERS:-3}" "$@"
