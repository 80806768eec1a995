#!/usr/bin/env bash
# Install Conveyor with its test tools and run the whole test suite: lint, types, tests.
# This is the README's test command and exactly what CI runs (.ci/run).
# Services that integration tests need are started by the tests' own fixtures; with
# CI=true a test whose service is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
python3 -m ruff check src tests benchmarks
python3 -m ruff format --check src tests benchmarks
python3 -m mypy
python3 -m pytest "$@"
