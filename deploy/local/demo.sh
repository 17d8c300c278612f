#!/usr/bin/env bash
# `make demo`: what eip is for, end to end on the embedded defaults.
#
# Starts the local stack (Kafka, the schema registry, Prometheus), then the gateway, the
# router, eip-orders, eip-projector, the nine saga participants and the saga monitor. Every
# confirmed order starts an order-fulfilment saga, with failures injected at several steps.
# Sends a realistic mix of order commands: JSON and XML
# over HTTP, Avro from a producer, and XML placements from a legacy partner through the
# router, with invalid commands, malformed requests and a few poison records among them. Waits
# until the views hold every decided command, and prints a summary a person can check:
# commands per way in, what the edge refused and why, commands accepted and rejected by
# reason, orders by status, samples of every view, records per route, dead letters, and the
# query URLs to try next; then sagas by status against what was expected, failures and
# compensations per step, and inventory levels. Exits 0 only when the views and the sagas
# hold exactly what was sent.
#
#   make demo                   run, summarize, stop everything
#   make demo KEEP=1            ... and keep everything running until Ctrl-C, to query it
#
# EIP_DEMO_ORDERS (default 2000) and EIP_DEMO_POISON (default 3) size the run. The demo's
# stack state lives in .eip-local/demo-stack and is started afresh each run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
EIP_SCRIPT=demo
. deploy/local/common.sh
ensure_toolchain

KEEP=${EIP_DEMO_KEEP:-0}
[ "${1:-}" = "--keep-running" ] && KEEP=1
ORDERS=${EIP_DEMO_ORDERS:-2000}
POISON=${EIP_DEMO_POISON:-3}
export EIP_STATE_DIR=$ROOT/.eip-local/demo-stack
export EIP_PROMETHEUS=1
export EIP_SCRAPE_TARGETS=127.0.0.1:9465,127.0.0.1:9466,127.0.0.1:9467,127.0.0.1:9470,127.0.0.1:9471,127.0.0.1:9472,127.0.0.1:9473,127.0.0.1:9474,127.0.0.1:9475,127.0.0.1:9476,127.0.0.1:9477,127.0.0.1:9478,127.0.0.1:9479
SAGA_ROLES=(customers fraud inventory payments loyalty shipping invoicing notifications orders)
MONITOR=127.0.0.1:9470
PROM=http://127.0.0.1:${EIP_PROMETHEUS_PORT:-19090}
GATEWAY=http://127.0.0.1:8088
WORK=$ROOT/.eip-local/demo
LOGS=$WORK/logs

bash deploy/local/stack.sh install
log "building the gateway, router, eip-orders, eip-projector, the saga binaries and eipctl (release)"
cargo build --release --bin gateway --bin router --bin eip-orders --bin eip-projector \
    --bin eip-saga --bin eip-saga-monitor --bin eipctl
BIN=target/release
EIPCTL=$BIN/eipctl

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    bash deploy/local/stack.sh stop
}
trap cleanup EXIT
bash deploy/local/stack.sh stop >/dev/null 2>&1 || true
rm -rf "$EIP_STATE_DIR/data" "$WORK"
mkdir -p "$LOGS"
bash deploy/local/stack.sh start

$EIPCTL schemas register >/dev/null
$EIPCTL topics create order-commands order-events order-outcomes \
    order-commands.dlq order-events.dlq order-outcomes.dlq \
    legacy.orders.place.xml legacy.orders.place.xml.dlq fulfilment.orders orders.cancelled \
    --partitions 3 >/dev/null
SAGA_TOPICS=(saga-timeouts saga-observations inventory-levels)
for role in "${SAGA_ROLES[@]}"; do SAGA_TOPICS+=("saga-$role"); done
ALL_SAGA_TOPICS=()
for t in "${SAGA_TOPICS[@]}"; do ALL_SAGA_TOPICS+=("$t" "$t.dlq"); done
$EIPCTL topics create "${ALL_SAGA_TOPICS[@]}" --partitions 3 >/dev/null

