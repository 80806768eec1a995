#!/usr/bin/env bash
# Install Conveyor with its test tools and run the whole test suite: lint, types, tests.
# This is the README's test command and exactly what CI runs (.ci/run).
#
# Run as root (as CI does), it first installs and starts the real services the
# integration tests use (scripts/services/*.sh: sshd, SLURM, SGE, a second host in a
# network namespace), once per run. As another user, or with CONVEYOR_SKIP_SERVICES=1,
# those tests skip with the reason; with CI=true a missing service fails them instead.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'

if [ "$(id -u)" = 0 ] && [ "${CONVEYOR_SKIP_SERVICES:-0}" != 1 ]; then
  # Order matters: the namespace host runs its own SLURM with the SLURM script.
  for service in sshd slurm sge netns-host; do
    script="scripts/services/$service.sh"
    if [ -f "$script" ]; then
      bash "$script"
    fi
  done
fi

python3 -m ruff check src tests benchmarks
python3 -m ruff format --check src tests benchmarks
python3 -m mypy
python3 -m pytest "$@"
