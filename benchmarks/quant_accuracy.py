"""INT8 accuracy: float vs every PTQ variant vs QAT, for Vitis AI DPUs and TensorRT Q/DQ, measured with the CLI.

Every row is a list of `yolo-prune` commands (an export, then `yolo-prune test` on the val split); the mAP comes
from `yolo-prune test --json` (pycocotools mAP@.5:.95 on the data YAML's val images). One invocation measures one
model (``--label``); rows accumulate in ``--results`` (JSON, resumable: a row whose commands did not change is not
run again), so models trained at different times share one table. ``--write`` renders every model of the JSON
into BENCHMARKS.md's "INT8 accuracy" section. QAT checkpoints come from `yolo-prune train --qat` (their
commands are passed in with ``--qat-*-cmd`` and printed in the table).

    .venv/bin/python benchmarks/quant_accuracy.py --label demo --weights yolo_prune/assets/yolov7-tiny-synth.pt \\
        --data data/synth/data.yaml --img 256 --quark-variants --qat-dpu runs/qat/weights/best.pt --jobs 4
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import REPO, command_line, machine, provenance, write_section  # noqa: E402

from yolo_prune.fileio import write_text_atomic  # noqa: E402

SECTION = "## INT8 accuracy (Vitis AI DPU and TensorRT Q/DQ)"
QUARK_VARIANTS = {"+ CLE": ["--quark-algo", "cle"], "+ bias correction": ["--quark-algo", "bias-correction"],
                  "+ AdaRound": ["--quark-algo", "adaround"], "+ AdaQuant": ["--quark-algo", "adaquant"],
                  "MinMax calibration": ["--calib-method", "minmax"]}


def rows_for(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of one model: (target, method, commands), the last command a `yolo-prune test`."""
    work, w = Path(a.work) / a.label, a.weights
    calib = ["--data", a.calib_data or a.data, "--calib-count", str(a.calib_count)]
    size = ["--img-size", str(a.img)]

    def test(weights: str | Path) -> list[str]:
        return ["test", "--weights", str(weights), "--data", a.data, "--img", str(a.img), "--batch-size", "8",
                "--workers", "0", "--json"]

    def export(name: str, weights: str, *flags: str) -> list[list[str]]:
        out = work / name
        return [["export", "--weights", weights, *flags, *size, "--output", str(out)], test(out)]

    rows = [("float", "float (PyTorch)", [test(w)])]
    if a.control:
        rows.append(("float", "float, fine-tuned like QAT (control)", [test(a.control)]))
    rows += [("vitis", "Quark PTQ, one conv per head level (before this work)",
              export("nosplit.int8.onnx", w, "--format", "vitis-int8", "--no-split-head", *calib)),
             ("vitis", "Quark PTQ, head split box/obj/cls (default)", export("split.int8.onnx", w, "--format", "vitis-int8", *calib))]
    if a.quark_variants:
        rows += [("vitis", f"Quark PTQ split {name}", export(f"split_{i}.int8.onnx", w, "--format", "vitis-int8", *flags, *calib))
                 for i, (name, flags) in enumerate(QUARK_VARIANTS.items())]
        rows.append(("vitis", "Quark PTQ, --keep-head-float (3 head convs on the CPU)",
                     export("headfloat.int8.onnx", w, "--format", "vitis-int8", "--keep-head-float", "--no-split-head", *calib)))
    if a.qat_dpu:
        rows.append(("vitis", "QAT (`train --qat dpu`)", export("qat.int8.onnx", a.qat_dpu, "--format", "vitis-int8")))
    rows += [("tensorrt", "yolo-prune PTQ (MSE calibration)", export("ptq.qdq.onnx", w, "--int8", *calib)),
             ("tensorrt", "NVIDIA ModelOpt PTQ (INT8_DEFAULT_CFG)",
              export("modelopt.qdq.onnx", w, "--int8", "--quantizer", "modelopt", *calib))]
    if a.qat_trt:
        rows.append(("tensorrt", "QAT (`train --qat tensorrt`)", export("qat.qdq.onnx", a.qat_trt, "--int8")))
    return [{"model": a.label, "target": t, "method": m, "commands": c} for t, m, c in rows]


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """Run a row's commands (one thread each, quiet); parse the test's ``all`` line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    started = time.time()
    for cmd in row["commands"]:
        done = subprocess.run([sys.executable, "-m", "yolo_prune", *cmd], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            return {**row, "error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    res = json.loads(done.stdout[done.stdout.index("{"):])  # `yolo-prune test --json`
    return {**row, "P": res["mp"], "R": res["mr"], "mAP@.5": res["map50"], "mAP@.5:.95": res["map"],
            "seconds": round(time.time() - started)}


def invocation(argv: list[str]) -> list[str]:
    """``argv`` without ``--note TEXT`` and ``--write`` (what measured the rows, not how the table was written)."""
    out, skip = [], False
    for arg in argv:
        if skip or arg == "--write":
            skip = False
            continue
        skip = arg == "--note"
        if not skip:
            out.append(arg)
    return out


def render(results: list[dict[str, Any]], notes: dict[str, str], argv: list[str],
           runs: dict[str, list[str]] | None = None) -> str:
    """The markdown section: one table per model, deltas against its float row."""
    out = [SECTION, "", "Every number below is `yolo-prune test` (pycocotools mAP@.5:.95) of the exported file on the "
           "model's full val split (ONNX Runtime 1.32 CPU for ONNX files). Every INT8 row quantizes every conv, the "
           "head's output convs included, unless the method says otherwise. Commands per row at the end.", ""]
    for model in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == model]
        base = next((r["mAP@.5:.95"] for r in rows if r["method"] == "float (PyTorch)" and "error" not in r), None)
        out += [f"### {model}", "", notes.get(model, ""), "",
                "| target | method | mAP@.5 | mAP@.5:.95 | vs float (pt) |", "|---|---|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                out.append(f"| {r['target']} | {r['method']} | - | - | failed: {r['error']} |")
                continue
            delta = "" if base is None or r["method"].startswith("float (") else f"{100 * (r['mAP@.5:.95'] - base):+.1f}"
            out.append(f"| {r['target']} | {r['method']} | {r['mAP@.5']:.4f} | {r['mAP@.5:.95']:.4f} | {delta} |")
        out.append("")
    out += ["Commands (`yolo-prune ...`, one row each, in table order):", ""]
    for r in results:
        out.append(f"- {r['model']} / {r['method']}: " + " && ".join(f"`yolo-prune {shlex.join(c)}`" for c in r["commands"]))
    out.append("")
    if runs:
        out += ["Benchmark invocations (the last one per model; rows it skipped were measured by an earlier one):", ""]
        out += [f"- {label}: `{command_line(args)}`" for label, args in runs.items()] + [""]
    env = machine(["onnxruntime", "onnx", "amd-quark", "nvidia-modelopt"])
    return "\n".join(out + provenance(argv, env, ["onnxruntime", "amd-quark", "nvidia-modelopt"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="model name in the table (one table per label)")
    ap.add_argument("--weights", required=True, help="float checkpoint")
    ap.add_argument("--data", required=True, help="data YAML: its val split is evaluated")
    ap.add_argument("--calib-data", default=None, help="data YAML whose train split calibrates (default --data)")
    ap.add_argument("--img", type=int, required=True)
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--control", default=None, help="float checkpoint fine-tuned like the QAT runs (control row)")
    ap.add_argument("--qat-dpu", default=None, help="checkpoint of `yolo-prune train --qat dpu`")
    ap.add_argument("--qat-trt", default=None, help="checkpoint of `yolo-prune train --qat tensorrt`")
    ap.add_argument("--note", default="", help="what the model is and how it and its QAT runs were trained")
    ap.add_argument("--quark-variants", action="store_true", help="also Quark's CLE/bias correction/AdaRound/...")
    ap.add_argument("--work", default="/tmp/quant_accuracy", help="folder for the exported files")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "quant_accuracy.json"))
    ap.add_argument("--jobs", type=int, default=2, help="rows run at once (one CPU thread each)")
    ap.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    ap.add_argument("--skip", nargs="*", default=[], metavar="TEXT",
                    help="leave rows whose method contains TEXT for a later run (their stored results are kept)")
    a = ap.parse_args()
    path = Path(a.results)
    store = json.loads(path.read_text()) if path.exists() else {"results": [], "notes": {}, "models": []}
    if a.label not in store["models"]:
        store["models"].append(a.label)
    done = {(r["model"], r["method"]): r for r in store["results"] if "error" not in r}
    todo = [r for r in rows_for(a) if done.get((r["model"], r["method"]), {}).get("commands") != r["commands"]
            and not any(text in r["method"] for text in a.skip)]
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        for res in pool.map(run_row, todo):
            print(json.dumps({k: res.get(k) for k in ("method", "mAP@.5", "mAP@.5:.95", "error", "seconds")}),
                  flush=True)
            store["results"] = [r for r in store["results"] if (r["model"], r["method"]) != (res["model"], res["method"])]
            store["results"].append(res)
            write_text_atomic(path, json.dumps(store, indent=1))
    if a.note:
        store["notes"][a.label] = a.note
    if todo:
        store.setdefault("runs", {})[a.label] = invocation(sys.argv[1:])
    order = {r["method"]: i for i, r in enumerate(rows_for(argparse.Namespace(**{**vars(a), "control": "c",
                                                  "qat_dpu": "q", "qat_trt": "q", "quark_variants": True})))}
    store["results"].sort(key=lambda r: (store["models"].index(r["model"]), order.get(r["method"], 99)))
    write_text_atomic(path, json.dumps(store, indent=1))
    section = render(store["results"], store["notes"], sys.argv[1:], store.get("runs"))
    print(section)
    if a.write:
        write_section(REPO / "BENCHMARKS.md", section)


if __name__ == "__main__":
    main()
