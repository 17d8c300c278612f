#!/usr/bin/env bash
# The local stack: a Kafka-API broker (Tansu), a schema registry (rivven-schema) and,
# optionally, Prometheus scraping the processors. Everything binds 127.0.0.1.
#
#   deploy/local/stack.sh install          install pinned tools and apt packages (skips what is there)
#   deploy/local/stack.sh start            install, then start what is not running; waits until ready
#   deploy/local/stack.sh stop             stop everything this script started
#   deploy/local/stack.sh status           one line per component
#   deploy/local/stack.sh env              print the endpoints as EIP_* variables
#
# Settings (environment):
#   EIP_STATE_DIR        logs, pids and data            (default: <repo>/.eip-local)
#   EIP_TOOLS_DIR        cargo install root (cached)     (default: ~/.cache/eip-tools)
#   EIP_KAFKA_PORT       broker port                     (default: 19092)
#   EIP_REGISTRY_PORT    registry port                   (default: 18081)
#   EIP_PROMETHEUS_PORT  Prometheus port                 (default: 19090)
#   EIP_STORAGE          sqlite | memory                 (default: sqlite; see docs/local-stack.md:
#                                                         memory:// skips records on mid-batch fetches)
#   EIP_PROMETHEUS       1 to install and start Prometheus (default: 0)
#   EIP_SCRAPE_TARGETS   comma-separated host:port list Prometheus scrapes (default: 127.0.0.1:9464)
#
# Running any command twice is harmless.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${EIP_STATE_DIR:-$ROOT/.eip-local}
TOOLS=${EIP_TOOLS_DIR:-$HOME/.cache/eip-tools}
KAFKA_PORT=${EIP_KAFKA_PORT:-19092}
REGISTRY_PORT=${EIP_REGISTRY_PORT:-18081}
PROM_PORT=${EIP_PROMETHEUS_PORT:-19090}
STORAGE=${EIP_STORAGE:-sqlite}
PROMETHEUS=${EIP_PROMETHEUS:-0}
SCRAPE_TARGETS=${EIP_SCRAPE_TARGETS:-127.0.0.1:9464}

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
RIVVEN_VERSION=0.0.22

export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    # apt_install <command> <package>: installs <package> when <command> is missing.
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "$cmd is missing; install the Debian package $pkg (needs root)"
    if [ -z "${APT_UPDATED:-}" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "installing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
}

cargo_tool() {
    # cargo_tool <crate> <version> <binary> [features]: pinned `cargo install --locked`, skipped
    # when that exact version is already installed in $TOOLS.
    local crate=$1 version=$2 bin=$3 features=${4:-}
    if [ -x "$TOOLS/bin/$bin" ] && grep -q "\"$crate $version " "$TOOLS/.crates.toml" 2>/dev/null; then
        return 0
    fi
    log "cargo install $crate $version (cold builds take minutes; cached in $TOOLS)"
    local args=(install "$crate" --version "$version" --locked --root "$TOOLS")
    [ -n "$features" ] && args+=(--features "$features")
    cargo "${args[@]}" >"$STATE/logs/install-$crate.log" 2>&1 \
        || { tail -20 "$STATE/logs/install-$crate.log" >&2; die "cargo install $crate failed"; }
}

install() {
    mkdir -p "$STATE/logs" "$TOOLS"
    apt_install curl curl
    apt_install gcc gcc
    apt_install make make
    apt_install perl perl
    apt_install sqlite3 sqlite3
    command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"
    cargo_tool tansu "$TANSU_VERSION" tansu "$TANSU_FEATURES"
    cargo_tool rivven-schema "$RIVVEN_VERSION" rivven-schema
    if [ "$PROMETHEUS" = 1 ]; then
        apt_install prometheus prometheus
    fi
}

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_for() {
    # wait_for <name> <seconds> <command...>: polls the command until it succeeds.
    local name=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || { tail -20 "$STATE/logs/$name.log" >&2; die "$name exited during startup"; }
        [ $SECONDS -lt $deadline ] || die "$name not ready after ${secs}s (see $STATE/logs/$name.log)"
        sleep 0.1
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_broker() {
    alive tansu && { log "broker already running on 127.0.0.1:$KAFKA_PORT"; return 0; }
    local engine
    case "$STORAGE" in
        memory) engine="memory://tansu/" ;;
        sqlite) mkdir -p "$STATE/data"; engine="sqlite://data/tansu.db" ;;
        *) die "EIP_STORAGE must be memory or sqlite, not $STORAGE" ;;
    esac
    log "starting broker on 127.0.0.1:$KAFKA_PORT ($engine)"
    # sqlite:// paths are relative to the working directory, so run from the state dir.
    (cd "$STATE" && exec setsid tansu broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine "$engine" >>"$STATE/logs/tansu.log" 2>&1 </dev/null) &
    echo $! >"$STATE/tansu.pid"
    wait_for tansu 30 port_open "$KAFKA_PORT"
    if [ "$STORAGE" = sqlite ]; then
        # Tansu 0.6 looks headers up by (topition, offset_id) for every fetched record but
        # creates no index for it: without one each fetch scans every header ever written and
        # the broker stalls within a few tens of thousands of records. Add it (idempotent).
        wait_for tansu 30 sqlite3 "$STATE/data/tansu.db" "select 1 from header limit 1"
        sqlite3 "$STATE/data/tansu.db" \
            "create index if not exists eip_header_by_record on header (topition, offset_id);"
    fi
}