start() { # name, command...
    local name=$1
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    PIDS+=($!)
}
start eip-orders $BIN/eip-orders --config deploy/local/demo/orders.toml
start eip-projector $BIN/eip-projector --config deploy/local/demo/projector.toml
start router $BIN/router --config deploy/local/demo/router.toml
start gateway $BIN/gateway --config deploy/local/demo/gateway.toml
start saga-monitor $BIN/eip-saga-monitor --config deploy/local/demo/saga-monitor.toml
port=9471
SAGA_PROBES=($MONITOR)
for role in "${SAGA_ROLES[@]}"; do
    EIP__KAFKA__GROUP_ID=eip-saga-$role EIP__KAFKA__CLIENT_ID=eip-saga-$role \
        EIP__TELEMETRY__LISTEN=127.0.0.1:$port EIP__PROCESSOR__DB=$WORK/eip-saga-$role.db \
        start saga-$role $BIN/eip-saga --role "$role" --config deploy/local/demo/saga.toml
    SAGA_PROBES+=(127.0.0.1:$port)
    port=$((port + 1))
done
wait_ready() { # host:port seconds
    local deadline=$((SECONDS + $2))
    until curl -fsS "http://$1/readyz" >/dev/null 2>&1; do
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.3
    done
}
for probe in 127.0.0.1:8088 127.0.0.1:9465 127.0.0.1:9466 127.0.0.1:9467 "${SAGA_PROBES[@]}"; do
    wait_ready "$probe" 90 || { tail -n 20 "$LOGS"/*.log >&2; die "$probe never became ready; logs in $LOGS"; }
done
log "gateway, router, eip-orders, eip-projector, the saga participants and monitor are ready (logs in $LOGS)"

log "sending the commands of $ORDERS orders and $POISON poison records"
STARTED=$(date +%s.%N)
$EIPCTL orders send --orders "$ORDERS" --poison "$POISON" --gateway "$GATEWAY" \
    --report "$WORK/expect.json" \
    --saga-definition deploy/sagas/order-fulfilment.toml --saga-participants deploy/local/demo/saga.toml
echo
echo "======================== eip demo summary ========================"
STATUS=0
$EIPCTL query summary --expect "$WORK/expect.json" --db "$WORK/eip-views.db" \
    --gateway "$GATEWAY" --wait 300s || STATUS=$?
ENDED=$(date +%s.%N)
echo "sagas (one per confirmed order; eip-saga-monitor):"
$EIPCTL saga summary --expect "$WORK/expect.json" --monitor "$MONITOR" \
    --inventory-db "$WORK/eip-saga-inventory.db" --gateway "$GATEWAY" --wait 300s || STATUS=$?
SAGAS_ENDED=$(date +%s.%N)
echo "records per route (router, rules demo-1):"
curl -fsS http://127.0.0.1:9465/metrics | python3 -c '
import re, sys
for line in sys.stdin:
    m = re.match(r"eip_router_(routed|dropped)_total\{(\w+)=\"([^\"]+)\"\} (\S+)", line)
    if m:
        kind, _, name, n = m.groups()
        print(f"  {kind:<7} {name:<26} {int(float(n)):>7}")
'
echo "dead letters:"
for topic in order-commands.dlq order-events.dlq order-outcomes.dlq legacy.orders.place.xml.dlq; do
    printf '  %-30s %5d\n' "$topic" "$($EIPCTL count --topic "$topic")"
done
python3 -c "import sys; print(f'time: {float(sys.argv[2]) - float(sys.argv[1]):.1f} s from the first command to complete views, {float(sys.argv[3]) - float(sys.argv[1]):.1f} s to every saga final')" "$STARTED" "$ENDED" "$SAGAS_ENDED"
echo "metrics: $PROM (Prometheus scrapes the router, eip-orders, eip-projector, the saga participants and the monitor)"
echo "=================================================================="
[ "$($EIPCTL count --topic order-commands.dlq)" -ge "$POISON" ] \
    || { log "demo FAILED: the poison records are not all dead-lettered"; STATUS=1; }
[ "$STATUS" -eq 0 ] || { log "demo FAILED: the views or the sagas differ from what was sent (see above)"; exit 1; }
log "demo ok"
if [ "$KEEP" = 1 ]; then
    log "everything keeps running; try the URLs above. Ctrl-C stops it all."
    trap 'exit 0' INT TERM
    while :; do sleep 3600; done
fi
