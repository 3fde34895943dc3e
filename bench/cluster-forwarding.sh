#!/usr/bin/env bash
# Cost of cluster forwarding and relaying: three nodes on loopback, one
# durable classic queue declared through node 1 (so it lives there), and
# amqp-perf publishing and consuming through different nodes:
#
#   local      publish via node 1, consume via node 1
#   forwarded  publish via node 0 (forwarded to node 1), consume via node 1
#   relayed    publish via node 0, consume via node 2 (deliveries relayed)
#
# for three scenarios (1 KiB bodies, one queue, one publisher, one consumer):
#
#   a  throughput, transient messages, autoack
#   b  throughput, persistent messages, confirms (window 1000), manual acks
#      (prefetch 1000)
#   c  latency at 1000 msg/s, transient messages, autoack
#
#   bench/cluster-forwarding.sh                  # 2 runs of each, ~4 min
#   RUNS=1 DURATION=3 WARMUP=1 bench/cluster-forwarding.sh
#
# Knobs: RUNS [2], DURATION [10], WARMUP [2], SIZE [1024], SKIP_BUILD=1
# (use target/release as it is), BROKER_BIN, PERF_BIN, DATA
# [/tmp/bench-cluster, removed at the end], OUT (also write the table
# there). Ports: AMQP 5781-5783, management 15781-15783, node-to-node
# 25781-25783, Prometheus on an ephemeral port. Broker CPU is that of
# node 1, the queue's node.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SIZE=${SIZE:-1024}
DATA=${DATA:-/tmp/bench-cluster}
BROKER_BIN=${BROKER_BIN:-$ROOT/target/release/broker}
PERF_BIN=${PERF_BIN:-$ROOT/target/release/amqp-perf}
log() { echo "[cluster-forwarding] $*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --workspace --bin amqp-perf --bin broker >&2
fi

rm -rf "$DATA"
mkdir -p "$DATA/results"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP_DATA:-0}" != 1 ]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT INT TERM

SEEDS=127.0.0.1:25781,127.0.0.1:25782,127.0.0.1:25783
for i in 0 1 2; do
    BROKER__AMQP__BIND=127.0.0.1 BROKER__AMQP__PORT=$((5781 + i)) \
    BROKER__MANAGEMENT__BIND=127.0.0.1 BROKER__MANAGEMENT__PORT=$((15781 + i)) \
    BROKER__PROMETHEUS__BIND=127.0.0.1 BROKER__PROMETHEUS__PORT=0 \
    BROKER__STORAGE__DATA_DIR="$DATA/n$i" \
    BROKER__CLUSTER__ENABLED=true \
    BROKER__CLUSTER__NODE_NAME="broker@n$i" \
    BROKER__CLUSTER__LISTEN=127.0.0.1:$((25781 + i)) \
    BROKER__CLUSTER__ADVERTISE=127.0.0.1:$((25781 + i)) \
    BROKER__CLUSTER__SEED_NODES="$SEEDS" \
    BROKER__CLUSTER__SECRET=bench-secret \
    "$BROKER_BIN" > "$DATA/n$i.log" 2>&1 &
    pids+=($!)
done
NODE1_PID=${pids[1]}

# Ready when every node names a leader and sees all three members reachable.
ready=0
for _ in $(seq 150); do
    ok=0
    for i in 0 1 2; do
        if "$BROKER_BIN" cluster status --api-port $((15781 + i)) 2>/dev/null \
            | awk '/^leader:  broker@/ {l=1} /\treachable$/ {r++} END {exit !(l && r == 3)}'; then
            ok=$((ok + 1))
        fi
    done
    if [ "$ok" = 3 ]; then ready=1; break; fi
    sleep 0.2
done
if [ "$ready" != 1 ]; then
    log "cluster did not form; logs in $DATA/n*.log"
    KEEP_DATA=1
    exit 1
