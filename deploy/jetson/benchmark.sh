#!/usr/bin/env bash
# Time a TensorRT engine with trtexec and report FPS (images per second) on the Jetson.
#
# usage: benchmark.sh MODEL.engine [--batch N --img H W] [--dla N] [--duration S] [--log FILE]
#   --batch N --img H W   shape for engines with a dynamic batch axis (default: the engine's own shape)
#   --dla N               the engine was built for DLA core N
#   --duration S          seconds of timed inference (default 20); warm-up is 2 s
# Lock the clocks first for stable numbers: sudo nvpmodel -m 0 && sudo jetson_clocks
# FPS = trtexec throughput (inferences/s) x batch; the GPU compute time excludes host<->device copies.
set -euo pipefail

die() { echo "benchmark.sh: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: benchmark.sh MODEL.engine [--batch N --img H W] [--dla N] [--duration S]"
ENGINE=$1; shift
[[ -f $ENGINE ]] || die "no such engine: $ENGINE"
BATCH=1 DURATION=20 LOG=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --batch) BATCH=$2; shift 2 ;;
    --img) EXTRA+=("--shapes=images:BATCHx3x$2x$3"); shift 3 ;;
    --dla) EXTRA+=("--useDLACore=$2"); shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --log) LOG=$2; shift 2 ;;
    *) die "unknown option: $1" ;;
  esac
done
EXTRA=("${EXTRA[@]/BATCH/$BATCH}")

TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}
[[ -x $TRTEXEC ]] || die "trtexec not found (JetPack installs it at /usr/src/tensorrt/bin/trtexec; or set TRTEXEC)"
LOG=${LOG:-$(mktemp /tmp/benchmark.XXXXXX.log)}
CMD=("$TRTEXEC" "--loadEngine=$ENGINE" --warmUp=2000 "--duration=$DURATION" --useSpinWait "${EXTRA[@]}")
echo "+ ${CMD[*]}"
"${CMD[@]}" | tee "$LOG"

# trtexec 8.5 prints e.g. "[I] Throughput: 312.5 qps" and "[I] GPU Compute Time: min = ..., mean = 3.1 ms, ..."
QPS=$(grep -Eo 'Throughput: [0-9.]+ qps' "$LOG" | tail -1 | grep -Eo '[0-9.]+' || true)
MEAN=$(grep -E 'GPU Compute Time:' "$LOG" | tail -1 | grep -Eo 'mean = [0-9.]+ ms' | grep -Eo '[0-9.]+' || true)
[[ -n $QPS ]] || die "could not read the throughput from trtexec's output ($LOG)"
FPS=$(awk -v q="$QPS" -v b="$BATCH" 'BEGIN { printf "%.1f", q * b }')
echo "engine: $ENGINE  batch: $BATCH  throughput: $QPS inferences/s  GPU compute mean: ${MEAN:-?} ms  FPS: $FPS"
