#!/usr/bin/env bash
# The local stack without Docker: one Apache Kafka node (KRaft, broker and controller in one JVM)
# and one PostgreSQL server, both under $STACK_DIR, on configurable loopback ports.
#
#   dev/stack.sh setup|start|stop|status|logs [kafka|postgres]
#
# A separate three-node Kafka cluster (KRaft, each node broker and controller) for the replication fault
# test, beside the single node and sharing the PostgreSQL above: brokers on 127.0.0.1:29092/29094/29096,
# controllers on 29093/29095/29097, data under $STACK_DIR/cluster. N: one node (1-3), default all three.
#
#   dev/stack.sh cluster-start|cluster-stop [N] | cluster-status | cluster-logs N
#
# Every verb is safe to repeat: start skips what already runs, stop skips what is stopped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TICKFLOW_CACHE:-$ROOT/.cache}"
STACK_DIR="${STACK_DIR:-$CACHE/stack}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
# Kafka's own default (kafka-server-start.sh): 1 GB, fixed. ~180 MB stays live (128 MB of it the log cleaner's
# dedupe buffer), near G1's marking threshold in a 512 MB heap: 8x the young collections and a marking cycle every
# few seconds under load, each a dip in what the two cores give the pipeline (bench/README.md, session 26).
KAFKA_HEAP="${KAFKA_HEAP:-1g}"
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
  # shellcheck disable=SC2086  # KAFKA_JVM_EXTRA: extra flags, word-split on purpose (empty for the single node)
  exec java -Xms"${KAFKA_HEAP_MIN:-$KAFKA_HEAP}" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true ${KAFKA_JVM_EXTRA:-} \
    -Dlog4j2.configurationFile="$ROOT/dev/kafka/log4j2.properties" -Dkafka.logfile="$logfile" \
    -cp "$KAFKA_LIBS/*" "$@"
}

# Something already answers on the port: another checkout's stack, say, whose pid files this one cannot see.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

refuse_taken_port() {
  log "127.0.0.1:$2 is already in use by a process this checkout did not start (another checkout's stack?):"
  log "stop it there (dev/stack.sh stop), or give this one other ports ($1=...)"
  exit 1
}

kafka_pid() { [[ -f "$KAFKA_DIR/pid" ]] && kill -0 "$(cat "$KAFKA_DIR/pid")" 2>/dev/null && cat "$KAFKA_DIR/pid"; }

