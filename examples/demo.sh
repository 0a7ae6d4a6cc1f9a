#!/bin/bash
# demo.sh - vl2d from a fresh Debian 12 machine, as root:
#   installs the build dependencies (.ci/run deps), builds vl2d in `build`,
#   makes the demo checkpoint (micro-mha, random weights, 34 MB) with
#   vl2-mkweights in build/demo-model, starts the daemon on it on a temporary
#   socket, asks a question about data/images/g_a_384.jpg with `vl2 ask`
#   (the answer streams), shows `vl2 status`, and stops the daemon.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash .ci/run deps
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"
if [ ! -f build/build.ninja ]; then
    meson setup build
fi
ninja -C build

model=build/demo-model
if [ ! -f "$model/model.safetensors" ]; then
    echo "making the demo checkpoint in $model (random weights)"
    build/weights/vl2-mkweights --preset micro-mha --out "$model" \
        --tokenizer-dir build/data --quiet
fi

rundir=$(mktemp -d /tmp/vl2-demo-XXXXXX)
sock="$rundir/vl2d.sock"
build/daemon/cli/vl2d --no-config --socket "$sock" --model "demo=$model" \
    2>"$rundir/vl2d.log" &
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

cat <<'EOF'

------------------------------------------------------------------------------
NOTE: the demo model has RANDOM weights (vl2-mkweights --preset micro-mha):
its answers are noise. vl2d, the protocol, the image pipeline and the forward
pass are real; for real answers, download an official checkpoint (for example
deepseek-ai/deepseek-vl2-tiny from Hugging Face, the folder as published) and
start the daemon on it:
    build/daemon/cli/vl2d --model tiny=/path/to/deepseek-vl2-tiny
    build/client/vl2 ask -m tiny -i photo.jpg "What is in this picture?"
------------------------------------------------------------------------------

EOF

echo "\$ vl2 ask -m demo -i data/images/g_a_384.jpg --max-new-tokens 40 \"Describe this image.\""
build/client/vl2 --socket "$sock" ask -m demo -i data/images/g_a_384.jpg \
    --max-new-tokens 40 "Describe this image."
echo
echo "\$ vl2 status"
build/client/vl2 --socket "$sock" status
