#!/bin/bash
# test-sdk.sh - vl2-http driven by the official OpenAI and Ollama JavaScript
# libraries (sdk.mjs; versions pinned in package.json / package-lock.json,
# installed into node_modules here by `npm ci`, which .ci/run does).
# Skips (77) only where node is absent.
#
# usage: test-sdk.sh VL2D VL2HTTP CKPT PLUGIN_DIR GOLDEN_DIR IMAGES_DIR SRC_DIR
set -uo pipefail
VL2D=$1 VL2HTTP=$2 CKPT=$3 PLUGINS=$4 GOLDEN=$5 IMAGES=$6 SRC=$7
command -v node >/dev/null || { echo "node not found: skipping"; exit 77; }
command -v curl >/dev/null || { echo "curl not found: skipping"; exit 77; }
if [ ! -f "$SRC/node_modules/openai/package.json" ] || [ ! -f "$SRC/node_modules/ollama/package.json" ]; then
    echo "test-sdk: the npm packages are not installed: run 'npm ci' in $SRC (bash .ci/run deps does it)"
    exit 1
fi
. "$(dirname "$0")/lib.sh"
start_daemon "$VL2D" "$CKPT" "$PLUGINS"
start_gateway "$VL2HTTP"
VL2_HTTP_URL=$URL VL2_GOLDEN=$GOLDEN/micro-mha VL2_IMAGES=$IMAGES node "$SRC/sdk.mjs"
