# A PostgreSQL cluster of the run's own for the benchmark scripts (sourced, not run): Debian's
# newest, as the postgres user when root, in a folder under $DATA, on 127.0.0.1. Needs DATA and
# PIDS from the script that sources it; the postmaster joins PIDS, so it stops on any exit.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Starts the cluster on port $1 (its folder: $PGDIR).
start_postgres() {
  # The postgres user needs to reach its folder inside the run's.
  chmod 711 "$DATA"; PGDIR="$DATA/pg"; mkdir -p "$PGDIR"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDIR"; fi
  as_postgres "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  as_postgres "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
    -o "-p $1 -k $PGDIR -c listen_addresses=127.0.0.1" start >/dev/null
  PIDS+=("$(head -1 "$PGDIR/data/postmaster.pid")")
}
stop_postgres() { as_postgres "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null; }
