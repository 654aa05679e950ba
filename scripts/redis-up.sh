#!/usr/bin/env bash
# Makes sure Redis answers at 127.0.0.1:6379 (the multi-instance tests of
# plugins/omniroute-redis use its database 13): starts redis-server when it is down,
# keeping nothing on disk, and waits (at most 10 s) until it answers. The tests that
# stop and restart Redis under load run a redis-server of their own on a free port.
set -euo pipefail
ping() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
ping && exit 0
if ! command -v redis-server >/dev/null; then
    echo "redis-server is not installed (Debian: apt-get install redis-server)" >&2
    exit 1
fi
redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile /tmp/omniroute-redis-6379.log
for _ in $(seq 100); do ping && exit 0; sleep 0.1; done
echo "redis-server did not answer at 127.0.0.1:6379 within 10 s" >&2
exit 1
