"""Regenerate ``published_choices.json``: the filters the published ``prune_structured`` keeps on the shared
fixture checkpoint, for criteria 0-5 and a few parameter sets (criterion 6 crashes in the published code).

Not part of the test run: it needs the published pruning code and the official YOLOv7 code (see
../shared/REFERENCE_RUNS.md). Command that made the checked-in file:

    cd <scratch>/ref   # official yolov7 models/ utils/ + the published prune.py + cfg/pruning_config/*.yaml
    PYTHONPATH=<deps>:. TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python <repo>/tests/golden/make_published_choices.py \
        <shared>/fixtures/yolov7-tiny-random-official-format.pt <repo>/tests/golden/published_choices.json

Each layer's kept indices are stored as the first 16 hex digits of sha256 of their JSON list (compact, and a
mismatch still names the layer).
"""
import contextlib
import copy
import hashlib
import io
import json
import sys

import torch

import prune as published  # the published prune.py, importable from the working directory

PARAMETER_SETS = {
    "every-layer-0.5": [(i, 0.5) for i in range(55)],
    "eleven-layers": [(2, 0.5), (8, 0.25), (13, 0.5), (17, 0.75), (21, 0.5), (24, 0.25), (30, 0.5), (35, 0.75),
                      (40, 0.5), (45, 0.25), (50, 0.5)],
    "chain-and-concats": [(0, 0.25), (1, 0.5), (3, 0.3), (4, 0.3), (5, 0.3), (6, 0.3), (7, 0.75), (12, 0.1),
                          (19, 0.5), (20, 0.5), (27, 0.25), (38, 0.5), (39, 0.5), (54, 0.25)],
}


def digest(kept: list[int]) -> str:
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def main(ckpt_path: str, out_path: str) -> None:
    base = torch.load(ckpt_path, map_location="cpu")["model"]
    record: list[list[int]] = []
    original = published.determine_pruned_indices

    def spy(conv, bn, percentage, criterion=0):
        kept = original(conv, bn, percentage, criterion)
        record.append(kept.tolist())
        return kept

    published.determine_pruned_indices = spy
    golden = {}
    for criterion in range(6):
        for name, params in PARAMETER_SETS.items():
            record.clear()
            with contextlib.redirect_stdout(io.StringIO()):
                published.prune_structured(copy.deepcopy(base), params, criterion, tiny=True)
            golden[f"{criterion}/{name}"] = {str(layer): digest(kept) for (layer, _), kept in zip(sorted(params), record)}
    lines = ['{"fixture": "yolov7-tiny-random-official-format.pt",', '"parameter_sets": {']
    lines += [f'  {json.dumps(k)}: {json.dumps(str(v))},' for k, v in PARAMETER_SETS.items()]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["},", '"kept_sha256_16": {']
    lines += [f'  {json.dumps(k)}: {json.dumps(v)},' for k, v in golden.items()]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["}}"]
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
