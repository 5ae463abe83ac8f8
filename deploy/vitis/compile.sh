#!/usr/bin/env bash
# Compile a quantized yolo-prune model for a Vitis AI DPU board.
#
# usage: compile.sh MODEL TARGET [--out DIR] [--name NAME] [--arch ARCH.json] [--config vaip_config.json]
#   MODEL   MODEL.int8.onnx from `yolo-prune export --format vitis-int8` (power-of-two INT8 QDQ), or an
#           MODEL.xmodel quantized by vai_q_pytorch / vai_q_onnx's xmodel export
#   TARGET  zcu102 | zcu104 | kv260        DPUCZDX8G   (Vitis AI 3.0)
#           vck190                         DPUCVDX8G   (Vitis AI 3.0)
#           vek280 | v70                   DPUCV2DX8G  (Vitis AI 3.5)
#
# .xmodel: runs the XIR compiler in the Vitis AI docker:
#     vai_c_xir -x MODEL.xmodel -a /opt/vitis_ai/compiler/arch/<DPU>/<BOARD>/arch.json -o DIR -n NAME
# .onnx:   the Vitis AI Execution Provider of ONNX Runtime compiles the DPU subgraphs when a session is
#          created (on the board, with its vaip_config.json) and caches them; this script does that once,
#          ahead of time, through run_vitis.py --compile-only, so the first real run starts at once.
# Environment: VAI_C_XIR (compiler path), PYTHON (interpreter for the ONNX path), VAI_ARCH_ROOT (arch folder).
set -euo pipefail

die() { echo "compile.sh: $*" >&2; exit 2; }
[[ $# -ge 2 ]] || die "usage: compile.sh MODEL(.int8.onnx|.xmodel) TARGET(zcu102|zcu104|kv260|vck190|vek280|v70) [--out DIR]"
MODEL=$1 TARGET=$2; shift 2
[[ -f $MODEL ]] || die "no such model file: $MODEL"
case $TARGET in
  zcu102) DPU=DPUCZDX8G BOARD=ZCU102 VAI=3.0 ;;
  zcu104) DPU=DPUCZDX8G BOARD=ZCU104 VAI=3.0 ;;
  kv260)  DPU=DPUCZDX8G BOARD=KV260 VAI=3.0 ;;
  vck190) DPU=DPUCVDX8G BOARD=VCK190 VAI=3.0 ;;
  vek280) DPU=DPUCV2DX8G BOARD=VEK280 VAI=3.5 ;;
  v70)    DPU=DPUCV2DX8G BOARD=V70 VAI=3.5 ;;
  *) die "unknown target '$TARGET': choose zcu102, zcu104, kv260, vck190, vek280 or v70" ;;
esac
BASE=$(basename "$MODEL"); NAME=${BASE%%.*}
OUT=compiled_${NAME}_${TARGET}
ARCH=${VAI_ARCH_ROOT:-/opt/vitis_ai/compiler/arch}/$DPU/$BOARD/arch.json
CONFIG=${VAIP_CONFIG:-/etc/vaip_config.json}
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    *) die "unknown option: $1" ;;
  esac
done
echo "target $TARGET: $DPU (Vitis AI $VAI)"
if [[ ! -e $OUT ]]; then  # a folder this run creates is removed again if the compile fails (no half-written output)
  trap 'rc=$?; [[ $rc -eq 0 ]] || rm -rf -- "$OUT"; exit $rc' EXIT
fi
mkdir -p "$OUT"

case $MODEL in
  *.xmodel)
    [[ -f $ARCH ]] || die "arch.json not found: $ARCH (inside the Vitis AI $VAI docker, or pass --arch FILE)"
    VAI_C=${VAI_C_XIR:-$(command -v vai_c_xir || true)}
    [[ -n $VAI_C ]] || die "vai_c_xir not found: run inside the Vitis AI $VAI docker (conda activate vitis-ai-*)"
    CMD=("$VAI_C" -x "$MODEL" -a "$ARCH" -o "$OUT" -n "$NAME")
    echo "+ ${CMD[*]}"
    "${CMD[@]}"
    echo "compiled: $OUT/$NAME.xmodel (subgraphs the compiler left on the CPU are listed above)"
    ;;
  *.onnx)
    HERE=$(cd "$(dirname "$0")" && pwd)
    PY=${PYTHON:-python3}
    CMD=("$PY" "$HERE/run_vitis.py" --model "$MODEL" --compile-only --config-file "$CONFIG" --cache-dir "$OUT"
         --cache-key "$NAME")
    echo "+ ${CMD[*]}"
    "${CMD[@]}"
    echo "compiled into the Vitis AI EP cache: $OUT/$NAME (run_vitis.py --cache-dir $OUT --cache-key $NAME reuses it)"
    ;;
  *) die "$MODEL: expected a .int8.onnx (yolo-prune export --format vitis-int8) or an .xmodel" ;;
esac
