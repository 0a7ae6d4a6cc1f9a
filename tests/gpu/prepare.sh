#!/bin/sh
# tests/gpu/prepare.sh - on the build machine: build what tests/gpu/run.sh
# needs and gather it, with the shared libraries the GPU machine lacks (found
# with ldd), in the folder .gpu/ at the repository root (git-ignored through
# .git/info/exclude; the device tool carries it with `carry: [".gpu"]`).
#
#     tests/gpu/prepare.sh [BUILD_DIR]      (default build-cuda)
#
# The build directory must be configured with the CUDA backend found, e.g.
#     meson setup build-cuda -Dcuda=enabled -Dsystemd=disabled
# and is switched to a test build (-Dtest_knobs=true) if it is not one.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${1:-build-cuda}
case $B in /*) ;; *) B=$ROOT/$B ;; esac
G=$ROOT/.gpu

# a test build: the test knobs of the backends (plugins/cuda/cuda-options.h)
# that run.sh's op test reruns and ablation benchmarks use
if ! meson configure "$B" | grep -Eq '^ *test_knobs +true'; then
    meson configure "$B" -Dtest_knobs=true
fi
nice ninja -C "$B" plugins/cuda/vl2-backend-cuda.so tests/gpu/test_cuda_ops \
    tests/gpu/gpu_golden tests/gpu/gpu_bw tests/gpu/bench_gpu daemon/cli/vl2d \
    weights/vl2-mkweights data/tokenizer.json

# (a worktree's .git is a file: ask git where its exclude file is)
EXCL=$(git -C "$ROOT" rev-parse --git-path info/exclude 2>/dev/null || echo "$ROOT/.git/info/exclude")
case $EXCL in /*) ;; *) EXCL=$ROOT/$EXCL ;; esac
grep -qx '/.gpu/' "$EXCL" 2>/dev/null || echo '/.gpu/' >> "$EXCL"
rm -rf "$G"
mkdir -p "$G/bin" "$G/lib" "$G/plugins"
cp "$B/plugins/cuda/vl2-backend-cuda.so" "$G/plugins/"
for f in tests/gpu/test_cuda_ops tests/gpu/gpu_golden tests/gpu/gpu_bw tests/gpu/bench_gpu \
         daemon/cli/vl2d weights/vl2-mkweights; do
    cp "$B/$f" "$G/bin/"
done
# every shared library outside glibc, libstdc++ and CUDA (the GPU machine has those)
for f in "$G"/bin/* "$G"/plugins/*; do
    ldd "$f" | awk '/=> \// { print $3 }'
done | sort -u | while read -r lib; do
    case $(basename "$lib") in
        libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|ld-linux*|libstdc++*|\
        libgcc_s*|libcuda*|libcublas*|libcudart*) ;;
        *) cp -L "$lib" "$G/lib/" ;;
    esac
done
echo "prepared $G: $(du -sh "$G" | cut -f1)"
ls "$G/lib"
