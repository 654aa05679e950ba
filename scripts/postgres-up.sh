#!/usr/bin/env bash
# Makes sure PostgreSQL answers at 127.0.0.1:5432 (plugins/omniroute-postgres and the
# storage tests run on it: each test session makes a database of its own,
# omniroute_test_<random>, as user postgres, and drops it afterwards): starts the local
# cluster when it is down, and waits (at most 20 s) until it accepts connections. The
# test that makes the database unreachable cuts a TCP proxy of its own, never the server.
set -euo pipefail
ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
ready && exit 0
if ! command -v pg_isready >/dev/null; then
    echo "PostgreSQL is not installed (Debian: apt-get install postgresql)" >&2
    exit 1
fi
if command -v pg_lsclusters >/dev/null && command -v pg_ctlcluster >/dev/null; then
    # Debian's clusters: start every one that is down (the one on port 5432 among them)
    pg_lsclusters --no-header | while read -r version name port status _; do
        if [ "$port" = 5432 ] && [ "$status" != online ]; then
            pg_ctlcluster "$version" "$name" start || true
        fi
    done
elif command -v service >/dev/null; then
    service postgresql start || true
fi
for _ in $(seq 200); do ready && exit 0; sleep 0.1; done
echo "PostgreSQL did not answer at 127.0.0.1:5432 within 20 s" >&2
exit 1
