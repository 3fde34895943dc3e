#!/usr/bin/env bash
# Runs the Go client's own integration tests (amqp091-go, as Debian ships it
# with its sources) against the release broker, so that the protocol edges
# real clients rely on stay fixed. Needs Debian's golang-go,
# golang-github-rabbitmq-amqp091-go-dev and golang-uber-goleak-dev
# (.ci/run installs them). GOPATH mode on a copy of the sources: nothing is
# downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

src=/usr/share/gocode/src/github.com/rabbitmq/amqp091-go
if [ ! -d "$src" ] || ! command -v go >/dev/null 2>&1; then
  echo "amqp091-go: $src or go is missing (apt-get install golang-go golang-github-rabbitmq-amqp091-go-dev golang-uber-goleak-dev)" >&2
  exit 1
fi
broker_bin="${BROKER_BIN:-$PWD/target/release/broker}"

work=$(mktemp -d)
broker_pid=
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A copy, so that the build writes nothing under /usr/share.
mkdir -p "$work/gopath/src/github.com/rabbitmq"
cp -r "$src" "$work/gopath/src/github.com/rabbitmq/amqp091-go"

# A free port, then the broker on it with its own data dir.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BROKER__AMQP__PORT=$port BROKER__STORAGE__DATA_DIR="$work/data" \
  BROKER__MANAGEMENT__ENABLED=false BROKER__PROMETHEUS__ENABLED=false \
  "$broker_bin" >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  sleep 0.1
done

# These three test something only when the server says it is "RabbitMQ";
# elsewhere they return early and leave a connection open, which trips
# goleak in the next test.
skip='^(TestRabbitMQQueueTTLGet|TestRabbitMQQueueNackMultipleRequeue|TestIntegrationRecoverNotImplemented)$'
tests=$(cd "$work/gopath/src/github.com/rabbitmq/amqp091-go" &&
  grep -ho '^func Test[A-Za-z0-9_]*' ./*_test.go | sed 's/^func //' | grep -Ev "$skip" | sort -u | paste -sd'|')

status=0
(
  cd "$work/gopath/src/github.com/rabbitmq/amqp091-go"
  export GOPATH="$work/gopath:/usr/share/gocode" GO111MODULE=off GOPROXY=off GOFLAGS= \
    GOCACHE="$work/gocache" AMQP_URL="amqp://guest:guest@127.0.0.1:$port/"
  go test -tags integration -count=1 -timeout 10m -run "^($tests)\$" . -v >"$work/go-test.log" 2>&1
) || status=$?
grep -E '^(--- FAIL|FAIL|ok|PASS)' "$work/go-test.log" || true
# The tests written for the edges this suite was added for.
grep -E '^--- (PASS|FAIL): (TestChannelExceptionWithCloseIssue43|TestShouldNotWaitAfterConnectionClosedIssue44)' "$work/go-test.log" || true
passed=$(grep -c '^--- PASS' "$work/go-test.log" || true)
failed=$(grep -c '^--- FAIL' "$work/go-test.log" || true)
if [ "$status" -ne 0 ]; then
  tail -80 "$work/go-test.log"
  echo "--- broker log (last 40 lines)"
  tail -40 "$work/broker.log"
fi
echo "amqp091-go: $passed passed, $failed failed"
exit "$status"
