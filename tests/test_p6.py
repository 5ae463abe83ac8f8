"""The YOLOv7 P6 family (w6, e6, d6, e6e) from the official cfgs: exact counts, auxiliary heads dropped for
deployment (equal outputs, the deploy cfg's structure), 1280 px and scratch.p6 defaults, graphs with e6e's
Shortcut-coupled layers pruned together."""
from __future__ import annotations

import copy

import pytest
import torch

from yolo_prune.graph import derive_graph
from yolo_prune.models import build_model
from yolo_prune.models.aux import aux_only_layers, drop_aux_heads, has_aux_heads
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.models.fuse import deployable_copy, fuse
from yolo_prune.models.spec import load_cfg
from yolo_prune.prune import prune

P6 = ["yolov7-w6", "yolov7-e6", "yolov7-d6", "yolov7-e6e"]
# What the official code reports for the official cfgs (nc=80): models/yolo.py ``Model`` built from the cfg file,
# ``sum(p.numel())``, ``Model.fuse()`` and thop at 1280x1280 (see README "P6 models" for the reference run):
# training cfg (auxiliary heads included) params, fused params, fused GFLOPs; deploy cfg params, fused, GFLOPs.
OFFICIAL = {
    "yolov7-w6": (82_312_436, 82_277_300, 412.812, 70_426_236, 70_394_300, 359.728),
    "yolov7-e6": (111_898_292, 111_851_380, 580.795, 97_246_652, 97_202_940, 514.439),
    "yolov7-d6": (154_709_364, 154_652_532, 797.306, 133_810_044, 133_757_052, 701.755),
    "yolov7-e6e": (166_408_884, 166_335_860, 908.553, 151_757_244, 151_687_420, 842.198),
}


def _cfg(fixtures_dir, variant: str, name: str, width: float | None = None) -> dict:
    cfg = load_cfg(fixtures_dir / "official-cfg" / variant / f"{name}.yaml")
    if width is not None:
        cfg["width_multiple"] = width
    return cfg


@pytest.mark.parametrize("name", P6)
def test_official_counts(fixtures_dir, name):
    """Parameter and GFLOPs counts equal the official code's, built on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        training = build_model(_cfg(fixtures_dir, "training", name))
        deploy = build_model(_cfg(fixtures_dir, "deploy", name))
    params, fused_params, gflops, deploy_params, deploy_fused, deploy_gflops = OFFICIAL[name]
    assert (count_params(training), count_params(deploy)) == (params, deploy_params)
    fused = fuse(training)  # BN and RepConv, as the official Model.fuse (its implicit layers keep their weights)
    assert count_params(fused) == fused_params and round(count_gflops(fused, 1280), 3) == gflops
    fused = fuse(deploy)
    assert count_params(fused) == deploy_fused and round(count_gflops(fused, 1280), 3) == deploy_gflops
    with torch.device("meta"):
        training = build_model(_cfg(fixtures_dir, "training", name))
    assert count_params(fuse(drop_aux_heads(training), implicit=True)) == deploy_fused


@pytest.mark.parametrize("name", P6)
def test_dropping_aux_heads_keeps_outputs_and_gives_the_deploy_structure(fixtures_dir, name):
    torch.manual_seed(0)
    training = build_model(_cfg(fixtures_dir, "training", name, 0.0625), nc=3).eval()
    assert has_aux_heads(training) and len(aux_only_layers(training)) == 4
    deploy = drop_aux_heads(training)
    assert not has_aux_heads(deploy) and type(deploy.detect).__name__ == "IDetect"
    reference = build_model(_cfg(fixtures_dir, "deploy", name, 0.0625), nc=3)
    assert [type(m).__name__ for m in deploy.model[:-1]] == [type(m).__name__ for m in reference.model[:-1]]
    assert deploy.widths() == reference.widths()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x)[0], training(x)[0], rtol=0, atol=0)
        torch.testing.assert_close(deployable_copy(training)(x)[0], training(x)[0], rtol=1e-4, atol=1e-3)
    assert len(training.train()(x)) == 8 and len(deploy.train()(x)) == 4


def test_export_has_no_auxiliary_heads(fixtures_dir, tmp_path):
    """The ONNX graph of a training P6 model holds exactly the deploy model's weights (aux heads gone)."""
    import onnx

    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions

    torch.manual_seed(0)
    training = build_model(_cfg(fixtures_dir, "training", "yolov7-w6", 0.0625), nc=2).eval()
    export_onnx(training, tmp_path / "w6.onnx", ExportOptions(img_size=(128, 128)))
    graph = onnx.load(str(tmp_path / "w6.onnx")).graph
    convs = sum(node.op_type == "Conv" for node in graph.node)
    deploy = deployable_copy(training)
    assert convs == sum(isinstance(m, torch.nn.Conv2d) for m in deploy.modules())
    assert convs == sum(isinstance(m, torch.nn.Conv2d) for m in training.modules()) - 8  # 4 aux convs + 4 aux heads
    assert len(graph.output) == 4  # raw maps of the four lead levels


def test_p6_defaults(fixtures_dir):
    from yolo_prune.engine.hyp import default_hyp_name

    w6 = build_model(_cfg(fixtures_dir, "training", "yolov7-w6", 0.0625), nc=2)
    tiny = build_model("yolov7-tiny", nc=2)
    assert (w6.is_p6, w6.default_img_size, default_hyp_name(w6)) == (True, 1280, "scratch.p6")
    assert (tiny.is_p6, tiny.default_img_size, default_hyp_name(tiny)) == (False, 640, "scratch.p5")


def test_e6e_shortcuts_pruned_together(fixtures_dir):
    """e6e's Shortcut adds couple their producers: a global rate prunes each group once, with equal filters."""
    torch.manual_seed(0)
    model = build_model(_cfg(fixtures_dir, "training", "yolov7-e6e", 0.0625), nc=2).eval()
    graph = derive_graph(model)
    assert len(graph.groups) == 11 and all(len(g) == 2 for g in graph.groups)  # one per Shortcut row
    result = prune(model, 0.5, "l1", summarize=False)
    for group in graph.groups:
        widths = {result.model.get_submodule(graph[i].name).conv.out_channels for i in group}
        assert len(widths) == 1
    with torch.no_grad():
        assert len(result.model.train()(torch.rand(1, 3, 128, 128))) == 8
