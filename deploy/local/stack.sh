#!/usr/bin/env bash
# The local stack: Apache Kafka (one KRaft node), a schema registry (rivven-schema), and on
# demand Apache Cassandra (CQL) and Prometheus. Everything binds 127.0.0.1.
#
#   deploy/local/stack.sh install          install pinned tools and apt packages (skips what is there)
#   deploy/local/stack.sh start            install, then start what is not running; waits until ready
#   deploy/local/stack.sh stop             stop everything this script started (SIGTERM, as in production)
#   deploy/local/stack.sh status           one line per component
#   deploy/local/stack.sh env              print the endpoints as EIP_* variables
#   deploy/local/stack.sh start-broker | stop-broker    the broker alone (the fault tests restart it)
#   deploy/local/stack.sh start-cql | stop-cql          the CQL server alone
#   deploy/local/stack.sh install-kafka | install-cql   fetch one Java server alone
#
# Settings (environment):
#   EIP_STATE_DIR        logs, pids and data             (default: <repo>/.eip-local)
#   EIP_TOOLS_DIR        installed tools (cached)         (default: ~/.cache/eip-tools)
#   EIP_KAFKA_PORT       broker port                      (default: 19092)
#   EIP_KAFKA_CONTROLLER_PORT  KRaft controller port      (default: broker port + 1)
#   EIP_KAFKA_HEAP       broker JVM heap                  (default: 1g)
#   EIP_REGISTRY_PORT    registry port                    (default: 18081)
#   EIP_CQL              1 to install and start Cassandra with `start` (default: 0)
#   EIP_CQL_PORT         Cassandra's CQL port             (default: 19042)
#   EIP_CQL_STORAGE_PORT Cassandra's internode port       (default: 17000)
#   EIP_CQL_HEAP         Cassandra JVM heap               (default: 1g)
#   EIP_PROMETHEUS_PORT  Prometheus port                  (default: 19090)
#   EIP_PROMETHEUS       1 to install and start Prometheus (default: 0)
#   EIP_SCRAPE_TARGETS   comma-separated host:port list Prometheus scrapes (default: 127.0.0.1:9464)
#
# Running any command twice is harmless.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/deploy/local
STATE=${EIP_STATE_DIR:-$ROOT/.eip-local}
TOOLS=${EIP_TOOLS_DIR:-$HOME/.cache/eip-tools}
KAFKA_PORT=${EIP_KAFKA_PORT:-19092}
CONTROLLER_PORT=${EIP_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_HEAP=${EIP_KAFKA_HEAP:-1g}
REGISTRY_PORT=${EIP_REGISTRY_PORT:-18081}
CQL=${EIP_CQL:-0}
CQL_PORT=${EIP_CQL_PORT:-19042}
CQL_STORAGE_PORT=${EIP_CQL_STORAGE_PORT:-17000}
CQL_HEAP=${EIP_CQL_HEAP:-1g}
PROM_PORT=${EIP_PROMETHEUS_PORT:-19090}
PROMETHEUS=${EIP_PROMETHEUS:-0}
SCRAPE_TARGETS=${EIP_SCRAPE_TARGETS:-127.0.0.1:9464}

KAFKA_VERSION=4.4.0
CASSANDRA_VERSION=5.0.6
RIVVEN_VERSION=0.0.22
KAFKA_HOME=$TOOLS/kafka-$KAFKA_VERSION
CASSANDRA_HOME=$TOOLS/cassandra-$CASSANDRA_VERSION

export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    # apt_install <command> <package>: installs <package> when <command> is missing.
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    apt_install_package "$pkg"
}

