#!/bin/bash
# demo.sh - vl2d from a fresh Debian 12 machine, as root:
#   installs the build dependencies (.ci/run deps), builds vl2d in `build`,
#   starts the daemon on a temporary socket, asks it for its status with the
#   `vl2` client, and stops it.
# Generation arrives with the model runtime; this script then also creates a
# small demo checkpoint and asks a question about data/images/g_a_384.jpg.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash .ci/run deps
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"
if [ ! -f build/build.ninja ]; then
    meson setup build
fi
ninja -C build

rundir=$(mktemp -d /tmp/vl2-demo-XXXXXX)
sock="$rundir/vl2d.sock"
build/daemon/cli/vl2d --socket "$sock" 2>"$rundir/vl2d.log" &
daemon=$!
cleanup() {
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    rm -rf "$rundir"
}
trap cleanup EXIT

for _ in $(seq 100); do
    build/client/vl2 --socket "$sock" status >/dev/null 2>&1 && break
    if ! kill -0 "$daemon" 2>/dev/null; then
        cat "$rundir/vl2d.log" >&2
        exit 1
    fi
    sleep 0.1
done

echo "\$ vl2 --socket $sock status"
build/client/vl2 --socket "$sock" status
