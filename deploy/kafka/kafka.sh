#!/usr/bin/env bash
# Native single-node KRaft Kafka broker for local runs and tests (no Docker).
#
#   deploy/kafka/kafka.sh fetch    resolve the broker jars with Maven into .cache/kafka/libs (cached)
#   deploy/kafka/kafka.sh start    format storage if needed, start, wait until it serves, print bootstrap
#   deploy/kafka/kafka.sh stop     SIGTERM, wait, SIGKILL after SOCIALPULSE_KAFKA_STOP_TIMEOUT
#   deploy/kafka/kafka.sh status   exit 0 and print bootstrap when running, exit 3 otherwise
#   deploy/kafka/kafka.sh reset    stop, then delete the data and logs of this state dir
#
# Environment (each broker = one state dir + one port pair, so several can run side by side):
#   SOCIALPULSE_KAFKA_HOME             state dir: rendered config, data/, logs/, pid (default .cache/kafka)
#   SOCIALPULSE_KAFKA_PORT             PLAINTEXT port on 127.0.0.1 (default 19092)
#   SOCIALPULSE_KAFKA_CONTROLLER_PORT  KRaft controller port (default PORT+1)
#   SOCIALPULSE_KAFKA_LIBS             jar dir shared by all brokers (default .cache/kafka/libs)
#   SOCIALPULSE_KAFKA_HEAP             JVM heap flags (default "-Xms256m -Xmx512m")
#   SOCIALPULSE_KAFKA_START_TIMEOUT    seconds to wait for the broker to serve (default 90)
#   SOCIALPULSE_KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
#   SOCIALPULSE_KAFKA_SASL_SSL_PORT    also serve SASL_SSL clients (SCRAM-SHA-256/512) on 127.0.0.1:PORT (default
#                                      none); needs the two settings below and SCRAM users to log in as
#   SOCIALPULSE_KAFKA_SSL_KEYSTORE     PKCS12 keystore holding that listener's key and certificate
#   SOCIALPULSE_KAFKA_SSL_KEYSTORE_PASSWORD  the keystore's password
#   SOCIALPULSE_KAFKA_SCRAM_USERS      SCRAM credentials stored when the storage is formatted, one StorageTool
#                                      --add-scram value a line, e.g. SCRAM-SHA-512=[name=alice,password=secret]
#   SOCIALPULSE_KAFKA_SERVER_PROPERTIES  key=value lines that replace or add to the rendered server.properties
#                                      (default none), e.g. auto.create.topics.enable=false
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

KAFKA_HOME="${SOCIALPULSE_KAFKA_HOME:-$REPO_ROOT/.cache/kafka}"
PORT="${SOCIALPULSE_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${SOCIALPULSE_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
LIBS="${SOCIALPULSE_KAFKA_LIBS:-$REPO_ROOT/.cache/kafka/libs}"
HEAP="${SOCIALPULSE_KAFKA_HEAP:--Xms256m -Xmx512m}"
START_TIMEOUT="${SOCIALPULSE_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${SOCIALPULSE_KAFKA_STOP_TIMEOUT:-30}"
SASL_SSL_PORT="${SOCIALPULSE_KAFKA_SASL_SSL_PORT:-}"
SCRAM_USERS="${SOCIALPULSE_KAFKA_SCRAM_USERS:-}"
SERVER_PROPERTIES="${SOCIALPULSE_KAFKA_SERVER_PROPERTIES:-}"

DATA_DIR="$KAFKA_HOME/data"
LOG_DIR="$KAFKA_HOME/logs"
CONFIG="$KAFKA_HOME/server.properties"
PID_FILE="$KAFKA_HOME/kafka.pid"
BOOTSTRAP_FILE="$KAFKA_HOME/bootstrap"

log() { echo "kafka: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

kafka_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$SCRIPT_DIR/pom.xml"
}

