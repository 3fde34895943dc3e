#!/usr/bin/env bash
# Side-by-side benchmark: this broker vs RabbitMQ, same load generator
# (amqp-perf), same machine, loopback only.
#
#   bench/compare.sh              # ~10 s per scenario, backlog of 1M x 1 KiB
#   QUICK=1 bench/compare.sh      # ~3 s per scenario, backlog of 100k
#
# Environment knobs (defaults in brackets):
#   QUICK=1            short runs
#   DURATION, WARMUP   measured / warm-up seconds per run [10, 2; QUICK: 3, 1]
#   BACKLOG_COUNT      messages in the backlog scenario [1000000; QUICK: 100000]
#   STREAM_COUNT       messages in the stream scenario [1000000; QUICK: 100000]
#   STREAM_PREFETCH    consumer prefetch in the stream scenario [1000]
#   GROUP_COUNT        messages in the group scenario [300000; QUICK: 100000]
#   CONNECTIONS        idle connections in the connections scenario [1000]
#   CONFIRM            publisher-confirm window in confirm scenarios [1000]
#   ONLY               space-separated scenario ids to run (default: all)
#   SKIP_BUILD=1       use target/release binaries as they are
#   OUT                also write the markdown table to this file
#
# Each run gets a freshly started broker (fresh data directory), so RSS
# figures start from an empty broker and a hang in one run does not spoil
# the next. Brokers run alternately, scenario by scenario.
#
# Ports: RabbitMQ AMQP 5673, its Erlang distribution 5675 and epmd 5676;
# this broker 5674 (its optional listeners are pointed at 5677/5678).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-3}
    WARMUP=${WARMUP:-1}
    BACKLOG_COUNT=${BACKLOG_COUNT:-100000}
    STREAM_COUNT=${STREAM_COUNT:-100000}
    GROUP_COUNT=${GROUP_COUNT:-100000}
else
    DURATION=${DURATION:-10}
    WARMUP=${WARMUP:-2}
    BACKLOG_COUNT=${BACKLOG_COUNT:-1000000}
    STREAM_COUNT=${STREAM_COUNT:-1000000}
    GROUP_COUNT=${GROUP_COUNT:-300000}
fi
CONNECTIONS=${CONNECTIONS:-1000}
CONFIRM=${CONFIRM:-1000}
STREAM_PREFETCH=${STREAM_PREFETCH:-1000}
ONLY=${ONLY:-}
RMQ_PORT=5673
OURS_PORT=5674
RMQ_DIST_PORT=5675
EPMD_PORT=5676

WORK=$(mktemp -d /tmp/amqp-compare.XXXXXX)
RES=$WORK/results
mkdir -p "$RES" "$WORK/bin"
log() { echo "[compare] $*" >&2; }

# --- prerequisites -----------------------------------------------------------
if ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    log "installing rabbitmq-server from Debian"
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >/dev/null
fi
for tool in python3 taskset; do
    command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done

# What is being measured: the commit, and whether tracked files differ from it.
OURS_REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src tools Cargo.toml 2>/dev/null || echo ' + uncommitted changes to tracked files')"
[ "${SKIP_BUILD:-0}" = 1 ] && OURS_REV="$OURS_REV (SKIP_BUILD: existing target/release binary)"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    # amqp-perf is the workspace member tools/amqp-perf: --workspace finds it.
    (cd "$ROOT" && cargo build --release --workspace --bin broker --bin amqp-perf) >&2
fi
# Private copies: a concurrent rebuild must not swap binaries mid-run.
cp "$ROOT/target/release/broker" "$ROOT/target/release/amqp-perf" "$WORK/bin/"
PERF=$WORK/bin/amqp-perf
OURS_BIN=$WORK/bin/broker

# --- broker control ----------------------------------------------------------
OURS_PID=
RMQ_SCRIPT_PID=
RMQ_PID=
EPMD_PID=

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

