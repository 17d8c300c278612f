#!/usr/bin/env bash
# `make test`: formatting, lints, then every unit, integration and fault test against a real
# local stack (Apache Kafka, rivven-schema, Apache Cassandra) started here on test ports and
# stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
EIP_SCRIPT=test
. deploy/local/common.sh
ensure_toolchain
# One clean build, not a series of edits: incremental caches would add gigabytes on a CI disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

export EIP_STATE_DIR=${EIP_TEST_STATE_DIR:-$ROOT/.eip-local/test}
export EIP_KAFKA_PORT=${EIP_TEST_KAFKA_PORT:-19192}
export EIP_REGISTRY_PORT=${EIP_TEST_REGISTRY_PORT:-18181}
export EIP_KAFKA_CONTROLLER_PORT=${EIP_TEST_KAFKA_CONTROLLER_PORT:-19193}
# Cassandra is the CQL server unless SCYLLA_NODES names a real ScyllaDB cluster.
if [ -n "${SCYLLA_NODES:-}" ]; then export EIP_CQL=0; else export EIP_CQL=1; fi
export EIP_CQL_PORT=${EIP_TEST_CQL_PORT:-19142}
export EIP_CQL_STORAGE_PORT=${EIP_TEST_CQL_STORAGE_PORT:-17100}
export EIP_PROMETHEUS=1
export EIP_PROMETHEUS_PORT=${EIP_TEST_PROMETHEUS_PORT:-19190}

log "installing what the tests need"
bash deploy/local/stack.sh install
bash deploy/local/stack.sh install-chromium

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "alert rules and scrape config"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
sed -e "s|@TARGETS@|'127.0.0.1:9464'|" deploy/local/prometheus.yml >"$EIP_STATE_DIR/prometheus-check.yml"
cp deploy/prometheus/alerts.yml "$EIP_STATE_DIR/alerts.yml"
promtool check config "$EIP_STATE_DIR/prometheus-check.yml"

log "building binaries the tests start"
cargo build --workspace --bins

# A fresh broker and registry for every run: tests assume nothing about earlier runs.
bash deploy/local/stack.sh stop >/dev/null 2>&1 || true
rm -rf "$EIP_STATE_DIR/data"
private_brokers() {
    # Tests stopped mid-way leave their private brokers (started with setsid) behind. Their
    # state directories are temporary ones, and stack.sh marks each broker's command line with
    # its port, so only those brokers are stopped, never a process that reused a stale pid.
    local pidfile pid port
    for pidfile in "${TMPDIR:-/tmp}"/.tmp*/kafka.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        port=$(sed -n 's/^listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\),.*/\1/p' \
            "$(dirname "$pidfile")/kafka/server.properties" 2>/dev/null)
        if [ -n "$port" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
            | grep -qF -- "-Deip.listener=127.0.0.1:$port "; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}
trap 'private_brokers; bash deploy/local/stack.sh stop' EXIT
EIP_PROMETHEUS=0 bash deploy/local/stack.sh start
export EIP_KAFKA_BROKERS=127.0.0.1:$EIP_KAFKA_PORT
export EIP_REGISTRY_URL=http://127.0.0.1:$EIP_REGISTRY_PORT
# The CQL suites run against the local Cassandra unless SCYLLA_NODES names a real cluster.
export EIP_CQL_NODES=${SCYLLA_NODES:-127.0.0.1:$EIP_CQL_PORT}

log "cargo test (unit, integration, fault injection)"
# A hung test (a client blocked on a broker that stopped answering, say) must fail the run, not
# hold CI until its own limit: past EIP_TEST_TIMEOUT the tests are stopped and the run fails.
# `timeout` runs them in a process group of their own, so an interrupt is passed on to it.
limit=${EIP_TEST_TIMEOUT:-45m}
timeout --kill-after=30s "$limit" cargo test --workspace -- --test-threads "${EIP_TEST_THREADS:-2}" &
tests=$!
trap 'kill -TERM -- "-$tests" 2>/dev/null; exit 130' INT TERM
status=0
wait "$tests" || status=$?
trap - INT TERM
case "$status" in
    0) ;;
    124) die "cargo test did not finish within $limit (EIP_TEST_TIMEOUT); a hung test is named by the last 'has been running for over 60 seconds' line above" ;;
    137) die "cargo test was killed: it ignored the stop at $limit (EIP_TEST_TIMEOUT), or the machine ran out of memory" ;;
    *) exit "$status" ;;
esac
log "all tests passed"
