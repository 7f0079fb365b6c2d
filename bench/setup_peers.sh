#!/usr/bin/env bash
# Installs what `make bench` compares zwal with, where it is missing:
# Redis (redis-server, redis-tools) and etcd (etcd-server) from the system's
# Debian/Ubuntu packages, which needs root (or sudo); pysyncobj, matplotlib
# and py-spy come from pyproject's `bench` extra, installed by the Makefile.
# SQLite is Python's own sqlite3. A peer that still cannot be installed is
# reported as missing in the benchmark report, never silently left out.
set -u
need=()
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || need+=(redis-server redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
if [ ${#need[@]} -eq 0 ]; then
    echo "bench peers: redis-server, redis-benchmark and etcd are installed"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "bench peers: missing ${need[*]}; installing them needs root (run: sudo apt-get install ${need[*]})." >&2
    echo "bench peers: going on without them; the report lists them as missing." >&2
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "bench peers: missing ${need[*]} and no apt-get here; install them with your package manager." >&2
    exit 0
fi
echo "bench peers: installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || echo "bench peers: apt-get update failed; trying the install anyway" >&2
if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
    echo "bench peers: apt-get install ${need[*]} failed; the report lists what is missing." >&2
fi
# The packages start system services we do not use: the harness starts its own on free ports.
for svc in redis-server etcd; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
exit 0
