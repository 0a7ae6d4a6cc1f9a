#!/bin/bash
# tests/gpu/run.sh - the CUDA backend on the GPU machine, in one call:
#   ops     op tests of every op against naive CPU references, graph replay
#           (three times: default options, then mla_chunk=7,mla_decode=0, then
#           mla_qgroup=3,fuse_router=0)
#   golden  vl2-mkweights micro checkpoints (sha256 checked), then for every
#           golden case `vl2d run --backend cuda --dump` compared in C
#           (gpu_golden) with tests/data/golden at the bf16 tolerances
#   tiny    vl2-mkweights tiny, then bench_gpu (TTFT, decode, 16 sequences)
#   small   the same for small
#   memcheck  the op tests (--quick) under compute-sanitizer
#   kernels:PRESET  the device time of every kernel (Nsight Compute), to $OUT
#   kernels:PRESET:REGEX  a full Nsight Compute report of a few decode launches
#           of the kernels matching REGEX (e.g. kernels:small:mla_decode)
#   PRESET:OPTIONS  a benchmark with backend options (bench_gpu
#           --backend-options; plugins/cuda/cuda-options.h lists them), e.g.
#           tiny:profile=1 (device time per op kind) or tiny:graphs=0;
#           sampling=host among them is bench_gpu's --sampling host.  The
#           test knobs (mla_qgroup=, skip=, ...) need the test build that
#           tests/gpu/prepare.sh makes.
#   micro-mha, micro-mla  the benchmark on a micro checkpoint (dry runs)
# Steps run in the order given (default: ops golden tiny).  Binaries come
# from .gpu/ (tests/gpu/prepare.sh on the build machine; the device call
# carries it).  Results: $OUT/run.log (everything) and $OUT/table.md.
#
#     tests/gpu/run.sh [ops] [golden] [tiny] [small]
#
# A dry run of the script without a GPU, on the CPU backend (op tests with
# --any-backend, golden parity and benchmarks through the CPU plugin):
#     VL2_GPU_BACKEND=cpu VL2_GPU_PLUGIN_DIR=build/plugins/cpu tests/gpu/run.sh ops golden micro-mla
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/gpu-out}
G=${VL2_GPU_DIR:-$ROOT/.gpu}   # another prepared folder (a baseline build): VL2_GPU_DIR
W=${VL2_GPU_WORK:-/tmp/vl2-gpu}
STEPS=${*:-ops golden tiny}
# dry runs of the script elsewhere: VL2_GPU_BACKEND=cpu VL2_GPU_PLUGIN_DIR=build/plugins/cpu
BACKEND=${VL2_GPU_BACKEND:-cuda}
PLUGDIR=${VL2_GPU_PLUGIN_DIR:-$G/plugins}
mkdir -p "$OUT" "$W"
LOG=$OUT/run.log
TABLE=$OUT/table.md
: > "$TABLE"
fails=0

log() { echo "$*" | tee -a "$LOG"; }
note_fail() { fails=$((fails + 1)); log "FAILED: $*"; }

if [ ! -x "$G/bin/vl2d" ]; then
    echo "run.sh: $G/bin/vl2d missing: run tests/gpu/prepare.sh first and carry .gpu" >&2
    exit 2
