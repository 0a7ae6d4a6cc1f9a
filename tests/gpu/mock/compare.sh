#!/bin/bash
# tests/gpu/mock/compare.sh - host-side equivalence of two revisions of the
# CUDA backend, without a GPU: each revision's host files (plugins/cuda/*.cu
# but the k-*.cu kernels) are built with g++ against a fake CUDA runtime and
# cuBLAS (mockrt.cpp: device memory in one fixed mapping, copies by memcpy)
# and stub kernel launchers generated from that revision's cuda-impl.h
# (gen-stubs.py), which log every argument byte.  The op tests (minus the
# checks of ABI 2 refusals, which a revision without them fails differently)
# and `vl2d run` on the micro checkpoints then run on both; the logs of
# every launch, cuBLAS call, allocation and upload must be identical.
# Then two contexts with different launch options (two-ctx.c) must launch
# with their own settings (new revision only).
# Results of the kernels are not computed (the op tests fail their value
# checks on both sides alike): this proves "same launches", the GPU proves
# "right results".
#
#     tests/gpu/mock/compare.sh OLD_TREE NEW_TREE BUILD_DIR CKPT_DIR [OPTIONS...]
#
# OLD_TREE, NEW_TREE: source trees (e.g. a `git archive` of the old commit);
# BUILD_DIR: a configured build of NEW_TREE with vl2d built; CKPT_DIR: holds
# micro-mha, micro-mla, micro-base (vl2-mkweights --preset ...).  Each
# OPTIONS string is run through the op tests too (the old revision reads
# them from VL2_CUDA_OPTIONS if it has no --options).
set -eu
OLD=$1 NEW=$2 B=$3 CK=$4
shift 4
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/vl2-mock.XXXXXX)
CI=-I/usr/local/cuda/include
g++ -std=c++20 -O1 -fPIC $CI -c "$HERE/mockrt.cpp" -o "$W/mockrt.o"
build() {  # tree tag: $W/tag/vl2-backend-cuda.so
    local t=$1 tag=$2 f objs=()
    mkdir -p "$W/$tag"
    python3 "$HERE/gen-stubs.py" "$t/plugins/cuda/cuda-impl.h" \
        "$(grep -q 'struct vl2__cu_stream' "$t/plugins/cuda/cuda-impl.h" && echo new || echo old)" \
        > "$W/$tag/stubs.cpp"
    for f in "$t"/plugins/cuda/*.cu "$W/$tag/stubs.cpp"; do
        case $(basename "$f") in k-*) continue ;; esac
        g++ -std=c++20 -O1 -fPIC -x c++ -DVL2_TEST_KNOBS $CI -I"$t/plugins" -I"$t/plugins/cuda" \
            -I"$HERE" -w -c "$f" -o "$W/$tag/$(basename "$f").o"
        objs+=("$W/$tag/$(basename "$f").o")
    done
    g++ -shared -o "$W/$tag/vl2-backend-cuda.so" "${objs[@]}" "$W/mockrt.o"
}
build "$OLD" old
build "$NEW" new
python3 - "$NEW/tests/gpu/test_cuda_ops.c" "$W/t.c" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
for call in ("test_open_refusals();", "test_supports_op();", "test_struct_sizes();"):
    s = s.replace(call, "")
s = re.sub(r"if \(!any_backend\) \{\n\s+m\.L\.struct_size = sizeof\(m\.L\) - 4;.*?\n        \}\n",
           "", s, flags=re.S)
open(sys.argv[2], "w").write(s)
PY
gcc -std=gnu11 -O1 -w -I"$NEW/plugins" "$W/t.c" -o "$W/t" -ldl -lm
fails=0
same() {  # what
    if cmp -s "$W/log-old" "$W/log-new"; then
        echo "same: $1 ($(wc -l < "$W/log-new") logged calls)"
    else
        echo "DIFFERENT: $1"; diff "$W/log-old" "$W/log-new" | head -6; fails=$((fails + 1))
    fi
}
for o in "" "$@"; do
    VL2_CUDA_OPTIONS=$o MOCK_LOG=$W/log-old setarch -R "$W/t" "$W/old/vl2-backend-cuda.so" > /dev/null 2>&1 || true
    MOCK_LOG=$W/log-new setarch -R "$W/t" "$W/new/vl2-backend-cuda.so" --options "$o" > /dev/null 2>&1 || true
    same "op tests, options '$o'"
done
# two contexts, different launch settings: each kernel gets its context's
# (the st= bytes of a launch: stream, pdl, gemv_r1); new revision only
gcc -std=gnu11 -O1 -w -I"$NEW/plugins" "$HERE/two-ctx.c" -o "$W/two-ctx" -ldl
if MOCK_LOG=$W/log-new "$W/two-ctx" "$W/new/vl2-backend-cuda.so" > /dev/null; then
    st=$(grep '^vl2__cu_gemv' "$W/log-new" | grep -o 'st=[0-9a-f]*' | cut -c20- | tr '\n' ' ')
    if [ "$st" = "0100000001000000 0000000004000000 " ]; then
        echo "per context: launch settings of two contexts kept apart"
    else
        echo "DIFFERENT: per-context launch settings: $st"; fails=$((fails + 1))
    fi
else
    echo "DIFFERENT: two-ctx failed"; fails=$((fails + 1))
fi
G=$NEW/tests/data/golden
for p in micro-mha micro-mla micro-base; do
    for c in a384 wide tall textonly; do
        case $c in
            a384) img=(--image "$NEW/data/images/g_a_384.jpg") ;;
            wide) img=(--image "$NEW/data/images/g_b_wide.png") ;;
            tall) img=(--image "$NEW/data/images/g_c_tall.jpg") ;;
            *) img=() ;;
        esac
        for v in old new; do
            MOCK_LOG=$W/log-$v setarch -R "$B/daemon/cli/vl2d" run --backend cuda \
                --plugin-dir "$W/$v" --model "$CK/$p" "${img[@]}" \
                --input-ids-json "$G/$p/$c/input_ids.json" --max-new-tokens 12 > /dev/null 2>&1 ||
                echo "vl2d run $p $c on $v failed"
        done
        same "vl2d run $p $c"
    done
done
rm -rf "$W"
echo "$fails difference(s)"
[ $fails = 0 ]
