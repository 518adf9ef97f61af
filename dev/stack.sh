#!/usr/bin/env bash
# The local stack without Docker: one Apache Kafka node (KRaft, broker and controller in one JVM)
# and one PostgreSQL server, both under $STACK_DIR, on configurable loopback ports.
#
#   dev/stack.sh setup|start|stop|status|logs [kafka|postgres]
#
# Every verb is safe to repeat: start skips what already runs, stop skips what is stopped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TICKFLOW_CACHE:-$ROOT/.cache}"
STACK_DIR="${STACK_DIR:-$CACHE/stack}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
PG_PORT="${PG_PORT:-15432}"
PG_USER="${PG_USER:-tickflow}"
PG_DB="${PG_DB:-tickflow}"
KAFKA_LIBS="$CACHE/kafka/libs"
KAFKA_DIR="$STACK_DIR/kafka"
PG_DIR="$STACK_DIR/postgres"
LOG_DIR="$STACK_DIR/logs"
OS_USER="${PG_OS_USER:-postgres}"   # PostgreSQL refuses to run as root

log() { printf '[stack] %s\n' "$*" >&2; }

pg_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  [[ -n "$d" && -x "$d/postgres" ]] || { log "PostgreSQL server not found: apt-get install postgresql"; exit 1; }
  echo "$d"
}

as_pg() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u "$OS_USER" -- "$@"; else "$@"; fi
}

kafka_setup() {
  if [[ ! -f "$KAFKA_LIBS/.complete" ]]; then
    log "resolving Kafka jars from Maven Central into $KAFKA_LIBS"
    rm -rf "$KAFKA_LIBS"
    mvn -q -B -f "$ROOT/dev/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
    touch "$KAFKA_LIBS/.complete"
  fi
}

# Runs the JVM with exec: call it in a subshell, so the pid of a background call is the JVM's own.
kafka_java() {
  local logfile="$1"; shift
  exec java -Xms128m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/dev/kafka/log4j2.properties" -Dkafka.logfile="$logfile" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_pid() { [[ -f "$KAFKA_DIR/pid" ]] && kill -0 "$(cat "$KAFKA_DIR/pid")" 2>/dev/null && cat "$KAFKA_DIR/pid"; }

kafka_start() {
  kafka_setup
  mkdir -p "$KAFKA_DIR" "$LOG_DIR"
  if kafka_pid >/dev/null; then log "kafka already running (pid $(kafka_pid)) on 127.0.0.1:$KAFKA_PORT"; return; fi
  sed -e "s#@KAFKA_PORT@#$KAFKA_PORT#g" -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" \
      -e "s#@DATA_DIR@#$KAFKA_DIR/data#g" "$ROOT/dev/kafka/server.properties" > "$KAFKA_DIR/server.properties"
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    log "formatting Kafka storage in $KAFKA_DIR/data"
    local cid
    cid="$(kafka_java "$LOG_DIR/kafka-storage.log" kafka.tools.StorageTool random-uuid)"
    (kafka_java "$LOG_DIR/kafka-storage.log" kafka.tools.StorageTool format -t "$cid" \
      -c "$KAFKA_DIR/server.properties" --standalone >/dev/null)
  fi
  log "starting kafka on 127.0.0.1:$KAFKA_PORT (heap $KAFKA_HEAP, log $LOG_DIR/kafka.log)"
  (kafka_java "$LOG_DIR/kafka.log" kafka.Kafka "$KAFKA_DIR/server.properties") > "$LOG_DIR/kafka.out" 2>&1 &
  echo $! > "$KAFKA_DIR/pid"
  "$ROOT/dev/wait_for.py" kafka "127.0.0.1:$KAFKA_PORT" "${KAFKA_START_TIMEOUT:-240}" || {
    log "kafka did not answer; last lines of $LOG_DIR/kafka.log:"; tail -20 "$LOG_DIR/kafka.log" >&2 || true; exit 1; }
  log "kafka ready"
}

kafka_stop() {
  local pid
  if pid="$(kafka_pid)"; then
    log "stopping kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "kafka did not stop in 30 s, killing"; kill -KILL "$pid" || true; }
  fi
  rm -f "$KAFKA_DIR/pid"
}

# PostgreSQL runs as $OS_USER, who must reach its data folder: a clone under a private folder (mktemp -d
# is mode 700) is not reachable, so the cluster then lives in /tmp/tickflow-postgres-$PG_PORT instead.
pg_pick_dir() {
  if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PG_DIR"
    chown "$OS_USER" "$PG_DIR"
    if ! runuser -u "$OS_USER" -- test -w "$PG_DIR" 2>/dev/null; then
      PG_DIR="/tmp/tickflow-postgres-$PG_PORT"
      mkdir -p "$PG_DIR"; chown "$OS_USER" "$PG_DIR"; chmod 700 "$PG_DIR"
    fi
  fi
}

pg_running() { [[ -f "$PG_DIR/data/postmaster.pid" ]] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; }

pg_start() {
  local bin; bin="$(pg_bin)"
  mkdir -p "$LOG_DIR"
  if pg_running; then log "postgres already running on 127.0.0.1:$PG_PORT"; return; fi
  if [[ ! -f "$PG_DIR/data/PG_VERSION" ]]; then
    log "initialising PostgreSQL cluster in $PG_DIR/data"
    as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$PG_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
max_connections = 200
shared_buffers = 256MB
synchronous_commit = on
fsync = on
# An ingestion workload writes WAL fast: with the default 1GB a checkpoint started every 40-80 s under the
# benchmark, each followed by a burst of full-page writes. Checkpoints every 15 min instead.
max_wal_size = 8GB
checkpoint_timeout = 15min
CONF
  fi
  log "starting postgres on 127.0.0.1:$PG_PORT (log $PG_DIR/postgres.log)"
  as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -o "-p $PG_PORT" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null
  as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qtAc \
    "SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'" | grep -q 1 || \
    as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE ROLE $PG_USER LOGIN SUPERUSER"
  as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qtAc \
    "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1 || \
    as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE $PG_DB OWNER $PG_USER"
  log "postgres ready: postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
}

pg_stop() {
  # mode: fast (default, clean) or immediate (fault tests)
  local mode="${1:-fast}"
  if pg_running; then
    log "stopping postgres ($mode)"
    as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m "$mode" -w -t 60 stop >/dev/null
  fi
}

status() {
  if pid="$(kafka_pid)"; then echo "kafka: running (pid $pid) 127.0.0.1:$KAFKA_PORT"; else echo "kafka: stopped"; fi
  if pg_running; then echo "postgres: running 127.0.0.1:$PG_PORT"; else echo "postgres: stopped"; fi
}

pg_pick_dir
verb="${1:-status}"; what="${2:-all}"
case "$verb" in
  setup)  kafka_setup; pg_bin >/dev/null ;;
  start)  [[ "$what" == postgres ]] || kafka_start; [[ "$what" == kafka ]] || pg_start ;;
  stop)   [[ "$what" == postgres ]] || kafka_stop; [[ "$what" == kafka ]] || pg_stop "${3:-fast}" ;;
  status) status ;;
  logs)   if [[ "$what" == postgres ]]; then tail -n 50 "$PG_DIR/postgres.log"; else tail -n 50 "$LOG_DIR/kafka.log"; fi ;;
  *) echo "usage: $0 setup|start|stop|status|logs [kafka|postgres]" >&2; exit 2 ;;
esac