cmd_fetch() {
    local version stamp
    version="$(kafka_version)"
    [[ -n "$version" ]] || die "no <kafka.version> in $SCRIPT_DIR/pom.xml"
    stamp="$LIBS/.fetched"
    # The stamp holds the pom hash, so editing the pom (version bump, extra jar) refetches.
    local want
    want="$(sha256sum "$SCRIPT_DIR/pom.xml" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$LIBS/kafka_2.13-$version.jar" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (Maven 3.8+ and Java 17+ are required)"
    mkdir -p "$(dirname "$LIBS")"
    # Two concurrent fetches (setup + a test run) must not interleave in the same dir. The lock lives in
    # a subshell so its fd is not inherited by a broker started later from this shell.
    (
        flock 9
        if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
            exit 0
        fi
        log "fetching Kafka $version jars with Maven into $LIBS"
        # A version change must not leave old jars on the classpath.
        rm -rf "$LIBS"
        mvn_log="$(dirname "$LIBS")/fetch.log"
        mvn -B -f "$SCRIPT_DIR/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$mvn_log" 2>&1 || {
            tail -n 30 "$mvn_log" >&2
            die "Maven could not resolve the Kafka jars (full log: $mvn_log)"
        }
        [[ -f "$LIBS/kafka_2.13-$version.jar" ]] || die "kafka_2.13-$version.jar missing after fetch"
        echo "$want" >"$stamp"
    ) 9>"$(dirname "$LIBS")/.fetch.lock"
}

# A broker that exited but is not reaped yet (its parent shell is gone) is a zombie: kill -0 still works.
alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ -n "$pid" ]] && alive "$pid" || return 1
    # Guard against PID reuse: the process must be the broker of *this* state dir.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $CONFIG" || return 1
    echo "$pid"
}

# The SASL_SSL listener. The controller and inter-broker listeners stay PLAINTEXT: one node on loopback,
# where only clients need to authenticate.
sasl_ssl_properties() {
    local keystore="${SOCIALPULSE_KAFKA_SSL_KEYSTORE:-}" password="${SOCIALPULSE_KAFKA_SSL_KEYSTORE_PASSWORD:-}"
    [[ -n "$keystore" && -n "$password" ]] ||
        die "SOCIALPULSE_KAFKA_SASL_SSL_PORT needs SOCIALPULSE_KAFKA_SSL_KEYSTORE and _KEYSTORE_PASSWORD"
    [[ -f "$keystore" ]] || die "SOCIALPULSE_KAFKA_SSL_KEYSTORE=$keystore: no such file"
    local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
    printf '%s\n' \
        "listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT" \
        "advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT" \
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL" \
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256" \
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram" \
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram" \
        "listener.name.sasl_ssl.ssl.keystore.type=PKCS12" \
        "listener.name.sasl_ssl.ssl.keystore.location=$keystore" \
        "listener.name.sasl_ssl.ssl.keystore.password=$password"
}

# Usage: set_properties FILE <key=value lines: each replaces the file's line for its key, or is appended.
set_properties() {
    local line key
    while IFS= read -r line; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        [[ "$line" == *=* ]] || die "not a key=value property: $line"
        key="${line%%=*}"
        # Java would take the last of two lines; one line per key keeps the rendered file honest to read.
        awk -v key="$key=" 'index($0, key) != 1' "$1" >"$1.tmp"
        mv -f "$1.tmp" "$1"
        printf '%s\n' "$line" >>"$1"
    done
}

render_config() {
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    sed -e "s|@BROKER_PORT@|$PORT|g" \
        -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
        -e "s|@DATA_DIR@|$DATA_DIR|g" \
        "$SCRIPT_DIR/server.properties" >"$CONFIG"
    if [[ -n "$SASL_SSL_PORT" ]]; then
        sasl_ssl_properties | set_properties "$CONFIG"
    fi
    set_properties "$CONFIG" <<<"$SERVER_PROPERTIES"
}