fi
export LD_LIBRARY_PATH=$G/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cuBLAS: /usr/local/cuda/lib64 (rpath of the plugin), else wherever it is
if ! ldd "$G/plugins/vl2-backend-cuda.so" | grep -q 'libcublas.so.13 => /'; then
    d=$(dirname "$(find / -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)")
    [ -n "$d" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
    d=$(dirname "$(find / -name 'libcudart.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)")
    [ -n "$d" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
fi
ldd "$G/plugins/vl2-backend-cuda.so" | grep -E 'cublas|cudart' | tee -a "$LOG"

log "== $(date -u +%FT%TZ) steps: $STEPS"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv,noheader 2>&1 | tee -a "$LOG"
log "host: $(nproc) cores, $(grep MemTotal /proc/meminfo | awk '{print $2/1048576 " GiB"}'), " \
    "disk free $(df -h "$W" | awk 'NR==2 {print $4}')"

# tokenizer directory for vl2-mkweights (tokenizer.json is stored compressed)
TOK=$W/tokenizer
mkdir -p "$TOK"
[ -f "$TOK/tokenizer.json" ] || gzip -dc "$ROOT/data/tokenizer/tokenizer.json.gz" > "$TOK/tokenizer.json"
cp "$ROOT/data/tokenizer/tokenizer_config.json" "$TOK/"

mkw() {  # preset
    case $1 in tiny|small|base)  # the disk holds one real-size checkpoint at a time
        for o in tiny small base; do [ "$o" = "$1" ] || rm -rf "${W:?}/$o"; done ;;
    esac
    if [ ! -f "$W/$1/config.json" ]; then
        local t0=$SECONDS
        "$G/bin/vl2-mkweights" --preset "$1" --out "$W/$1" --tokenizer-dir "$TOK" --quiet \
            >> "$LOG" 2>&1 || { note_fail "vl2-mkweights $1"; return 1; }
        log "vl2-mkweights $1: $((SECONDS - t0)) s"
    fi
}

OPS_PLUGIN=$PLUGDIR/vl2-backend-$BACKEND.so
OPS_ARGS=()
[ "$BACKEND" = cuda ] || OPS_ARGS=(--any-backend)

ops_again() {  # options, why: the op tests once more with these backend options
    log "== op tests with options $1 ($2)"
    if [ "$BACKEND" != cuda ]; then
        log "(skipped: the options are the CUDA backend's)"
        return
    fi
    timeout 300 "$G/bin/test_cuda_ops" "$OPS_PLUGIN" --options "$1" 2>&1 | tee -a "$LOG" |
        grep -E 'FAIL|checks'
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || note_fail "op tests, $1 (exit $rc)"
    { echo "with $1: $(grep -E '^[0-9]+ checks' "$LOG" | tail -1)"; echo; } >> "$TABLE"
}

step_ops() {
    log "== op tests"
    timeout 300 "$G/bin/test_cuda_ops" "$OPS_PLUGIN" "${OPS_ARGS[@]}" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || note_fail "op tests (exit $rc)"
    { echo "### op tests"; echo; grep -E '^[0-9]+ checks' "$LOG" | tail -1; echo; } >> "$TABLE"
    ops_again mla_chunk=7,mla_decode=0 "cuBLAS passes of 7 query rows, the tile kernel for decode"
    ops_again mla_qgroup=3,fuse_router=0 "MLA decode queries in uneven blocks of 3, routing in two kernels"
}

step_golden() {
    local gd=$ROOT/tests/data/golden p c img rc
    log "== golden parity (vl2d run --backend cuda --dump)"
    {
        echo "### golden parity, CUDA backend (bf16 tolerances: features 5e-2, logits 2e-2)"
        echo
        echo "| case | pixels | vision_features | projector_out | inputs_embeds | logits[0] |" \
             "logits[1] | generated ids | |"
        echo "|---|---|---|---|---|---|---|---|---|"
    } >> "$TABLE"
    for p in micro-mha micro-mla micro-base; do
        mkw "$p" || continue
        if ! (cd "$W/$p" && sha256sum model.safetensors | cut -d' ' -f1 |
              cmp -s - <(cut -d' ' -f1 "$gd/$p/model.safetensors.sha256")); then
            note_fail "$p checkpoint sha256 differs from the golden one"
        fi
        for c in a384 wide tall textonly; do
            case $c in
                a384) img=(--image "$ROOT/data/images/g_a_384.jpg") ;;
                wide) img=(--image "$ROOT/data/images/g_b_wide.png") ;;
                tall) img=(--image "$ROOT/data/images/g_c_tall.jpg") ;;
                *) img=() ;;
            esac
            rm -rf "$W/dump/$p/$c"
            mkdir -p "$W/dump/$p"
            timeout 120 "$G/bin/vl2d" run --backend "$BACKEND" --plugin-dir "$PLUGDIR" \
                --model "$W/$p" "${img[@]}" --input-ids-json "$gd/$p/$c/input_ids.json" \
                --max-new-tokens 12 --dump "$W/dump/$p/$c" > "$W/dump/$p/$c.out" 2>&1
            rc=$?
            if [ $rc != 0 ]; then
                cat "$W/dump/$p/$c.out" | tail -5 | tee -a "$LOG"
                note_fail "vl2d run $p $c (exit $rc)"
                echo "| $p $c | vl2d run failed ($rc) | | | | | | | FAIL |" >> "$TABLE"
                continue
            fi
            "$G/bin/gpu_golden" --golden "$gd/$p/$c" --dump "$W/dump/$p/$c" \
                --pixels "$gd/pixels/$c" --label "$p $c" > "$W/cmp.txt" 2>&1
            rc=$?
            cat "$W/cmp.txt" >> "$LOG"
            grep '^|' "$W/cmp.txt" >> "$TABLE"
            [ $rc = 0 ] || note_fail "golden $p $c"
        done
    done
    echo >> "$TABLE"
}

COPY_GBPS=
step_bw() {
    [ -n "$COPY_GBPS" ] && return
    "$G/bin/gpu_bw" 2048 > "$W/bw.txt" 2>&1
    cat "$W/bw.txt" | tee -a "$LOG"
    COPY_GBPS=$(awk '/copy_GBps/ {print $2}' "$W/bw.txt")
    { echo "device copy bandwidth (read + write) $COPY_GBPS GB/s," \
           "read $(awk '/read_GBps/ {print $2}' "$W/bw.txt") GB/s"; echo; } >> "$TABLE"
}

BENCH_HEAD=0
step_bench() {  # preset [options]
    local p=$1 opt=${2:-} rc label=$1 steps=128
    [ -n "$opt" ] && label="$p ($opt)"
    case $opt in *profile=1*) steps=32 ;; esac
    log "== benchmark $label"
    step_bw
    mkw "$p" || return
    nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,utilization.gpu \
        --format=csv,noheader,nounits -lms 100 > "$W/clocks.txt" 2>/dev/null &
    local smi=$!
    local sampling=device   # option sampling=host: logits read back, sampled on the host
    local bopt             # the rest: backend options
    bopt=$(echo "$opt" | tr ',' '\n' | grep -v '^sampling=' | paste -sd, -)
    case ,$opt, in *,sampling=host,*) sampling=host ;; esac
    VL2_BENCH_BACKEND=$BACKEND timeout 480 "$G/bin/bench_gpu" --model "$W/$p" \
        --image "$ROOT/data/images/g_a_384.jpg" --plugin-dir "$PLUGDIR" \
        --copy-gbps "${COPY_GBPS:-0}" --decode-steps $steps --batch 16 --label "$label" \
        --sampling $sampling ${bopt:+--backend-options "$bopt"} > "$W/bench.txt" 2>&1
    rc=$?
    kill $smi 2>/dev/null
    wait $smi 2>/dev/null
    cat "$W/bench.txt" | tee -a "$LOG"
    sort -t, -k1 -n "$W/clocks.txt" | awk -F, 'NF >= 4 { sm[n] = $1; mem[n] = $2; p[n++] = $3 }
        END { if (n) printf "clocks during the run (%d samples): SM min %s median %s max %s MHz, " \
              "memory %s MHz, power median %s W\n", n, sm[0], sm[int(n / 2)], sm[n - 1],
              mem[int(n / 2)], p[int(n / 2)] }' | tee -a "$LOG"
    [ $rc = 0 ] || note_fail "bench $p (exit $rc)"
    if [ $BENCH_HEAD = 0 ]; then
        {
            echo "### speed, CUDA backend, $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
            echo
            echo "| model | TTFT 384x384 (ms) | decode b=1 (tok/s) | share of bw limit |" \
                 "16 seqs (tok/s) | share | GPU mem (GiB) | KV bytes/token |"
            echo "|---|---|---|---|---|---|---|---|"
        } >> "$TABLE"
        BENCH_HEAD=1
    fi
    grep '^|' "$W/bench.txt" >> "$TABLE"
}

step_ncu() {  # a few decode kernels of tiny, timed by Nsight Compute
    local nc
    nc=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [ -z "$nc" ]; then
        log "ncu not found, skipped"
        return
    fi
    mkw tiny || return
    log "== ncu: decode kernels of tiny"
    timeout 240 "$nc" --clock-control none --graph-profiling node \
        --kernel-name regex:'attn_kernel|route_small_kernel|route_kernel|bucket_kernel|gemv_kernel|combine_kernel' \
        --launch-skip 2000 --launch-count 40 \
        --metrics gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second,dram__bytes_read.sum,launch__grid_size \
        "$G/bin/bench_gpu" --model "$W/tiny" --image "$ROOT/data/images/g_a_384.jpg" \
        --plugin-dir "$G/plugins" --decode-steps 8 --batch 2 --label ncu > "$W/ncu.txt" 2>&1
    grep -E '^  [a-z_]+.*\(|gpu__time_duration|sm__cycles_elapsed|dram__bytes_read|launch__grid_size' \
        "$W/ncu.txt" | sed 's/  */ /g' | tee -a "$LOG" | tail -200 > /dev/null
}

step_kernels() {  # preset [regex]: device time of every kernel, or a full Nsight Compute
    local nc p=$1 rx=${2:-}       # report (warp stalls, throughput) of the kernels matching regex
    nc=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [ -z "$nc" ]; then
        log "ncu not found, skipped"
        return
    fi
    mkw "$p" || return
    if [ -z "$rx" ]; then
        log "== ncu: every kernel of $p (TTFT runs, decode 4 steps, batch 1)"
        timeout 420 "$nc" --clock-control none --graph-profiling node --csv --print-units base \
            --metrics gpu__time_duration.sum,dram__bytes_read.sum --launch-count 16000 \
            "$G/bin/bench_gpu" --model "$W/$p" --image "$ROOT/data/images/g_a_384.jpg" \
            --plugin-dir "$G/plugins" --decode-steps 4 --batch 1 --label "ncu $p" \
            > "$W/kernels_$p.csv" 2> "$W/kernels_$p.err"
        log "ncu exit $?: $(wc -l < "$W/kernels_$p.csv") lines"
        tail -3 "$W/kernels_$p.err" | tee -a "$LOG"
        gzip -c "$W/kernels_$p.csv" > "$OUT/kernels_$p.csv.gz"
        return
    fi
    # the decode steps come after the prefill runs: skip the first matches
    log "== ncu: full report of $p kernels matching $rx (decode, batch 1)"
    timeout 420 "$nc" --clock-control none --graph-profiling node --set full \
        --kernel-name regex:"$rx" --launch-skip 300 --launch-count 4 \
        "$G/bin/bench_gpu" --model "$W/$p" --image "$ROOT/data/images/g_a_384.jpg" \
        --plugin-dir "$G/plugins" --decode-steps 16 --batch 1 --label "ncu $p" \
        > "$W/ncu_full_$p.txt" 2>&1
    log "ncu exit $?"
    gzip -c "$W/ncu_full_$p.txt" > "$OUT/ncu_full_$p.txt.gz"
    grep -E 'Duration|Warp Cycles Per Issued|Stall|Achieved Occupancy|Registers|Shared Memory Config|Block Limit' \
        "$W/ncu_full_$p.txt" | head -60 | tee -a "$LOG" > /dev/null
}

step_memcheck() {
    local cs
    log "== op tests under compute-sanitizer memcheck"
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    if [ -z "$cs" ]; then
        log "compute-sanitizer not found, skipped"
        return
    fi
    timeout 400 "$cs" --tool memcheck --leak-check no --report-api-errors no --print-limit 20 \
        "$G/bin/test_cuda_ops" "$G/plugins/vl2-backend-cuda.so" --quick > "$W/memcheck.txt" 2>&1
    local rc=$?
    tail -40 "$W/memcheck.txt" | tee -a "$LOG"
    grep -q "ERROR SUMMARY: 0 errors" "$W/memcheck.txt" || note_fail "memcheck (exit $rc)"
    { echo "memcheck: $(grep 'ERROR SUMMARY' "$W/memcheck.txt" | tail -1)"; echo; } >> "$TABLE"
}

for s in $STEPS; do
    case $s in
        ops) step_ops ;;
        golden) step_golden ;;
        memcheck) step_memcheck ;;
        ncu) step_ncu ;;
        kernels:*:*) k=${s#kernels:}; step_kernels "${k%%:*}" "${k#*:}" ;;
        kernels:*) step_kernels "${s#*:}" ;;
        tiny|small|base|micro-mha|micro-mla) step_bench "$s" ;;
        tiny:*|small:*|base:*|micro-mha:*|micro-mla:*) step_bench "${s%%:*}" "${s#*:}" ;;
        *) note_fail "unknown step $s" ;;
    esac
done
echo | tee -a "$TABLE" > /dev/null
log "== done: $fails failure(s)"
cat "$TABLE"
[ $fails = 0 ]
