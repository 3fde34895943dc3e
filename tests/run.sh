#!/usr/bin/env bash
# Runs every test: the Rust suites (unit, integration with lapin, examples),
# the Python client suites (pika, Celery) and the Go client's own
# integration suite (amqp091-go) against the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# --workspace: the broker and the tools crate (tools/amqp-perf).
cargo build --release --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  echo "note: cargo-nextest not found (cargo install --locked cargo-nextest); running the Rust tests with cargo test" >&2
  # The integration tests (tests/it/) then share one process.
  cargo test --workspace --no-fail-fast
fi

venv="${VENV:-target/py-venv}"
if [ ! -x "$venv/bin/pytest" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
BROKER_BIN="$PWD/target/release/broker" "$venv/bin/pytest" tests/python -q -rf

BROKER_BIN="$PWD/target/release/broker" bash tests/amqp091-go.sh