start_ours() { # [cpu list]
    local dir=$WORK/ours-data.$RANDOM
    mkdir -p "$dir"
    local pin=()
    [ -n "${1:-}" ] && pin=(taskset -c "$1")
    BROKER__AMQP__PORT=$OURS_PORT BROKER__AMQP__BIND=127.0.0.1 \
        BROKER__STORAGE__DATA_DIR=$dir \
        BROKER__MANAGEMENT__PORT=5677 BROKER__MANAGEMENT__BIND=127.0.0.1 \
        BROKER__PROMETHEUS__PORT=5678 BROKER__PROMETHEUS__BIND=127.0.0.1 \
        RUST_LOG=warn "${pin[@]}" "$OURS_BIN" >>"$WORK/ours.log" 2>&1 &
    OURS_PID=$!
    wait_port $OURS_PORT 20 || { log "our broker did not start"; tail -5 "$WORK/ours.log" >&2; return 1; }
    "$PERF" --uri "amqp://guest:guest@127.0.0.1:$OURS_PORT/%2f" --scenario ping --quiet >/dev/null
}

stop_ours() {
    [ -n "$OURS_PID" ] || return 0
    kill -TERM "$OURS_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$OURS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$OURS_PID" 2>/dev/null || true
    wait "$OURS_PID" 2>/dev/null || true
    OURS_PID=
    rm -rf "$WORK"/ours-data.*
}

start_epmd() {
    [ -n "$EPMD_PID" ] && return 0
    ERL_EPMD_ADDRESS=127.0.0.1 epmd -port $EPMD_PORT >"$WORK/epmd.log" 2>&1 &
    EPMD_PID=$!
    wait_port $EPMD_PORT 10
}

start_rmq() { # [cpu list]
    start_epmd
    local base=$WORK/rmq.$RANDOM
    mkdir -p "$base/home" "$base/mnesia" "$base/log"
    echo "[]." >"$base/enabled_plugins"
    : >"$base/rabbitmq-env.conf"
    echo "loopback_users.guest = true" >"$base/rabbitmq.conf"
    local pin=()
    [ -n "${1:-}" ] && pin=(taskset -c "$1")
    (
        export HOME=$base/home RABBITMQ_NODENAME=ampqcompare@localhost \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$RMQ_PORT \
            RABBITMQ_DIST_PORT=$RMQ_DIST_PORT ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
            RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log \
            RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins \
            RABBITMQ_CONFIG_FILE=$base/rabbitmq RABBITMQ_CONF_ENV_FILE=$base/rabbitmq-env.conf \
            RABBITMQ_PID_FILE=$base/rabbit.pid \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        exec "${pin[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server >"$base/stdout.log" 2>&1
    ) &
    RMQ_SCRIPT_PID=$!
    if ! wait_port $RMQ_PORT 90; then
        log "RabbitMQ did not start"; tail -20 "$base/stdout.log" >&2; return 1
    fi
    RMQ_PID=$(pgrep -P "$RMQ_SCRIPT_PID" beam.smp || true)
    [ -n "$RMQ_PID" ] || { log "cannot find RabbitMQ's beam.smp"; return 1; }
    "$PERF" --uri "amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f" --scenario ping --quiet >/dev/null
}

stop_rmq() {
    [ -n "$RMQ_SCRIPT_PID" ] || return 0
    kill -TERM "$RMQ_SCRIPT_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$RMQ_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RMQ_PID" 2>/dev/null || true
    wait "$RMQ_SCRIPT_PID" 2>/dev/null || true
    RMQ_SCRIPT_PID=
    RMQ_PID=
    rm -rf "$WORK"/rmq.*
}

