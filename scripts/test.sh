#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: builds, starts the services the tests
# need (when a script for them exists: Apache Kafka, PostgreSQL), runs the tests, then the
# Kafka tests that hold on any broker again on tansu, and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

started=()
cleanup() {
  for svc in "${started[@]:-}"; do
    [ -n "$svc" ] && "scripts/$svc.sh" stop || true
  done
}
trap cleanup EXIT

# Services: each scripts/<svc>.sh start prints NAME=value lines to export.
for svc in kafka postgres; do
  if [ -x "scripts/$svc.sh" ] && [ -z "${WEIR_SKIP_SERVICES:-}" ]; then
    "scripts/$svc.sh" install
    env_lines=$("scripts/$svc.sh" start)
    started+=("$svc")
    while IFS= read -r line; do
      case "$line" in WEIR_*=*) export "${line?}" ;; esac
    done <<<"$env_lines"
  fi
done

# cargo-nextest (one process per test, the groups and timeouts of .config/nextest.toml),
# installed once into a cache that outlives the checkout; `cargo test` if that fails.
TOOLS="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}"
export PATH="$TOOLS/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked --version "${WEIR_NEXTEST_VERSION:-0.9.151}" --root "$TOOLS" ||
    echo "test.sh: could not install cargo-nextest; running cargo test" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# Compatibility with tansu, the Kafka-protocol broker the tests ran on before Apache Kafka:
# the Kafka tests that hold on any broker (WEIR_TEST_BROKER=tansu scripts/test.sh runs every
# test on tansu, where the transactional-sink, replay-end and consumer-protocol tests fail:
# tansu does not implement those parts of Kafka). Skipped with WEIR_SKIP_TANSU_COMPAT=1, and
# when arguments select tests.
TANSU_COMPAT='(binary(connectors) & test(/^kafka_broker::/)) | (binary(it) & test(/^(kafka_offsets|watermark_kafka)::/)) | (binary(it) & test(/^two_topics::two_topics_into_(jsonl|postgres)/))'
if [ "${WEIR_TEST_BROKER:-kafka}" = kafka ] && [ -z "${WEIR_SKIP_TANSU_COMPAT:-}" ] &&
  [ -z "${WEIR_SKIP_SERVICES:-}" ] && [ "$#" -eq 0 ] && cargo nextest --version >/dev/null 2>&1; then
  compat_dir="${WEIR_SERVICES_DIR:-$PWD/.services}/tansu-compat"
  stop_tansu() { WEIR_TEST_BROKER=tansu WEIR_SERVICES_DIR="$compat_dir" scripts/kafka.sh stop || true; }
  trap 'stop_tansu; cleanup' EXIT
  WEIR_TEST_BROKER=tansu WEIR_SERVICES_DIR="$compat_dir" scripts/kafka.sh install
  env_lines=$(WEIR_TEST_BROKER=tansu WEIR_SERVICES_DIR="$compat_dir" scripts/kafka.sh start)
  while IFS= read -r line; do
    case "$line" in WEIR_*=*) export "${line?}" ;; esac
  done <<<"$env_lines"
  echo "test.sh: the tansu compatibility run ($WEIR_KAFKA_BROKERS)" >&2
  cargo nextest run --workspace --no-fail-fast -E "$TANSU_COMPAT"
fi