# Usage: java_cmd [launcher...] -- main-class args...; execs, so call it in a subshell.
java_cmd() {
    local launcher=()
    while [[ "$1" != "--" ]]; do
        launcher+=("$1")
        shift
    done
    shift
    # shellcheck disable=SC2086 # HEAP is a list of flags
    exec "${launcher[@]}" java $HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$SCRIPT_DIR/log4j2.yaml" -Dkafka.logs.dir="$LOG_DIR" \
        -cp "$LIBS/*" "$@"
}

format_storage() {
    [[ -f "$DATA_DIR/meta.properties" ]] && return 0
    local cluster_id
    # Same shape as StorageTool random-uuid (base64url of 16 random bytes) without a second JVM start.
    cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    cluster_id="A${cluster_id:1}" # an id starting with '-' would parse as an option
    # SCRAM credentials live in the cluster metadata: stored at format, before any listener takes logins.
    local scram=() entry
    while IFS= read -r entry; do
        [[ -n "$entry" ]] && scram+=(--add-scram "$entry")
    done <<<"$SCRAM_USERS"
    (java_cmd -- kafka.tools.StorageTool format --standalone --ignore-formatted \
        --cluster-id "$cluster_id" --config "$CONFIG" "${scram[@]}") >"$LOG_DIR/format.log" 2>&1 ||
        die "storage format failed: $(tail -n 5 "$LOG_DIR/format.log")"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        log "already running (pid $pid)"
        cat "$BOOTSTRAP_FILE"
        return 0
    fi
    command -v java >/dev/null || die "java not found (Java 17+ is required)"
    cmd_fetch
    local port
    for port in "$PORT" "$CONTROLLER_PORT" $SASL_SSL_PORT; do
        if port_open "$port"; then
            die "port $port on 127.0.0.1 is taken; set SOCIALPULSE_KAFKA_PORT (or _SASL_SSL_PORT)"
        fi
    done
    render_config
    format_storage
    # The readiness check greps this run's log only.
    [[ -f "$LOG_DIR/server.log" ]] && mv -f "$LOG_DIR/server.log" "$LOG_DIR/server.log.prev"
    local t0=$SECONDS
    # setsid: Ctrl-C in the caller's terminal must not reach the broker; only `stop` ends it.
    # Without job control the subshell is no group leader, so setsid execs in place and $! is java's PID.
    (java_cmd setsid -- kafka.Kafka "$CONFIG") \
        >"$LOG_DIR/stdout.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "127.0.0.1:$PORT" >"$BOOTSTRAP_FILE"
    # "Kafka Server started" is logged once the broker is unfenced and serving clients.
    until grep -qs "Kafka Server started" "$LOG_DIR/server.log" && port_open "$PORT"; do
        if ! alive "$pid"; then
            rm -f "$PID_FILE"
            tail -n 20 "$LOG_DIR/stdout.log" "$LOG_DIR/server.log" >&2 2>/dev/null || true
            die "broker exited during startup (logs in $LOG_DIR)"
        fi
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            tail -n 20 "$LOG_DIR/server.log" >&2 2>/dev/null || true
            cmd_stop
            die "broker not ready after ${START_TIMEOUT}s (logs in $LOG_DIR)"
        fi
        sleep 0.2
    done
    log "started pid $pid in $((SECONDS - t0))s, state in $KAFKA_HOME"
    cat "$BOOTSTRAP_FILE"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local t0=$SECONDS killed=""
    while alive "$pid"; do
        if [[ -z "$killed" ]] && ((SECONDS - t0 >= STOP_TIMEOUT)); then
            log "pid $pid still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            killed=1
        fi
        sleep 0.2
    done
    rm -f "$PID_FILE"
    log "stopped pid $pid"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running pid=$pid bootstrap=$(cat "$BOOTSTRAP_FILE") home=$KAFKA_HOME"
        return 0
    fi
    echo "stopped home=$KAFKA_HOME"
    return 3
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA_DIR" "$LOG_DIR" "$CONFIG" "$BOOTSTRAP_FILE"
}

case "${1:-}" in
fetch) cmd_fetch ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
reset) cmd_reset ;;
*)
    echo "usage: $0 {fetch|start|stop|status|reset}" >&2
    exit 2
    ;;
esac