kafka_start() {
  kafka_setup
  mkdir -p "$KAFKA_DIR" "$LOG_DIR"
  if kafka_pid >/dev/null; then log "kafka already running (pid $(kafka_pid)) on 127.0.0.1:$KAFKA_PORT"; return; fi
  port_taken "$KAFKA_PORT" && refuse_taken_port KAFKA_PORT "$KAFKA_PORT"
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
  port_taken "$PG_PORT" && refuse_taken_port PG_PORT "$PG_PORT"
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

# ---------------------------------------------------------------- the three-node cluster (cluster-* verbs)
CLUSTER_DIR="$STACK_DIR/cluster"
CLUSTER_BASE_PORT="${CLUSTER_BASE_PORT:-29092}"   # node i: broker BASE+2(i-1), controller BASE+2(i-1)+1
CLUSTER_HEAP="${CLUSTER_HEAP:-256m}"
# Three JVMs starting at once on two shared cores: the C1 compiler only and one CPU's worth of GC and
# compiler threads start them faster; a test cluster does not need the C2-compiled peak throughput.
CLUSTER_JVM_EXTRA="${CLUSTER_JVM_EXTRA:--XX:TieredStopAtLevel=1 -XX:ActiveProcessorCount=1}"
CLUSTER_NODES=(1 2 3)

node_broker_port() { echo $((CLUSTER_BASE_PORT + 2 * ($1 - 1))); }
node_controller_port() { echo $((CLUSTER_BASE_PORT + 2 * ($1 - 1) + 1)); }
node_dir() { echo "$CLUSTER_DIR/node$1"; }
node_pid() { local f; f="$(node_dir "$1")/pid"; [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }
cluster_bootstrap() { local n out=(); for n in "${CLUSTER_NODES[@]}"; do out+=("127.0.0.1:$(node_broker_port "$n")"); done
                      (IFS=,; echo "${out[*]}"); }
cluster_data_dirs() { local n out=(); for n in "${CLUSTER_NODES[@]}"; do out+=("$(node_dir "$n")/data"); done
                      (IFS=,; echo "${out[*]}"); }

cluster_node_start() {
  local n="$1" dir voters="" m cid
  dir="$(node_dir "$n")"
  if node_pid "$n" >/dev/null; then log "cluster node $n already running (pid $(node_pid "$n"))"; return; fi
  for m in "${CLUSTER_NODES[@]}"; do voters+="${voters:+,}$m@127.0.0.1:$(node_controller_port "$m")"; done
  mkdir -p "$dir" "$CLUSTER_DIR/logs"
  sed -e "s#@NODE_ID@#$n#g" -e "s#@VOTERS@#$voters#g" -e "s#@BROKER_PORT@#$(node_broker_port "$n")#g" \
      -e "s#@CONTROLLER_PORT@#$(node_controller_port "$n")#g" -e "s#@DATA_DIR@#$dir/data#g" \
      "$ROOT/dev/kafka/cluster.properties" > "$dir/server.properties"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    # One cluster id for the three nodes; the static voters list needs no --initial-controllers.
    [[ -f "$CLUSTER_DIR/cluster.id" ]] || \
      (kafka_java "$CLUSTER_DIR/logs/storage.log" kafka.tools.StorageTool random-uuid) > "$CLUSTER_DIR/cluster.id"
    cid="$(cat "$CLUSTER_DIR/cluster.id")"
    log "formatting cluster node $n storage in $dir/data (cluster id $cid)"
    (kafka_java "$CLUSTER_DIR/logs/storage.log" kafka.tools.StorageTool format -t "$cid" \
      -c "$dir/server.properties" >/dev/null)
  fi
  log "starting cluster node $n: broker 127.0.0.1:$(node_broker_port "$n"), controller :$(node_controller_port "$n") (heap $CLUSTER_HEAP)"
  (KAFKA_HEAP="$CLUSTER_HEAP" KAFKA_HEAP_MIN=128m KAFKA_JVM_EXTRA="$CLUSTER_JVM_EXTRA" kafka_java "$CLUSTER_DIR/logs/node$n.log" kafka.Kafka "$dir/server.properties") \
    > "$CLUSTER_DIR/logs/node$n.out" 2>&1 &
  echo $! > "$dir/pid"
}

cluster_start() {
  local nodes=("$@") n leader started
  [[ ${#nodes[@]} -gt 0 ]] || nodes=("${CLUSTER_NODES[@]}")
  kafka_setup
  started=$(date +%s%N)
  for n in "${nodes[@]}"; do cluster_node_start "$n"; done   # all at once: a controller needs a majority
  if ! leader="$("$ROOT/dev/kafka/cluster_ready.py" "${KAFKA_START_TIMEOUT:-240}" "${#CLUSTER_NODES[@]}" \
                  "$(cluster_bootstrap)" "$(cluster_data_dirs)")"; then
    log "the cluster did not come up; last lines of each node's log:"
    for n in "${nodes[@]}"; do tail -8 "$CLUSTER_DIR/logs/node$n.log" >&2 || true; done
    exit 1
  fi
  log "cluster ready in $(( ($(date +%s%N) - started) / 1000000 )) ms: every broker sees 3," \
      "metadata quorum leader node $leader; bootstrap $(cluster_bootstrap)"
}

cluster_stop() {
  local nodes=("$@") n pid pids=()
  [[ ${#nodes[@]} -gt 0 ]] || nodes=("${CLUSTER_NODES[@]}")
  for n in "${nodes[@]}"; do
    if pid="$(node_pid "$n")"; then log "stopping cluster node $n (pid $pid)"; kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "pid $pid did not stop in 30 s, killing"; kill -KILL "$pid" || true; }
  done
  for n in "${nodes[@]}"; do rm -f "$(node_dir "$n")/pid"; done
}

# Exit status 0 only when all three nodes run.
cluster_status() {
  local n pid up=0
  for n in "${CLUSTER_NODES[@]}"; do
    if pid="$(node_pid "$n")"; then
      up=$((up + 1)); echo "cluster node $n: running (pid $pid) 127.0.0.1:$(node_broker_port "$n")"
    else
      echo "cluster node $n: stopped"
    fi
  done
  echo "bootstrap: $(cluster_bootstrap)"
  [[ $up == "${#CLUSTER_NODES[@]}" ]]
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
  cluster-start)  shift; cluster_start "$@" ;;
  cluster-stop)   shift; cluster_stop "$@" ;;
  cluster-status) cluster_status ;;
  cluster-logs)   tail -n 50 "$CLUSTER_DIR/logs/node${2:-1}.log" ;;
  *) echo "usage: $0 setup|start|stop|status|logs [kafka|postgres]" >&2
     echo "       $0 cluster-start|cluster-stop [1|2|3] | cluster-status | cluster-logs 1|2|3" >&2; exit 2 ;;
esac
