#!/usr/bin/env bash
# The test broker for weir's tests: Apache Kafka 4.x in KRaft mode (one node, broker and
# controller, on loopback), run from its jars on Maven Central; Java 17 and Maven are needed,
# nothing else. The default test broker; WEIR_TEST_BROKER=tansu selects tansu instead
# (scripts/tansu.sh, same commands, same output), which does not hide aborted transactions
# from read_committed readers (the exactly-once tests need Apache Kafka).
#
#   scripts/kafka.sh install   resolve the broker's jars once into $WEIR_KAFKA_HOME (Maven,
#                              scripts/kafka/pom.xml); a second run finds them and resolves nothing
#   scripts/kafka.sh start     format a fresh log directory, start the broker, wait for
#                              "Kafka Server started"; prints WEIR_KAFKA_BROKERS=127.0.0.1:PORT
#                              and WEIR_TEST_BROKER=kafka (also in $SERVICES/kafka.env)
#   scripts/kafka.sh stop      stop the broker this script started (by its PID file)
#   scripts/kafka.sh status    say whether it runs, and where
#   scripts/kafka.sh topic NAME [PARTITIONS] [compact]
#                              create a topic on the running broker unless it exists
#                              (default 4 partitions; `compact`: cleanup.policy=compact)
#
# Environment:
#   WEIR_TEST_BROKER     kafka (default) or tansu
#   WEIR_KAFKA_HOME      cached jars                     (default: $HOME/.cache/weir-kafka)
#   WEIR_SERVICES_DIR    PID, log, data and env files    (default: $PWD/.services)
#   WEIR_KAFKA_PORT      port to listen on               (default: a free loopback port)
#   WEIR_KAFKA_WAIT_SECS how long start waits at most    (default: 90)
#   WEIR_KAFKA_HEAP      the broker's -Xmx               (default: 384m)
#   WEIR_KAFKA_CLUSTER_ID the KRaft cluster id to format  (default: a random one)
#
# Typical use:   eval "$(scripts/kafka.sh start | sed "s/^/export /")"; cargo nextest run ...; scripts/kafka.sh stop
set -euo pipefail

case "${WEIR_TEST_BROKER:-kafka}" in
    kafka) ;;
    tansu) exec "$(dirname "${BASH_SOURCE[0]}")/tansu.sh" "$@" ;;
    *)
        echo "kafka.sh: WEIR_TEST_BROKER must be kafka or tansu, got '$WEIR_TEST_BROKER'" >&2
        exit 2
        ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/kafka/pom.xml"
KAFKA_HOME="${WEIR_KAFKA_HOME:-$HOME/.cache/weir-kafka}"
SERVICES="${WEIR_SERVICES_DIR:-$PWD/.services}"
PID_FILE="$SERVICES/kafka.pid"
LOG_FILE="$SERVICES/kafka.log"
ENV_FILE="$SERVICES/kafka.env"
DATA_DIR="$SERVICES/kafka-data"
WAIT_SECS="${WEIR_KAFKA_WAIT_SECS:-90}"
HEAP="${WEIR_KAFKA_HEAP:-384m}"
PACKAGE="org.apache.kafka:kafka_2.13"
SERVICE="kafka.sh"
# shellcheck source=scripts/service_lib.sh
. "$HERE/service_lib.sh"

# The jars of one pom: a directory named by the pom's hash, so a changed version resolves anew.
jar_dir() {
    echo "$KAFKA_HOME/jars-$(sha256sum "$POM" | cut -c1-16)"
}

cmd_install() {
    local dir
    dir="$(jar_dir)"
    if [ -f "$dir/.complete" ]; then
        echo "$dir"
        return
    fi
    command -v java >/dev/null 2>&1 || die "java (17 or newer) is needed to run Apache Kafka"
    command -v mvn >/dev/null 2>&1 || die "mvn is needed to resolve Apache Kafka's jars"
    echo "$SERVICE: resolving Apache Kafka's jars into $dir ..." >&2
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$dir.tmp" >"$dir.tmp.log" 2>&1; then
        rm -rf "$dir.tmp"
        die "could not resolve $PACKAGE from Maven Central (is it reachable?); see $dir.tmp.log"
    fi
    rm -f "$dir.tmp.log"
    touch "$dir.tmp/.complete"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    echo "$dir"
}

# A KRaft cluster id: 16 random bytes in URL-safe base64, drawn again while it starts with '-'
# as Apache Kafka's own Uuid.randomUuid does (one in 64 would, and the storage tool's parser
# takes "-t -xyz" for an option). WEIR_KAFKA_CLUSTER_ID overrides it.
cluster_id() {
    if [ -n "${WEIR_KAFKA_CLUSTER_ID:-}" ]; then
        echo "$WEIR_KAFKA_CLUSTER_ID"
        return
    fi
    "$(python_bin)" -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"):
        print(s)
        break'
}