fi
"$BROKER_BIN" cluster status --api-port 15782 >&2

uri() { echo "amqp://guest:guest@127.0.0.1:$((5781 + $1))/%2f"; }

# config name -> "publisher node consumer node" (the queue is always on 1)
declare -A NODES=([local]="1 1" [forwarded]="0 1" [relayed]="0 2")
CONFIGS="local forwarded relayed"
declare -A SCEN=(
    [a]="--scenario throughput --durable --autoack"
    [b]="--scenario throughput --persistent --confirm 1000 --prefetch 1000"
    [c]="--scenario latency --rate 1000 --durable --autoack"
)
SCENARIOS="a b c"

for run in $(seq "$RUNS"); do
    for s in $SCENARIOS; do
        for c in $CONFIGS; do
            read -r pn cn <<< "${NODES[$c]}"
            out="$DATA/results/$c-$s-$run.json"
            log "run $run, scenario $s, $c (publish via node $pn, consume via node $cn)"
            # shellcheck disable=SC2086
            "$PERF_BIN" --uri "$(uri 1)" --publisher-uri "$(uri "$pn")" \
                --consumer-uri "$(uri "$cn")" ${SCEN[$s]} --size "$SIZE" \
                --duration "$DURATION" --warmup "$WARMUP" \
                --broker-pid "$NODE1_PID" --label "$c-$s-$run" --json --quiet \
                > "$out" || log "run failed: $(cat "$out")"
        done
    done
done

for i in 0 1 2; do
    if grep -qiE "panic|ERROR" "$DATA/n$i.log"; then
        log "node $i logged errors:"
        grep -iE "panic|ERROR" "$DATA/n$i.log" | tail -20 >&2
    fi
done

python3 - "$DATA/results" "$RUNS" <<'EOF' | tee "${OUT:-/dev/null}"
import json, sys, os
res, runs = sys.argv[1], int(sys.argv[2])
def load(c, s, r):
    try:
        return json.load(open(os.path.join(res, f"{c}-{s}-{r}.json")))
    except Exception:
        return None
def k(x):
    return "-" if x is None else f"{x / 1000:.1f}k"
def cpu(j):
    b = j.get("broker_process") or {}
    return "-" if b.get("cpu_percent") is None else f"{b['cpu_percent']:.0f}%"
def lat(j, q):
    l = j.get("latency_us")
    return "-" if not l else f"{l[q] / 1000:.2f}"
def cell(c, s, f):
    return " / ".join(f(j) if j and "error" not in j else "fail"
                      for j in (load(c, s, r) for r in range(1, runs + 1)))
print("| configuration | (a) transient, autoack: msg/s | node 1 CPU "
      "| (b) persistent, confirms, manual ack: msg/s | node 1 CPU "
      "| (c) latency @1000/s: p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|")
names = {"local": "local (publish 1, queue 1, consume 1)",
         "forwarded": "forwarded (publish 0, queue 1, consume 1)",
         "relayed": "forwarded + relayed (publish 0, queue 1, consume 2)"}
for c in ("local", "forwarded", "relayed"):
    print(f"| {names[c]} | {cell(c, 'a', lambda j: k(j['consumed_per_sec']))} "
          f"| {cell(c, 'a', cpu)} "
          f"| {cell(c, 'b', lambda j: k(j['consumed_per_sec']))} "
          f"| {cell(c, 'b', cpu)} "
          f"| {cell(c, 'c', lambda j: lat(j, 'p50'))} "
          f"| {cell(c, 'c', lambda j: lat(j, 'p99'))} |")
errs = []
for name in sorted(os.listdir(res)):
    j = json.load(open(os.path.join(res, name))) if os.path.getsize(os.path.join(res, name)) else {}
    for e in j.get("errors", []) + ([j["error"]] if "error" in j else []):
        errs.append(f"{name}: {e}")
if errs:
    print("\nerrors:\n" + "\n".join(errs))
EOF
