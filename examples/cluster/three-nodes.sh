#!/usr/bin/env bash
# Three cluster nodes on this machine (loopback, distinct ports), for trying
# the cluster out:
#
#   bash examples/cluster/three-nodes.sh          # Ctrl-C stops all three
#
# node i (0, 1, 2): AMQP 5672+i, management API 15672+i, node-to-node
# 25672+i, data in ./cluster-data/n<i>, log in ./cluster-data/n<i>.log.
# Then, in another terminal:
#
#   target/release/broker cluster status --api-port 15673
#   curl -u guest:guest -X PUT -H 'content-type: application/json' \
#        -d '{"type":"topic","durable":true}' localhost:15672/api/exchanges/%2F/orders
#   curl -u guest:guest localhost:15674/api/exchanges/%2F/orders   # on node 2 too
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${BROKER_BIN:-target/release/broker}"
[ -x "$BIN" ] || cargo build --release --bin broker
DATA="${DATA:-cluster-data}"
mkdir -p "$DATA"
SEEDS=127.0.0.1:25672,127.0.0.1:25673,127.0.0.1:25674
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 0 1 2; do
  BROKER__AMQP__BIND=127.0.0.1 BROKER__AMQP__PORT=$((5672 + i)) \
  BROKER__MANAGEMENT__BIND=127.0.0.1 BROKER__MANAGEMENT__PORT=$((15672 + i)) \
  BROKER__PROMETHEUS__PORT=$((15692 + i)) \
  BROKER__STORAGE__DATA_DIR="$DATA/n$i" \
  BROKER__CLUSTER__ENABLED=true \
  BROKER__CLUSTER__NODE_NAME="broker@n$i" \
  BROKER__CLUSTER__LISTEN=127.0.0.1:$((25672 + i)) \
  BROKER__CLUSTER__ADVERTISE=127.0.0.1:$((25672 + i)) \
  BROKER__CLUSTER__SEED_NODES="$SEEDS" \
  BROKER__CLUSTER__SECRET="${CLUSTER_SECRET:-change-me}" \
  "$BIN" > "$DATA/n$i.log" 2>&1 &
  pids+=($!)
done
echo "three nodes starting (logs in $DATA/n*.log); Ctrl-C stops them"
for _ in $(seq 50); do
  if "$BIN" cluster status --api-port 15672 2>/dev/null | grep -q "leader:  broker@"; then
    break
  fi
  sleep 0.2
done
"$BIN" cluster status --api-port 15672 || true
wait
