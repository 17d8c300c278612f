#!/usr/bin/env bash
# `make bench`: the pass-through and router benchmarks (against raw rdkafka and Kafka Streams), the gateway
# benchmark, and the codec and rule-evaluation micro-benchmarks, on a fresh local stack. Figures are printed; README.md records them.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
EIP_SCRIPT=bench
. deploy/local/common.sh
ensure_toolchain
export EIP_STATE_DIR=${EIP_BENCH_STATE_DIR:-$ROOT/.eip-local/bench}
export EIP_KAFKA_PORT=${EIP_BENCH_KAFKA_PORT:-19292}
export EIP_REGISTRY_PORT=${EIP_BENCH_REGISTRY_PORT:-18281}
export EIP_KAFKA_CONTROLLER_PORT=${EIP_BENCH_KAFKA_CONTROLLER_PORT:-19293}
bash deploy/local/stack.sh stop >/dev/null 2>&1 || true
rm -rf "$EIP_STATE_DIR/data"
trap 'bash deploy/local/stack.sh stop' EXIT
bash deploy/local/stack.sh start
export EIP_KAFKA_BROKERS=127.0.0.1:$EIP_KAFKA_PORT
export EIP_REGISTRY_URL=http://127.0.0.1:$EIP_REGISTRY_PORT
cargo bench -p eip-schemas --bench codec -- --warm-up-time 1 --measurement-time 3 2>&1 | grep -E "^[a-z].*OrderPlaced|time:"
cargo bench -p eip-tests --bench rules -- --warm-up-time 1 --measurement-time 3 2>&1 | grep -E "^evaluate|time:"
cargo bench -p eip-tests --bench passthrough -- --records "${EIP_BENCH_RECORDS:-100000}" --rounds "${EIP_BENCH_ROUNDS:-5}"
cargo bench -p eip-projector --features sample --bench write_path -- --rounds "${EIP_BENCH_ROUNDS:-3}"
cargo bench -p eip-tests --bench stateful -- --records "${EIP_BENCH_RECORDS:-100000}" --rounds "${EIP_BENCH_ROUNDS:-3}"
cargo bench -p eip-tests --bench router -- --records "${EIP_BENCH_RECORDS:-100000}" --rounds "${EIP_BENCH_ROUNDS:-3}"
cargo bench -p eip-tests --bench gateway
cargo bench -p eip-tests --bench projector -- --rounds "${EIP_BENCH_ROUNDS:-3}"
cargo bench -p eip-tests --bench orders -- --records "${EIP_BENCH_RECORDS:-100000}" --rounds "${EIP_BENCH_ROUNDS:-3}"
cargo bench -p eip-tests --bench saga -- --sagas "${EIP_BENCH_SAGAS:-2000}" --records "${EIP_BENCH_RECORDS:-100000}" --rounds "${EIP_BENCH_ROUNDS:-3}"
# eip side by side with Kafka Streams 4.4: both run as processes of their own, over a million
# records by default, so the JVM is warm.
peer_env=$(bash deploy/local/stack.sh install-peer)
while IFS= read -r assignment; do export "${assignment//\'/}"; done <<<"$peer_env"
# The pass-through built with the system allocator too, to measure mimalloc in the same run.
cargo build --release -p eip-passthrough --no-default-features
cp target/release/eip-passthrough target/release/eip-passthrough-system-alloc
export EIP_PEER_SYSTEM_ALLOC=$ROOT/target/release/eip-passthrough-system-alloc
cargo build --release -p eip-passthrough -p eip-router --bins
cargo bench -p eip-tests --bench peers -- --records "${EIP_BENCH_PEER_RECORDS:-1000000}" --rounds "${EIP_BENCH_PEER_ROUNDS:-2}"
cargo bench -p eip-tests --bench latency
cargo bench -p eip-tests --bench query
