#!/usr/bin/env bash
# Makes sure the native benchmark tools are installed: wrk (the load generator of
# `bench.py --load wrk`) and nginx (the mock upstream of `bench.py --upstream nginx`).
# Installs the missing ones from Debian's packages (nginx-light: the smallest build
# with `return`, which is all the mock needs). Run as root, or it says what to run.
# bench.py calls it when one of those options is chosen; it does nothing when both
# tools are there. The packages' own nginx service is not started: the benchmark
# runs nginx itself, as the current user, from a config in a scratch directory.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]} (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# an old or empty package list finds nothing: update once, then install
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
command -v wrk >/dev/null && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }
