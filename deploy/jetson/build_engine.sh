#!/usr/bin/env bash
# Build a TensorRT engine on the Jetson from an ONNX written by `yolo-prune export` (JetPack 5.1.x, TensorRT 8.5).
#
# usage: build_engine.sh MODEL.onnx [options]
#   --out FILE          engine path (default: MODEL.engine)
#   --fp16              FP16 precision
#   --int8              INT8 precision: a Q/DQ ONNX (yolo-prune export --int8) carries its scales (explicit
#                       quantization); any other ONNX needs --calib CACHE (else trtexec uses dummy ranges)
#   --calib CACHE       INT8 calibration cache (write one with: yolo-prune export --format engine --int8
#                       --calib-images DIR --calib-cache CACHE, on any machine with TensorRT)
#   --dla N             run on DLA core N (Xavier: 0 or 1), unsupported layers fall back to the GPU
#   --workspace MIB     builder workspace in MiB (default 2048)
#   --batch N           batch size; with --dynamic the profile spans 1..N (input name "images")
#   --img H W           input size, needed with --dynamic (default 640 640)
#   --dynamic           the ONNX has a dynamic batch axis (yolo-prune export --dynamic-batch)
#   --timing-cache FILE reuse/refresh a timing cache (faster rebuilds)
# After building, the engine's JSON (TensorRT version, bindings, export metadata) is written next to it when
# yolo-prune is importable, so deploy/jetson/infer.py can load the engine (it refuses version mismatches).
set -euo pipefail

die() { echo "build_engine.sh: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: build_engine.sh MODEL.onnx [--fp16] [--int8 --calib CACHE] [--dla N] [--workspace MIB]"
ONNX=$1; shift
[[ -f $ONNX ]] || die "no such ONNX file: $ONNX"
OUT=${ONNX%.onnx}.engine
WORKSPACE=2048 BATCH=1 H=640 W=640 DYNAMIC=0
FLAGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --fp16) FLAGS+=(--fp16); shift ;;
    --int8) FLAGS+=(--int8); INT8=1; shift ;;
    --calib) FLAGS+=("--calib=$2"); CALIB=$2; shift 2 ;;
    --dla) FLAGS+=("--useDLACore=$2" --allowGPUFallback); DLA=$2; shift 2 ;;
    --workspace) WORKSPACE=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --img) H=$2; W=$3; shift 3 ;;
    --dynamic) DYNAMIC=1; shift ;;
    --timing-cache) FLAGS+=("--timingCacheFile=$2"); shift 2 ;;
    *) die "unknown option: $1" ;;
  esac
done
if [[ -n ${INT8:-} && -z ${CALIB:-} ]]; then
  if grep -q -a "QuantizeLinear" "$ONNX"; then  # op types are plain strings in the protobuf
    echo "note: Q/DQ ONNX: explicit quantization, every INT8 scale comes from the graph (no calibration cache)" >&2
  else
    echo "warning: --int8 without --calib: trtexec builds with dummy dynamic ranges; the engine's accuracy is" \
         "meaningless (use it for speed tests only)" >&2
  fi
fi
if [[ -n ${DLA:-} && ! " ${FLAGS[*]} " =~ " --fp16 " && -z ${INT8:-} ]]; then
  echo "note: DLA needs FP16 or INT8; adding --fp16" >&2
  FLAGS+=(--fp16)
fi
FLAGS+=("--memPoolSize=workspace:${WORKSPACE}")
if [[ $DYNAMIC == 1 ]]; then
  FLAGS+=("--minShapes=images:1x3x${H}x${W}" "--optShapes=images:${BATCH}x3x${H}x${W}"
          "--maxShapes=images:${BATCH}x3x${H}x${W}")
fi

TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}
[[ -x $TRTEXEC ]] || die "trtexec not found (JetPack installs it at /usr/src/tensorrt/bin/trtexec; or set TRTEXEC)"
CMD=("$TRTEXEC" "--onnx=$ONNX" "--saveEngine=$OUT" "${FLAGS[@]}")
echo "+ ${CMD[*]}"
"${CMD[@]}"

PYTHON=${PYTHON:-python3}
if "$PYTHON" -c "import yolo_prune.export.tensorrt" 2>/dev/null; then
  "$PYTHON" - "$OUT" "$ONNX" "${FLAGS[@]}" <<'EOF' || echo "note: could not write the engine JSON (see above)" >&2
import sys
from yolo_prune.export.tensorrt import describe_engine, metadata_path
engine, onnx_path, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
describe_engine(engine, onnx_path, {"trtexec": flags})
print(f"wrote {metadata_path(engine)}")
EOF
else
  echo "note: yolo_prune is not importable by $PYTHON; no engine JSON written (infer.py needs it)" >&2
fi
echo "engine: $OUT"
