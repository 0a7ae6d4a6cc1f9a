#!/bin/sh
# test-check-model.sh - vl2d check-model on good and broken checkpoints, and
# the published parameter totals of the three real shapes (spec 1.3).
# usage: test-check-model.sh VL2D MKWEIGHTS MICRO_MHA MICRO_MLA MICRO_BASE
set -u
VL2D=$1 MK=$2 MHA=$3 MLA=$4 BASE=$5
T=$(mktemp -d /tmp/vl2-test-cm-XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
bad() { echo "FAIL: $*" >&2; fail=1; }

# expect_ok DIR PATTERN...: exit 0 and every pattern in the output
expect_ok() {
    dir=$1; shift
    out=$("$VL2D" check-model $OPTS "$dir" 2>&1); rc=$?
    [ $rc -eq 0 ] || bad "check-model $dir: exit $rc: $out"
    for p in "$@"; do
        printf '%s\n' "$out" | grep -qF -- "$p" || bad "check-model $dir: no '$p' in: $out"
    done
}
# expect_fail DIR PATTERN...: exit 1, one line, every pattern in it
expect_fail() {
    dir=$1; shift
    out=$("$VL2D" check-model $OPTS "$dir" 2>&1); rc=$?
    [ $rc -eq 1 ] || bad "check-model $dir: exit $rc, expected 1: $out"
    [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || bad "check-model $dir: not one line: $out"
    for p in "$@"; do
        printf '%s\n' "$out" | grep -qF -- "$p" || bad "check-model $dir: no '$p' in: $out"
    done
}

OPTS=
expect_ok "$MHA" "tiny-like (MHA)" "MHA, 4 heads" "softmax, greedy" "8 experts top-2" \
    "vocabulary:  129280" "BF16" "23 candidate resolutions"
expect_ok "$MLA" "small-like" "MLA, 4 heads, kv_lora_rank 32, q_lora_rank none"
expect_ok "$BASE" "base-like" "q_lora_rank 48" "sigmoid, noaux_tc (4 groups, keep 2)" \
    "renormalised, scale 2"

# published totals: 3.37 B / 16.1 B / 27.5 B, exact counts of spec 1.3
OPTS=--config-only
for name in tiny small base; do
    "$MK" --preset "$name" --config-only --quiet --out "$T/$name" || bad "mkweights $name"
done
# activated per token: spec 0.995 B / 2.878 B / 4.555 B
expect_ok "$T/tiny" "total 3370501440 (3.37 B)" "activated per token 99" "(994.7 M)"
expect_ok "$T/small" "total 16148349504 (16.15 B)" "(2.88 B)"
expect_ok "$T/base" "total 27480134248 (27.48 B)" "(4.56 B)"
OPTS=

# broken directories: one line naming the problem, exit 1
mkdir "$T/noweights"; cp "$MHA/config.json" "$T/noweights/"
expect_fail "$T/noweights" "neither model.safetensors.index.json nor model.safetensors"
mkdir "$T/noconfig"
expect_fail "$T/noconfig" "config.json"
mkdir "$T/badkey"
sed 's/"num_attention_heads": 4/"num_attention_heads": 0/' "$MHA/config.json" > "$T/badkey/config.json"
expect_fail "$T/badkey" "language_config.num_attention_heads" "= 0"
mkdir "$T/trunc"; cp "$MHA/config.json" "$T/trunc/"
head -c 100000 "$MHA/model.safetensors" > "$T/trunc/model.safetensors"
expect_fail "$T/trunc" "model.safetensors" "past the end"
mkdir "$T/mismatch"; cp "$MLA/config.json" "$T/mismatch/"
ln -s "$(cd "$MHA" && pwd)/model.safetensors" "$T/mismatch/model.safetensors"
expect_fail "$T/mismatch" "9 missing" "6 unexpected" "kv_a_proj_with_mqa" "k_proj" \
    "expected [96, 64]"
mkdir "$T/usage"
"$VL2D" check-model >/dev/null 2>&1; [ $? -eq 2 ] || bad "no DIR: exit status is not 2"

# --scan reads every value: one NaN is found and named
OPTS=--scan
expect_ok "$MHA" "scan:        every value finite"
mkdir "$T/nan"; cp "$MHA/config.json" "$MHA/model.safetensors" "$T/nan/"
hl=$(od -An -t u8 -N 8 "$T/nan/model.safetensors" | tr -d ' ')
# bf16 0x7fc0 (NaN), little endian, as element 50 of the first tensor (vision.pos_embed)
printf '\300\177' | dd of="$T/nan/model.safetensors" bs=1 seek=$((8 + hl + 100)) conv=notrunc \
    2>/dev/null
expect_fail "$T/nan" "tensor 'vision.pos_embed': 1 NaN or infinite values"
OPTS=
expect_ok "$T/nan" "tiny-like (MHA)"

# a sharded copy written by mkweights opens through its index
"$MK" --preset micro-mha --shard-size 8M --quiet --out "$T/sharded" || bad "mkweights sharded"
expect_ok "$T/sharded" "in 4 files" "tiny-like (MHA)"
[ -f "$T/sharded/model.safetensors.index.json" ] || bad "no index written"
rm "$T/sharded/model-00003-of-000004.safetensors"
expect_fail "$T/sharded" "shard 'model-00003-of-000004.safetensors'" "missing"

# our own dense preset; a different seed gives different weights, the same seed the same
"$MK" --preset mini-dense --quiet --out "$T/dense" || bad "mkweights mini-dense"
expect_ok "$T/dense" "routing:     none (dense language model)" "2 layers (2 dense, 0 MoE)"
"$MK" --preset micro-mha --seed 1001 --quiet --out "$T/s1001" || bad "mkweights --seed 1001"
"$MK" --preset micro-mha --seed 7 --quiet --out "$T/s7" || bad "mkweights --seed 7"
cmp -s "$MHA/model.safetensors" "$T/s1001/model.safetensors" || bad "--seed 1001 (the default) differs"
cmp -s "$T/s7/model.safetensors" "$T/s1001/model.safetensors" && bad "--seed 7 gives the same file"
"$MK" --preset nosuch --out "$T/x" >/dev/null 2>&1; [ $? -eq 2 ] || bad "unknown preset: not exit 2"

[ $fail -eq 0 ] && echo "test-check-model: ok"
exit $fail
