#!/usr/bin/env bash
# `make demo`: the pipeline's main job end to end on the embedded defaults.
#
# Starts the local stack (broker, registry, Prometheus), registers the schemas, produces
# sample OrderPlaced events with a few poison records among them, runs eip-passthrough until
# every record is forwarded or dead-lettered, and prints a summary: counts, rate, dead-letter
# reasons, readiness and what Prometheus scraped. Everything it starts is stopped on exit
# (set EIP_KEEP_STACK=1 to leave the stack up).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
EIP_SCRIPT=demo
. deploy/local/common.sh
ensure_toolchain

COUNT=${EIP_DEMO_RECORDS:-20000}
POISON=${EIP_DEMO_POISON:-4}
export EIP_PROMETHEUS=1
export EIP_SCRAPE_TARGETS=127.0.0.1:9464
PROM=http://127.0.0.1:${EIP_PROMETHEUS_PORT:-19090}

bash deploy/local/stack.sh install
log "building eip-passthrough and eipctl (release)"
cargo build --release --bin eip-passthrough --bin eipctl
EIPCTL=target/release/eipctl

PT_PID=
cleanup() {
    [ -n "$PT_PID" ] && kill -TERM "$PT_PID" 2>/dev/null || true
    [ "${EIP_KEEP_STACK:-0}" = 1 ] || bash deploy/local/stack.sh stop
}
trap cleanup EXIT
bash deploy/local/stack.sh start

RUN=$(date +%s)
IN=orders.$RUN
OUT=orders.$RUN.validated
DLQ=$IN.dlq
$EIPCTL schemas register >/dev/null
$EIPCTL topics create "$IN" "$DLQ" "$OUT" --partitions 4 >/dev/null
log "producing $COUNT OrderPlaced events and $POISON poison records to $IN"
$EIPCTL produce --topic "$IN" --count "$COUNT" --poison "$POISON" --keys 500

log "running eip-passthrough ($IN -> $OUT), telemetry on 127.0.0.1:9464"
LOG=${EIP_STATE_DIR:-$ROOT/.eip-local}/logs/passthrough.log
STARTED=$(date +%s.%N)
EIP__PIPELINE__INPUTS="[\"$IN\"]" EIP__PROCESSOR__OUTPUT="$OUT" EIP__KAFKA__GROUP_ID="demo-$RUN" \
    target/release/eip-passthrough --config deploy/local/passthrough.toml >"$LOG" 2>&1 &
PT_PID=$!
$EIPCTL wait --topic "$OUT" --count "$COUNT" --timeout 300s >/dev/null
$EIPCTL wait --topic "$DLQ" --count "$POISON" --timeout 60s >/dev/null
ENDED=$(date +%s.%N)

# Prometheus scrapes every 5 s: wait until it has seen the final count.
SCRAPED=0
for _ in $(seq 1 120); do
    SCRAPED=$(curl -fsS "$PROM/api/v1/query" --data-urlencode 'query=sum(eip_records_produced_total{processor="passthrough"})' \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')
    [ "$SCRAPED" -ge "$COUNT" ] && break
    sleep 0.5
done
READY=$(curl -fsS http://127.0.0.1:9464/readyz || true)

kill -TERM "$PT_PID"
wait "$PT_PID" && STATUS=0 || STATUS=$?
PT_PID=

OUT_N=$($EIPCTL count --topic "$OUT")
DLQ_N=$($EIPCTL count --topic "$DLQ")
echo
echo "================ eip demo summary ================"
printf 'input     %-28s %6d records (%d valid, %d poison)\n' "$IN" $((COUNT + POISON)) "$COUNT" "$POISON"
printf 'output    %-28s %6d records\n' "$OUT" "$OUT_N"
printf 'dead      %-28s %6d records\n' "$DLQ" "$DLQ_N"
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'time      {s:.1f} s from start to last record, {int(sys.argv[3])/s:.0f} records/s, consumer group join included')" "$STARTED" "$ENDED" $((COUNT + POISON))
echo "readiness $READY"
echo "prometheus sum(eip_records_produced_total) = $SCRAPED (scraped from 127.0.0.1:9464)"
echo "shutdown  SIGTERM -> exit $STATUS (drained and committed)"
echo
$EIPCTL dlq list --topic "$DLQ" --limit 10
echo "=================================================="
[ "$OUT_N" -eq "$COUNT" ] && [ "$DLQ_N" -eq "$POISON" ] && [ "$STATUS" -eq 0 ] \
    || { log "demo FAILED: expected $COUNT forwarded and $POISON dead-lettered, exit 0"; exit 1; }
log "demo ok"