start_registry() {
    alive registry && { log "registry already running on 127.0.0.1:$REGISTRY_PORT"; return 0; }
    log "starting registry on 127.0.0.1:$REGISTRY_PORT"
    (exec setsid rivven-schema serve --host 127.0.0.1 --port "$REGISTRY_PORT" \
        >>"$STATE/logs/registry.log" 2>&1 </dev/null) &
    echo $! >"$STATE/registry.pid"
    wait_for registry 30 curl -fsS "http://127.0.0.1:$REGISTRY_PORT/subjects"
}

start_prometheus() {
    [ "$PROMETHEUS" = 1 ] || return 0
    alive prometheus && { log "prometheus already running on 127.0.0.1:$PROM_PORT"; return 0; }
    mkdir -p "$STATE/prometheus"
    local targets
    targets=$(printf '%s' "$SCRAPE_TARGETS" | sed "s/[^,][^,]*/'&'/g")
    sed -e "s|@TARGETS@|$targets|" "$ROOT/deploy/local/prometheus.yml" >"$STATE/prometheus/prometheus.yml"
    cp "$ROOT/deploy/prometheus/alerts.yml" "$STATE/prometheus/alerts.yml"
    log "starting prometheus on 127.0.0.1:$PROM_PORT scraping $SCRAPE_TARGETS"
    (exec setsid prometheus --config.file="$STATE/prometheus/prometheus.yml" \
        --storage.tsdb.path="$STATE/prometheus/data" \
        --web.listen-address="127.0.0.1:$PROM_PORT" \
        >>"$STATE/logs/prometheus.log" 2>&1 </dev/null) &
    echo $! >"$STATE/prometheus.pid"
    wait_for prometheus 60 curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready"
}

stop_one() {
    # stop_one <name> [TERM|KILL]: TERM, then KILL after 10 s; or KILL at once.
    local name=$1 signal=${2:-TERM}
    alive "$name" || { rm -f "$STATE/$name.pid"; return 0; }
    local pid; pid=$(cat "$STATE/$name.pid")
    kill "-$signal" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$STATE/$name.pid"
    log "stopped $name"
}

status_one() {
    local name=$1 where=$2
    if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid")) on $where"
    else echo "$name: stopped"; fi
}

cmd=${1:-status}
mkdir -p "$STATE/logs"
case "$cmd" in
    install) install ;;
    start) install; start_broker; start_registry; start_prometheus
           log "ready: kafka 127.0.0.1:$KAFKA_PORT, registry http://127.0.0.1:$REGISTRY_PORT" ;;
    # Tansu is killed, not terminated: on SIGTERM, Tansu 0.6 stops its storage first and answers
    # in-flight produces with UNKNOWN_SERVER_ERROR; an idempotent producer then bumps its epoch,
    # and the next Tansu panics on that epoch and serves nothing (docs/local-stack.md). Its
    # sqlite storage is a WAL database, which a killed process leaves consistent.
    stop) stop_one prometheus; stop_one registry; stop_one tansu KILL ;;
    stop-broker) stop_one tansu KILL ;;
    start-broker) start_broker ;;
    status) status_one tansu "127.0.0.1:$KAFKA_PORT ($STORAGE)"
            status_one registry "http://127.0.0.1:$REGISTRY_PORT"
            status_one prometheus "http://127.0.0.1:$PROM_PORT" ;;
    env) echo "EIP_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
         echo "EIP_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT"
         echo "EIP_TANSU_BIN=$TOOLS/bin/tansu"
         echo "EIP_RIVVEN_BIN=$TOOLS/bin/rivven-schema" ;;
    *) die "unknown command $cmd (install|start|stop|status|env|start-broker|stop-broker)" ;;
esac
