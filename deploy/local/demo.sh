#!/usr/bin/env bash
# `make demo`: what eip is for, end to end on the embedded defaults.
#
# Starts the local stack (Kafka, the schema registry, Prometheus), then the gateway, the
# router, eip-orders and eip-projector. Sends a realistic mix of order commands: JSON and XML
# over HTTP, Avro from a producer, and XML placements from a legacy partner through the
# router, with invalid commands, malformed requests and a few poison records among them. Waits
# until the views hold every decided command, and prints a summary a person can check:
# commands per way in, what the edge refused and why, commands accepted and rejected by
# reason, orders by status, samples of every view, records per route, dead letters, and the
# query URLs to try next. Exits 0 only when the views hold exactly what was sent.
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
export EIP_SCRAPE_TARGETS=127.0.0.1:9465,127.0.0.1:9466,127.0.0.1:9467
PROM=http://127.0.0.1:${EIP_PROMETHEUS_PORT:-19090}
GATEWAY=http://127.0.0.1:8088
WORK=$ROOT/.eip-local/demo
LOGS=$WORK/logs

bash deploy/local/stack.sh install
log "building the gateway, router, eip-orders, eip-projector and eipctl (release)"
cargo build --release --bin gateway --bin router --bin eip-orders --bin eip-projector --bin eipctl
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
wait_ready() { # host:port seconds
    local deadline=$((SECONDS + $2))
    until curl -fsS "http://$1/readyz" >/dev/null 2>&1; do
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.3
    done
}
for probe in 127.0.0.1:8088 127.0.0.1:9465 127.0.0.1:9466 127.0.0.1:9467; do
    wait_ready "$probe" 90 || { tail -n 20 "$LOGS"/*.log >&2; die "$probe never became ready; logs in $LOGS"; }
done
log "gateway, router, eip-orders and eip-projector are ready (logs in $LOGS)"

log "sending the commands of $ORDERS orders and $POISON poison records"
STARTED=$(date +%s.%N)
$EIPCTL orders send --orders "$ORDERS" --poison "$POISON" --gateway "$GATEWAY" \
    --report "$WORK/expect.json"
echo
echo "======================== eip demo summary ========================"
STATUS=0
$EIPCTL query summary --expect "$WORK/expect.json" --db "$WORK/eip-views.db" \
    --gateway "$GATEWAY" --wait 300s || STATUS=$?
ENDED=$(date +%s.%N)
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
python3 -c "import sys; print(f'time: {float(sys.argv[2]) - float(sys.argv[1]):.1f} s from the first command to complete views')" "$STARTED" "$ENDED"
echo "metrics: $PROM (Prometheus scrapes the router, eip-orders and eip-projector)"
echo "=================================================================="
[ "$($EIPCTL count --topic order-commands.dlq)" -ge "$POISON" ] \
    || { log "demo FAILED: the poison records are not all dead-lettered"; STATUS=1; }
[ "$STATUS" -eq 0 ] || { log "demo FAILED: the views differ from what was sent (see above)"; exit 1; }
log "demo ok"
if [ "$KEEP" = 1 ]; then
    log "everything keeps running; try the URLs above. Ctrl-C stops it all."
    trap 'exit 0' INT TERM
    while :; do sleep 3600; done
fi