# One node, broker and controller on loopback. Replication factor and min ISR 1 for the
# internal topics; no initial rebalance delay; session timeouts down to the tests' short ones,
# and short sessions for KIP-848's consumer protocol, whose timing the broker owns.
write_config() {
    local port="$1" cport="$2"
    cat >"$SERVICES/kafka-server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=500
group.consumer.min.session.timeout.ms=500
group.consumer.min.heartbeat.interval.ms=100
group.consumer.session.timeout.ms=6000
group.consumer.heartbeat.interval.ms=500
PROPS
    cat >"$SERVICES/kafka-log4j2.properties" <<'PROPS'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
PROPS
}

cmd_start() {
    local pid
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        [ -f "$ENV_FILE" ] || die "a broker runs (PID $pid) but $ENV_FILE is missing; run: $0 stop"
        echo "$SERVICE: broker already running (PID $pid)" >&2
        cat "$ENV_FILE"
        return
    fi
    local jars port cport
    jars="$(cmd_install)"
    port="${WEIR_KAFKA_PORT:-$(free_port)}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "WEIR_KAFKA_PORT must be a port number, got '$port'"
    port_open "$port" && die "127.0.0.1:$port is already in use (set WEIR_KAFKA_PORT to another port, or unset it)"
    cport="$(free_port)"
    while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
    mkdir -p "$SERVICES"
    rm -f "$ENV_FILE"
    rm -rf "$DATA_DIR"
    write_config "$port" "$cport"
    local java_opts=(-Xms128m "-Xmx$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1
        "-Dlog4j2.configurationFile=$SERVICES/kafka-log4j2.properties" -cp "$jars/*")
    : >"$LOG_FILE"
    java "${java_opts[@]}" kafka.tools.StorageTool format --standalone "--cluster-id=$(cluster_id)" \
        -c "$SERVICES/kafka-server.properties" >>"$LOG_FILE" 2>&1 \
        || { tail -n 20 "$LOG_FILE" >&2; die "formatting $DATA_DIR failed; see $LOG_FILE"; }
    # setsid: the broker does not get the caller's terminal signals (Ctrl-C in the test run),
    # only ours. (Without job control, as in a script, setsid does not fork, so $! is the
    # broker's own PID.)
    setsid java "${java_opts[@]}" kafka.Kafka "$SERVICES/kafka-server.properties" \
        >>"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local started=$SECONDS deadline=$((SECONDS + WAIT_SECS))
    until grep -q "Kafka Server started" "$LOG_FILE" && port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            echo "$SERVICE: Apache Kafka exited during start; last lines of $LOG_FILE:" >&2
            tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            kill "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            echo "$SERVICE: Apache Kafka did not start on 127.0.0.1:$port within ${WAIT_SECS}s; last lines of $LOG_FILE:" >&2
            tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
    printf 'WEIR_KAFKA_BROKERS=127.0.0.1:%s\nWEIR_TEST_BROKER=kafka\n' "$port" >"$ENV_FILE"
    echo "$SERVICE: Apache Kafka running (PID $pid, started in $((SECONDS - started)) s), log $LOG_FILE" >&2
    cat "$ENV_FILE"
}

cmd_stop() {
    stop_by_pid_file "Apache Kafka" 100
    rm -rf "$DATA_DIR"
}

# Creates topic $1 with $2 partitions (default 4) on the broker this script started, unless it
# exists; $3 = compact makes it a compacted topic (a checkpoint topic).
cmd_topic() {
    local name="${1:-}" partitions="${2:-4}" policy="${3:-}" jars brokers
    [ -n "$name" ] || die "usage: $0 topic NAME [PARTITIONS] [compact]"
    [[ "$partitions" =~ ^[0-9]+$ ]] || die "PARTITIONS must be a number, got '$partitions'"
    [ -z "$policy" ] || [ "$policy" = compact ] || die "the third argument can only be 'compact', got '$policy'"
    [ -n "$(running_pid)" ] && [ -f "$ENV_FILE" ] || die "no broker of this script runs; run: $0 start"
    brokers="$(sed -n 's/^WEIR_KAFKA_BROKERS=//p' "$ENV_FILE")"
    jars="$(cmd_install)"
    local extra=()
    [ "$policy" = compact ] && extra=(--config cleanup.policy=compact)
    java -Xmx128m -XX:TieredStopAtLevel=1 \
        -cp "$jars/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" --create \
        --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor 1 "${extra[@]}"
}

if [ "${1:-}" = topic ]; then
    shift
    cmd_topic "$@"
    exit
fi
service_main "$@"