cleanup() {
    stop_ours || true
    stop_rmq || true
    if [ -n "$EPMD_PID" ]; then kill "$EPMD_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- scenarios ----------------------------------------------------------------
# id | label | amqp-perf arguments | broker cpus | tool cpus
SCENARIOS=(
    "16b-autoack|1p/1c 16 B autoack|--size 16 --autoack||"
    "1k-autoack|1p/1c 1 KiB autoack|--size 1024 --autoack||"
    "1k-confirm-ack|1 KiB, confirms ($CONFIRM) + manual ack, prefetch 100|--size 1024 --confirm $CONFIRM --prefetch 100||"
    "1k-persistent|1 KiB persistent, confirms ($CONFIRM), durable queue, prefetch 100|--size 1024 --persistent --confirm $CONFIRM --prefetch 100 --queues perf-durable-%d||"
    "fanout10|fanout to 10 queues, 1 KiB, autoack|--scenario fanout --queue-count 10 --size 1024 --autoack||"
    "topic|topic exchange, binding stock.*.#, key stock.nyse.ibm, 1 KiB, autoack|--exchange perf-topic --exchange-type topic --routing-key stock.nyse.ibm --binding-key stock.*.# --size 1024 --autoack||"
    "latency-1k|latency at 1k msg/s, 1 KiB, autoack|--scenario latency --rate 1000 --size 1024 --autoack||"
    "latency-10k|latency at 10k msg/s, 1 KiB, autoack|--scenario latency --rate 10000 --size 1024 --autoack||"
    "backlog|backlog $BACKLOG_COUNT x 1 KiB (confirms $CONFIRM), then drain (prefetch 1000)|--scenario backlog --count $BACKLOG_COUNT --size 1024 --confirm $CONFIRM --prefetch 1000||"
    "stream|stream $STREAM_COUNT x 100 B (confirms $CONFIRM), then read from first (prefetch $STREAM_PREFETCH)|--scenario backlog --queue-type stream --stream-offset first --count $STREAM_COUNT --size 100 --confirm $CONFIRM --prefetch $STREAM_PREFETCH --queues perf-stream||"
    "group|consumer group, 3-partition super stream: $GROUP_COUNT x 100 B read by 1/2/3 members (prefetch 1000); failover at 10k msg/s, 3 members, 5 kills (ours only: RabbitMQ has no AMQP 0-9-1 equivalent)|--scenario group --count $GROUP_COUNT --size 100 --partitions 3 --members 1,2,3 --prefetch 1000 --confirm $CONFIRM --failover-members 3 --failover-runs 5 --rate 10000||"
    "connections|$CONNECTIONS idle connections|--scenario connections --connections $CONNECTIONS||"
    "16b-autoack-1core|1p/1c 16 B autoack, broker pinned to 1 core (tool on the other)|--size 16 --autoack|0|1"
    "16b-autoack-2core|1p/1c 16 B autoack, broker pinned to 2 cores (tool shares them)|--size 16 --autoack|0,1|"
)

run_one() { # broker id args broker_cpus tool_cpus
    local broker=$1 id=$2 args=$3 bcpus=$4 tcpus=$5
    local out=$RES/$id.$broker.json port pid
    if [ "$broker" = ours ]; then
        start_ours "$bcpus" || { echo '{"error":"broker did not start"}' >"$out"; return; }
        port=$OURS_PORT pid=$OURS_PID
    else
        start_rmq "$bcpus" || { echo '{"error":"broker did not start"}' >"$out"; stop_rmq; return; }
        port=$RMQ_PORT pid=$RMQ_PID
    fi
    local pin=()
    [ -n "$tcpus" ] && pin=(taskset -c "$tcpus")
    local limit=$((WARMUP + DURATION + 90))
    case "$id" in backlog | stream | group) limit=1800 ;; esac
    # shellcheck disable=SC2086
    timeout "$limit" "${pin[@]}" "$PERF" --uri "amqp://guest:guest@127.0.0.1:$port/%2f" \
        --duration "$DURATION" --warmup "$WARMUP" --broker-pid "$pid" \
        --label "$id/$broker" --json --quiet $args >"$out" 2>"$RES/$id.$broker.err" ||
        { [ -s "$out" ] || echo '{"error":"amqp-perf failed or timed out"}' >"$out"; }
    # Is the broker still answering?
    if ! "$PERF" --uri "amqp://guest:guest@127.0.0.1:$port/%2f" --scenario ping --quiet >/dev/null 2>&1; then
        log "$broker stopped answering after $id"
        : >"$RES/$id.$broker.hung"
        if [ "$broker" = ours ] && command -v gdb >/dev/null; then
            timeout 60 gdb -p "$pid" -batch -ex "thread apply all bt 25" >"$RES/$id.$broker.stacks.txt" 2>/dev/null || true
        fi
    fi
    if [ "$broker" = ours ]; then stop_ours; else stop_rmq; fi
}

