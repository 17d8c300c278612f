#!/usr/bin/env bash
# Measures the local Java servers as docs/local-stack.md reports them: Maven fetch into an
# empty cache, first start (storage formatted) until ready, restart on the same data until
# ready, resident memory, and SIGTERM until exit. Uses its own ports, state and cache
# directories, and removes them at the end.
#
#   bash deploy/local/measure-stack.sh            (EIP_MEASURE_FETCH=0 skips the downloads)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK=$ROOT/deploy/local/stack.sh
tmp=$(mktemp -d)
export EIP_STATE_DIR=$tmp/state
export EIP_KAFKA_PORT=${EIP_MEASURE_KAFKA_PORT:-19392}
export EIP_KAFKA_CONTROLLER_PORT=$((EIP_KAFKA_PORT + 1))
export EIP_CQL_PORT=${EIP_MEASURE_CQL_PORT:-19342}
export EIP_CQL_STORAGE_PORT=${EIP_MEASURE_CQL_STORAGE_PORT:-17300}
trap 'bash "$STACK" stop >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

timed() {
    # timed <command...>: runs it quietly, prints its wall-clock seconds.
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
    end=$(date +%s.%N)
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$start" "$end"
}

rss() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1024:.0f} MB')" "$(ps -o rss= -p "$(cat "$EIP_STATE_DIR/$1.pid")")"; }

measure() {
    # measure <label> <pid name> <install> <start> <stop>
    local label=$1 name=$2 install=$3 start=$4 stop=$5 fetch=skipped
    if [ "${EIP_MEASURE_FETCH:-1}" = 1 ]; then
        fetch=$(EIP_TOOLS_DIR=$tmp/tools timed bash "$STACK" "$install")
    fi
    bash "$STACK" "$install" >/dev/null 2>&1
    local first restart mem stopped
    first=$(timed bash "$STACK" "$start")
    sleep 5 # let it settle before reading its memory
    mem=$(rss "$name")
    stopped=$(timed bash "$STACK" "$stop")
    restart=$(timed bash "$STACK" "$start")
    bash "$STACK" "$stop" >/dev/null 2>&1
    printf '%-16s fetch %-8s first start %-8s restart %-8s rss %-8s sigterm→exit %s\n' \
        "$label" "$fetch" "$first" "$restart" "$mem" "$stopped"
}

measure "kafka 4.4.0" kafka install-kafka start-broker stop-broker
measure "cassandra 5.0.6" cassandra install-cql start-cql stop-cql
