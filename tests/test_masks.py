"""Kernel-level masks: one global threshold over 2-D kernels, masks that survive fine-tuning (weights, gradients
and optimizer state), masks stored in checkpoints, RepConv branches tied, exports that keep the zeros."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.cli import main
from yolo_prune.errors import PruningError
from yolo_prune.models import build_model
from yolo_prune.models.classify import build_classifier
from yolo_prune.prune.masks import apply_masks, kernel_masks, masked_step, sparsity_report


def _reference(model: nn.Module, percent: float) -> set[tuple[str, int, int]]:
    """Brute force: every kernel as (score, size), ascending; mask until the parameter target is reached."""
    kernels = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().numpy()
            for o in range(w.shape[0]):
                for i in range(w.shape[1]):
                    kernels.append((float(np.abs(w[o, i]).max()), w[o, i].size, f"{name}.weight", o, i))
    total = sum(k[1] for k in kernels)
    order = sorted(range(len(kernels)), key=lambda j: kernels[j][0])  # stable: ties by position
    masked, count = set(), 0
    for j in order:
        if count >= percent * total:
            break
        masked.add(kernels[j][2:])
        count += kernels[j][1]
    return masked


@pytest.mark.parametrize("percent", [0.2, 0.55, 0.9])
def test_global_threshold_matches_brute_force(percent):
    torch.manual_seed(0)
    model = build_classifier("resnet18", nc=10, width=0.125)
    masks = kernel_masks(model, percent, "max-abs")
    got = {(n, o, i) for n, m in masks.items() for o, i in zip(*torch.nonzero(~m[:, :, 0, 0], as_tuple=True))}
    got = {(n, int(o), int(i)) for n, o, i in got}
    assert got == _reference(model, percent)
    apply_masks(model, masks)
    rows = sparsity_report(model)
    zero, total = sum(r.zero_params for r in rows), sum(r.params for r in rows)
    assert percent <= zero / total < percent + 0.01  # whole kernels: at most one kernel over the target
    assert all(r.zero_params == r.zero_kernels * (r.params // r.kernels) for r in rows)


def test_repconv_branches_are_masked_together_and_fuse_to_zero():
    from yolo_prune.models.fuse import fuse

    torch.manual_seed(0)
    model = build_model("yolov7", nc=2, widths=[max(8, w // 8) for w in build_model("yolov7").widths()]).eval()
    masks = kernel_masks(model, 0.8, "max-abs")
    rep = "model.102"
    dense, one = masks[f"{rep}.rbr_dense.0.weight"], masks[f"{rep}.rbr_1x1.0.weight"]
    assert torch.equal(dense[:, :, 1, 1], one[:, :, 0, 0]) and not dense.all()
    apply_masks(model, masks)
    fused = fuse(copy.deepcopy(model))
    kernel = fused.get_submodule(f"{rep}.rbr_reparam").weight
    assert torch.equal(kernel.abs().amax((2, 3)) == 0, ~dense[:, :, 0, 0])


def test_optimizer_state_cannot_revive_masked_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    masks = kernel_masks(model, 0.5)
    apply_masks(model, masks)
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                torch.optim.Adam(model.parameters(), lr=0.1)):
        model(torch.rand(2, 3, 8, 8)).sum().backward()
        opt.step()  # an unmasked step leaves momentum/moments at the masked positions
        apply_masks(model, masks)
        for _ in range(3):
            opt.zero_grad()
            model(torch.rand(2, 3, 8, 8)).pow(2).sum().backward()
            masked_step(model, masks, opt.step, opt)
            for name, mask in masks.items():
                p = model.get_parameter(name)
                assert torch.all(p[~mask] == 0) and torch.any(p[mask] != 0)
                assert all(torch.all(v[~mask] == 0) for v in opt.state[p].values()
                           if isinstance(v, torch.Tensor) and v.shape == p.shape)


def test_classifier_masked_fine_tuning_keeps_zeros_and_masks(tmp_path, capsys):
    from yolo_prune.engine.classify import ClassifySettings, train_classifier

    torch.manual_seed(0)
    base = save_checkpoint(build_classifier("scnnb", nc=10, in_ch=1, img_size=16, width=0.25), tmp_path / "b.pt")
    masked = tmp_path / "k.pt"
    assert main(["mask", "--weights", str(base), "--percent", "0.6", "--output", str(masked)]) == 0
    total_line = capsys.readouterr().out.splitlines()[-2]
    assert total_line.startswith("total") and 60.0 <= float(total_line.split()[-1].rstrip("%")) < 61.0
    masks = load_checkpoint(masked).masks
    assert masks and set(masks) == {"net.features.0.weight", "net.features.4.weight"}
    kw = dict(weights=str(masked), epochs=2, batch_size=64, lr0=0.1, device="cpu", project=str(tmp_path),
              progress=False)
    run = train_classifier(ClassifySettings(**kw, name="ft"))
    for path in (run.best, run.last):
        loaded = load_checkpoint(path)
        assert set(loaded.masks) == set(masks)
        for name, mask in masks.items():
            w = loaded.model.get_parameter(name)
            assert torch.all(w[~mask] == 0) and torch.any(w[mask] != 0)
    assert load_checkpoint(run.best).history[-2]["event"] == "kernel-mask"
    assert main(["mask", "--weights", str(run.best), "--report"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == total_line  # fine-tuning revived nothing


@pytest.mark.slow
def test_yolo_masked_fine_tuning_and_export_keep_zeros(tmp_path):
    import onnx
    from onnx import numpy_helper

    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.engine.trainer import TrainSettings, train

    data = generate_synthetic(tmp_path / "data", n_train=8, n_val=4, img_size=96, n_classes=2, seed=0).data_yaml
    torch.manual_seed(0)
    model = build_model("yolov7-tiny", nc=2, widths=[max(8, w // 4) for w in build_model("yolov7-tiny").widths()])
    base = save_checkpoint(model, tmp_path / "tiny.pt")
    masked = tmp_path / "tiny_k50.pt"
    assert main(["mask", "--weights", str(base), "--percent", "0.5", "--output", str(masked)]) == 0
    masks = load_checkpoint(masked).masks
    run = train(TrainSettings(data=str(data), weights=str(masked), hyp="scratch.tiny", epochs=1, batch_size=4,
                              img_size=96, device="cpu", workers=0, project=str(tmp_path), progress=False))
    tuned = load_checkpoint(run.last)
    assert set(tuned.masks) == set(masks)
    state = tuned.raw["train_state"]["model"]  # the training weights, and the EMA weights saved as the model
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0) and torch.all(tuned.model.get_parameter(name)[~mask] == 0)
        assert torch.any(state[name][mask] != load_checkpoint(masked).model.get_parameter(name)[mask])
    onnx_path = tmp_path / "k50.onnx"
    assert main(["export", "--weights", str(run.best), "--img-size", "96", "--output", str(onnx_path)]) == 0
    graph = onnx.load(str(onnx_path)).graph
    zero_kernels = sum(int((np.abs(numpy_helper.to_array(t)).max(axis=(2, 3)) == 0).sum())
                       for t in graph.initializer if len(t.dims) == 4)
    assert zero_kernels >= sum(int((~m[:, :, 0, 0]).sum()) for m in masks.values())


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code)


def test_mask_flags(tmp_path, capsys):
    assert exit_code(["mask", "--cfg", "scnnb", "--percent", "0.5"]) == 2
    assert "--percent needs --output" in capsys.readouterr().err
    assert exit_code(["mask", "--cfg", "scnnb", "--percent", "1.2", "--output", str(tmp_path / "x.pt")]) == 2
    assert "expected a fraction in (0, 1)" in capsys.readouterr().err
    assert exit_code(["mask", "--cfg", "scnnb", "--percent", "0.5", "--score", "l7", "--output", "x.pt"]) == 2
    assert "invalid choice: 'l7'" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    model = build_classifier("scnnb", nc=10)
    with pytest.raises(PruningError, match="does not fit the model"):
        apply_masks(model, {"net.features.0.weight": torch.ones(3, 3, 3, 3, dtype=torch.bool)})