date_utc=$(date -u +"%Y-%m-%d %H:%M UTC")
log "results in $WORK (DURATION=$DURATION WARMUP=$WARMUP BACKLOG_COUNT=$BACKLOG_COUNT STREAM_COUNT=$STREAM_COUNT)"
n=0
for spec in "${SCENARIOS[@]}"; do
    IFS='|' read -r id label args bcpus tcpus <<<"$spec"
    if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $id "* ]]; then continue; fi
    n=$((n + 1))
    printf '%s\t%s\n' "$id" "$label" >>"$RES/order.tsv"
    # Alternate which broker goes first.
    if ((n % 2)); then order="ours rabbitmq"; else order="rabbitmq ours"; fi
    # Scenarios RabbitMQ cannot run over AMQP 0-9-1.
    case "$id" in group) order="ours" ;; esac
    for broker in $order; do
        log "[$n] $id: $broker (load $(cut -d' ' -f1 /proc/loadavg))"
        run_one "$broker" "$id" "$args" "$bcpus" "$tcpus"
    done
done

# --- report -------------------------------------------------------------------
{
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel: $(uname -r)"
    echo "memory: $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "rabbitmq: $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')"
    echo "erlang: $(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().' 2>/dev/null || echo '?')"
    echo "ours: $OURS_REV"
    echo "date: $date_utc"
    echo "settings: DURATION=$DURATION WARMUP=$WARMUP BACKLOG_COUNT=$BACKLOG_COUNT STREAM_COUNT=$STREAM_COUNT STREAM_PREFETCH=$STREAM_PREFETCH CONNECTIONS=$CONNECTIONS CONFIRM=$CONFIRM QUICK=$QUICK"
    echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RES/machine.txt"

cat >"$WORK/report.py" <<'PY'
import json, os, sys

res = sys.argv[1]

def load(sid, broker):
    path = os.path.join(res, f"{sid}.{broker}.json")
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        return {"error": f"no result ({e.__class__.__name__})"}

def hung(sid, broker):
    return os.path.exists(os.path.join(res, f"{sid}.{broker}.hung"))

def get(d, path):
    for k in path.split("."):
        if isinstance(d, list) and k.isdigit() and int(k) < len(d):
            d = d[int(k)]
            continue
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d

# Scenarios run against this broker only (no RabbitMQ equivalent).
OURS_ONLY = {"group"}

def rate(v):
    return f"{v:,.0f} msg/s"

def us(v):
    return f"{v/1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"

def nbytes(v):
    return f"{v/1024:.1f} KiB" if abs(v) >= 10240 else f"{v:,.0f} B"

def plain(v):
    return f"{v:,.0f}"

def ms(v):
    return f"{v:.1f} ms"

# (metric label, json path, formatter, better)
THROUGHPUT = [("consumed", "consumed_per_sec", rate, "higher"),
              ("published", "published_per_sec", rate, "higher")]
METRICS = {
    "latency": [("p50", "latency_us.p50", us, "lower"),
                ("p95", "latency_us.p95", us, "lower"),
                ("p99", "latency_us.p99", us, "lower"),
                ("max", "latency_us.max", us, "lower")],
    "backlog": [("publish", "published_per_sec", rate, "higher"),
                ("drain", "drained_per_sec", rate, "higher"),
                ("RSS per message", "rss_bytes_per_message", nbytes, "lower")],
    # Stream: acks remove nothing, so the read phase ends on the consumed
    # count. RSS per message says little here (the log is on disk).
    "stream": [("publish (confirmed)", "published_per_sec", rate, "higher"),
               ("read from first", "drained_per_sec", rate, "higher")],
    # Consumer groups: read rate per member count (throughput.N is the
    # run with --members' N-th entry), and the slowest partition handover
    # over the failover kills.
    "group": [("read, 1 member", "throughput.0.msg_per_sec", rate, "higher"),
              ("read, 2 members", "throughput.1.msg_per_sec", rate, "higher"),
              ("read, 3 members", "throughput.2.msg_per_sec", rate, "higher"),
              ("failover, fastest handover", "failover.partition_resume_ms_min", ms, "lower"),
              ("failover, slowest handover", "failover.partition_resume_ms_max", ms, "lower")],
    "connections": [("RSS per connection", "rss_bytes_per_connection", nbytes, "lower"),
                    ("opened per second", "opened_per_sec", plain, "higher")],
}

def metrics_for(sid):
    if sid.startswith("latency"):
        return METRICS["latency"]
    if sid in METRICS:
        return METRICS[sid]
    if sid.endswith("confirm-ack") or sid.endswith("persistent"):
        return THROUGHPUT + [("confirmed", "confirmed_per_sec", rate, "higher")]
    return THROUGHPUT

def cell(d, sid, broker, path, fmt):
    if sid in OURS_ONLY and broker == "rabbitmq":
        return ("no equivalent", None)
    if hung(sid, broker):
        v = get(d, path)
        return ("HUNG" + (f" ({fmt(v)} avg over the window)" if v else ""), None)
    if "error" in d:
        return ("error", None)
    v = get(d, path)
    if v is None:
        return ("n/a", None)
    return (fmt(v), float(v))

def cpu(d):
    v = get(d, "broker_process.cpu_percent")
    return "" if v is None else f"{v:.0f}%"

rows = []
notes = []
with open(os.path.join(res, "order.tsv")) as f:
    order = [line.rstrip("\n").split("\t") for line in f if line.strip()]
for sid, label in order:
    ours, rmq = load(sid, "ours"), load(sid, "rabbitmq")
    for i, (mlabel, path, fmt, better) in enumerate(metrics_for(sid)):
        a, av = cell(ours, sid, "ours", path, fmt)
        b, bv = cell(rmq, sid, "rabbitmq", path, fmt)
        ratio = f"{av / bv:.2f}" if av is not None and bv else "-"
        if better == "lower" and ratio != "-":
            ratio += " (lower is better)"
        rows.append((label if i == 0 else "", mlabel, a, b, ratio,
                     cpu(ours) if i == 0 else "", cpu(rmq) if i == 0 else ""))
    for broker, d in (("ours", ours), ("RabbitMQ", rmq)):
        key = "ours" if broker == "ours" else "rabbitmq"
        if sid in OURS_ONLY and key == "rabbitmq":
            continue
        errs = list(d.get("errors") or [])
        if "error" in d:
            errs.append(d["error"])
        if hung(sid, key):
            errs.append("broker stopped answering (see *.stacks.txt)")
        paused = d.get("backlog_guard_paused_sec") or 0
        if paused > 0.05:
            errs.append(f"publishers paused {paused:.1f} s by --max-backlog")
        for e in errs:
            notes.append(f"- {sid} / {broker}: {e}")

print("| scenario | metric | ours | RabbitMQ | ours/RabbitMQ | ours CPU | RabbitMQ CPU |")
print("|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
with open(os.path.join(res, "machine.txt")) as f:
    print("Machine: " + "; ".join(line.strip() for line in f if line.strip()))
if notes:
    print()
    print("Notes:")
    print("\n".join(notes))
PY

python3 "$WORK/report.py" "$RES" | tee "$RES/table.md"
if [ -n "${OUT:-}" ]; then cp "$RES/table.md" "$OUT"; fi
log "raw JSON per run: $RES"