apt_install_package() {
    local pkg=$1
    [ "$(id -u)" = 0 ] || die "the Debian package $pkg is missing (installing it needs root)"
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

java_17() {
    # Sets JAVA to a Java 17 runtime: Kafka 4 needs 17 or newer, and Cassandra 5.0 supports 11
    # and 17 only, so both run on 17. Debian's is installed when there is none.
    JAVA=
    local candidate major
    for candidate in "${EIP_JAVA:-}" "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture 2>/dev/null)/bin/java" \
        "$(command -v java 2>/dev/null)"; do
        [ -n "$candidate" ] && [ -x "$candidate" ] || continue
        major=$("$candidate" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
        if [ "$major" = 17 ]; then JAVA=$candidate; return 0; fi
    done
    apt_install_package openjdk-17-jre-headless
    JAVA="/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)/bin/java"
    [ -x "$JAVA" ] || die "no Java 17 runtime after installing openjdk-17-jre-headless (set EIP_JAVA to one)"
}

maven_server() {
    # maven_server <name> <pom dir> <home> <property=version>: the pinned server artifact and its
    # runtime dependencies from Maven Central into <home>/lib. Skipped when <home> was made from
    # this very pom; otherwise fetched into a temporary directory and moved into place whole, so
    # an interrupted fetch never leaves a half-filled lib/ behind.
    local name=$1 pom=$2 home=$3 version=$4
    local stamp
    stamp="$(sha256sum "$pom/pom.xml" | cut -d' ' -f1) $version"
    [ "$(cat "$home/.complete" 2>/dev/null)" = "$stamp" ] && return 0
    apt_install mvn maven
    log "fetching $name ($version) and its dependencies from Maven Central into $home"
    local tmp="$home.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/lib"
    # -U: a download that failed earlier is tried again rather than remembered as missing.
    mvn -B -q -U -f "$pom/pom.xml" -Dmaven.repo.local="$TOOLS/maven" "-D$version" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/lib" \
        >"$STATE/logs/install-$name.log" 2>&1 \
        || { rm -rf "$tmp"; tail -20 "$STATE/logs/install-$name.log" >&2; die "fetching $name with Maven failed"; }
    echo "$stamp" >"$tmp/.complete"
    rm -rf "$home"
    mv "$tmp" "$home"
}

installed() {
    # installed <name> <home>: dies with the command to run when a Java server is not installed.
    [ -f "$2/.complete" ] || die "$1 is not installed in $2: run deploy/local/stack.sh install first"
}

install() {
    mkdir -p "$STATE/logs" "$TOOLS"
    apt_install curl curl
    apt_install gcc gcc
    apt_install make make
    apt_install perl perl
    apt_install python3 python3
    command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"
    java_17
    maven_server kafka "$HERE/kafka" "$KAFKA_HOME" "kafka.version=$KAFKA_VERSION"
    cargo_tool rivven-schema "$RIVVEN_VERSION" rivven-schema
    if [ "$CQL" = 1 ]; then install_cql; fi
    if [ "$PROMETHEUS" = 1 ]; then
        apt_install prometheus prometheus
    fi
}

install_cql() {
    mkdir -p "$STATE/logs" "$TOOLS"
    java_17
    maven_server cassandra "$HERE/cassandra" "$CASSANDRA_HOME" "cassandra.version=$CASSANDRA_VERSION"
}

install_peer() {
    # The Kafka Streams peer of `make bench` (tests/benches/peers/kafka-streams): its jars from
    # Maven Central, its source compiled with the JDK's javac. Prints the Java to run it with
    # and its classpath, as shell assignments.
    mkdir -p "$STATE/logs" "$TOOLS"
    java_17
    apt_install javac openjdk-17-jdk-headless
    local home=$TOOLS/kafka-streams-peer src=$ROOT/tests/benches/peers/kafka-streams
    maven_server kafka-streams-peer "$src" "$home" "peer.version=1"
    rm -rf "$home/classes"
    javac -d "$home/classes" -cp "$home/lib/*" "$src"/src/eip/peer/*.java >&2 \
        || die "compiling the Kafka Streams peer failed"
    echo "EIP_JAVA='$JAVA'"
    echo "EIP_PEER_CLASSPATH='$home/classes:$home/lib/*'"
}

marker() {
    # marker <name>: a string only that component's command line holds, so a pid file left by a
    # reboot (its pid now another process's) is never taken for the component.
    case "$1" in
        kafka) echo "-Deip.listener=127.0.0.1:$KAFKA_PORT " ;;
        cassandra) echo "-Deip.cql=127.0.0.1:$CQL_PORT " ;;
        registry) echo "rivven-schema" ;;
        prometheus) echo "prometheus" ;;
    esac
}

alive() {
    [ -f "$STATE/$1.pid" ] || return 1
    local pid; pid=$(cat "$STATE/$1.pid")
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(marker "$1")"
}

wait_for() {
    # wait_for <name> <seconds> <command...>: polls the command until it succeeds.
    local name=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || { tail -20 "$STATE/logs/$name.log" >&2; die "$name exited during startup"; }
        [ $SECONDS -lt $deadline ] || die "$name not ready after ${secs}s (see $STATE/logs/$name.log)"
        sleep 0.2
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

kafka_config() {
    # The broker's configuration, written afresh on every start from the current ports.
    cat >"$STATE/kafka/server.properties" <<EOF
# Written by deploy/local/stack.sh: one node that is both broker and KRaft controller.
process.roles=broker,controller
node.id=1
# A static quorum of this one node: the voter's address comes from this file, not from the
# formatted metadata, so the ports may change between starts on the same data.
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$STATE/data/kafka
# Topics are created explicitly (eipctl topics create, the processors' own admin calls), as in
# production: a producer must not create a topic by sending to a misspelt name.
auto.create.topics.enable=false
num.partitions=1
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start many short-lived groups; don't hold the first join back for 3 s.
group.initial.rebalance.delay.ms=0
# Fewer partitions for the internal topics than the 50 a cluster wants: each fresh broker
# creates them on its first group join or transaction.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
EOF
}

start_broker() {
    alive kafka && { log "broker already running on 127.0.0.1:$KAFKA_PORT"; return 0; }
    installed kafka "$KAFKA_HOME"
    mkdir -p "$STATE/kafka" "$STATE/data"
    kafka_config
    local cp="$KAFKA_HOME/lib/*"
    if [ ! -f "$STATE/data/kafka/meta.properties" ]; then
        log "formatting the broker's storage in $STATE/data/kafka"
        local cluster
        cluster=$("$JAVA" -cp "$cp" kafka.tools.StorageTool random-uuid 2>>"$STATE/logs/kafka.log" | tail -1)
        "$JAVA" -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" -cp "$cp" kafka.tools.StorageTool \
            format -t "$cluster" -c "$STATE/kafka/server.properties" \
            >>"$STATE/logs/kafka.log" 2>&1 || { tail -20 "$STATE/logs/kafka.log" >&2; die "formatting kafka storage failed"; }
    fi
    log "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (controller $CONTROLLER_PORT)"
    # -Deip.listener marks the process so benchmarks can find the broker of a given port.
    (exec setsid "$JAVA" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" \
        -Deip.listener="127.0.0.1:$KAFKA_PORT" \
        -cp "$cp" kafka.Kafka "$STATE/kafka/server.properties" \
        >>"$STATE/logs/kafka.log" 2>&1 </dev/null) &
    echo $! >"$STATE/kafka.pid"
    wait_for kafka 90 python3 "$HERE/ready.py" kafka 127.0.0.1 "$KAFKA_PORT"
}

start_registry() {
    alive registry && { log "registry already running on 127.0.0.1:$REGISTRY_PORT"; return 0; }
    log "starting registry on 127.0.0.1:$REGISTRY_PORT"
    (exec setsid rivven-schema serve --host 127.0.0.1 --port "$REGISTRY_PORT" \
        >>"$STATE/logs/registry.log" 2>&1 </dev/null) &
    echo $! >"$STATE/registry.pid"
    wait_for registry 30 curl -fsS "http://127.0.0.1:$REGISTRY_PORT/subjects"
}

start_cql() {
    alive cassandra && { log "cassandra already running on 127.0.0.1:$CQL_PORT"; return 0; }
    installed cassandra "$CASSANDRA_HOME"
    mkdir -p "$STATE/data/cassandra" "$STATE/cassandra/triggers"
    local lib=$CASSANDRA_HOME/lib
    # Cassandra locks its whole heap in memory (mlockall) when it may. These machines have no
    # swap, so that only makes every page resident: take away root's capability to lock, and
    # set the lock limit to 0 (where it is unlimited, no capability is needed).
    local wrap=()
    if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then wrap=(setpriv --bounding-set=-ipc_lock); fi
    log "starting cassandra $CASSANDRA_VERSION on 127.0.0.1:$CQL_PORT (internode $CQL_STORAGE_PORT)"
    # The --add-exports/--add-opens list is Cassandra's own conf/jvm17-server.options: without
    # it the node can't reach the JDK internals it uses and stops at startup.
    (ulimit -l 0; exec setsid "${wrap[@]}" "$JAVA" -Xms"$CQL_HEAP" -Xmx"$CQL_HEAP" -Xss256k \
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m \
        -XX:+UseThreadPriorities -XX:+ExitOnOutOfMemoryError -XX:+PerfDisableSharedMem \
        -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true \
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
        --add-exports java.sql/java.sql=ALL-UNNAMED \
        --add-exports java.base/java.lang.ref=ALL-UNNAMED \
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
        --add-opens java.base/java.lang.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
        --add-opens java.base/java.io=ALL-UNNAMED \
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
        --add-opens java.base/java.lang=ALL-UNNAMED \
        --add-opens java.base/java.util=ALL-UNNAMED \
        -Dio.netty.tryReflectionSetAccessible=true -Dchronicle.analytics.disable=true \
        -javaagent:"$(ls "$lib"/jamm-*.jar | head -1)" \
        -Dcassandra-foreground=yes -Deip.cql="127.0.0.1:$CQL_PORT" \
        -Dcassandra.config="file://$HERE/cassandra/cassandra.yaml" \
        -Dcassandra.storagedir="$STATE/data/cassandra" \
        -Dcassandra.logdir="$STATE/logs" \
        -Dcassandra.triggers_dir="$STATE/cassandra/triggers" \
        -Dlogback.configurationFile="file://$HERE/cassandra/logback.xml" \
        -Dcassandra.native_transport_port="$CQL_PORT" \
        -Dcassandra.storage_port="$CQL_STORAGE_PORT" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000 \
        -Dcassandra.superuser_setup_delay_ms=0 -Dcassandra.shutdown_announce_in_ms=0 \
        -Dcassandra.memtable_row_overhead_computation_step=100 \
        -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon \
        >>"$STATE/logs/cassandra.log" 2>&1 </dev/null) &
    echo $! >"$STATE/cassandra.pid"
    wait_for cassandra 120 python3 "$HERE/ready.py" cql 127.0.0.1 "$CQL_PORT"
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
    # stop_one <name> [seconds]: SIGTERM, the graceful stop production uses; SIGKILL only if it
    # has not exited after <seconds> (default 10).
    local name=$1 secs=${2:-10}
    alive "$name" || { rm -f "$STATE/$name.pid"; return 0; }
    local pid; pid=$(cat "$STATE/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop within ${secs}s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
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
    start) install; start_broker; start_registry
           if [ "$CQL" = 1 ]; then start_cql; fi
           start_prometheus
           log "ready: kafka 127.0.0.1:$KAFKA_PORT, registry http://127.0.0.1:$REGISTRY_PORT" ;;
    # A broker's controlled shutdown of one node takes a few seconds; a minute is generous.
    stop) stop_one prometheus; stop_one registry; stop_one cassandra 60; stop_one kafka 60 ;;
    stop-broker) stop_one kafka 60 ;;
    start-broker) apt_install python3 python3; java_17; start_broker ;;
    install-kafka) java_17; maven_server kafka "$HERE/kafka" "$KAFKA_HOME" "kafka.version=$KAFKA_VERSION" ;;
    install-cql) install_cql ;;
    install-peer) install_peer ;;
    # The dashboard test drives the saga monitor's page in headless Chromium (Debian's).
    install-chromium) apt_install chromium chromium ;;
    start-cql) apt_install python3 python3; install_cql; start_cql ;;
    stop-cql) stop_one cassandra 60 ;;
    status) status_one kafka "127.0.0.1:$KAFKA_PORT (kafka $KAFKA_VERSION)"
            status_one registry "http://127.0.0.1:$REGISTRY_PORT"
            status_one cassandra "127.0.0.1:$CQL_PORT (cassandra $CASSANDRA_VERSION)"
            status_one prometheus "http://127.0.0.1:$PROM_PORT" ;;
    env) echo "EIP_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
         echo "EIP_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT"
         echo "EIP_CQL_NODES=127.0.0.1:$CQL_PORT"
         echo "EIP_RIVVEN_BIN=$TOOLS/bin/rivven-schema" ;;
    *) die "unknown command $cmd (install|start|stop|status|env|start-broker|stop-broker|start-cql|stop-cql|install-kafka|install-cql|install-peer)" ;;
esac
