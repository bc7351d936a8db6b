# Sourced by .ci/run: start a throwaway PostgreSQL on loopback and export RETENTION_TEST_POSTGRES_URL.
# Installs PostgreSQL from the Debian packages when it is missing. If it cannot, the PostgreSQL tests are
# skipped and this says so.

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bin)" ]; then
  echo "ci: installing PostgreSQL from the Debian packages"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "ci: PostgreSQL could not be installed here; the store's PostgreSQL tests will be SKIPPED"
fi

if [ -n "$(pg_bin)" ]; then
  PG_BIN="$(pg_bin)"
  PG_DIR="$(mktemp -d /tmp/retention-pg.XXXXXX)"
  PG_PORT="${RETENTION_CI_PG_PORT:-55432}"
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$PG_DIR"
  as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U retention >/dev/null
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DIR -c fsync=off" start >/dev/null
  as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U retention retention_test
  export RETENTION_TEST_POSTGRES_URL="postgresql+psycopg://retention@127.0.0.1:$PG_PORT/retention_test"
  trap 'as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1; rm -rf "$PG_DIR"' EXIT
  echo "ci: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT for the store tests"
fi
