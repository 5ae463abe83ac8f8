"""Models from official cfgs: exact parameter/GFLOP figures, forward conventions, fusion exactness."""
from __future__ import annotations

import copy

import pytest
import torch

from yolo_prune.errors import ConfigError
from yolo_prune.models import build_model, available_cfgs
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.models.fuse import fold_implicit, fuse, fuse_conv_bn, fuse_repconv
from yolo_prune.models.spec import load_cfg

OFFICIAL = [  # cfg, params, params fused (BN + RepConv), GFLOPs @640 fused
    ("yolov7", 37_622_682, 36_907_898, 104.514),
    ("deploy/yolov7", 37_620_125, 36_905_341, 104.514),
    ("yolov7-tiny", 6_228_762, 6_221_370, 13.702),
    ("deploy/yolov7-tiny", 6_227_101, 6_219_709, 13.702),
]


@pytest.mark.parametrize("name,params,fused_params,gflops", OFFICIAL)
def test_official_figures(name, params, fused_params, gflops):
    model = build_model(name)
    assert count_params(model) == params
    fuse(model)
    assert count_params(model) == fused_params
    assert round(count_gflops(model, 640), 3) == gflops


@pytest.mark.parametrize("name,n_convs", [("yolov7", 89), ("yolov7-tiny", 55), ("deploy/yolov7", 89)])
def test_conv_counts(name, n_convs):
    model = build_model(name)
    assert len(model.conv_modules()) == n_convs
    assert len(model.detect.head_convs()) == 3


@pytest.mark.parametrize("variant", ["training", "deploy"])
def test_every_official_cfg_builds_and_runs(fixtures_dir, variant):
    for path in sorted((fixtures_dir / "official-cfg" / variant).glob("*.yaml")):
        cfg = load_cfg(path)
        cfg["width_multiple"] = cfg.get("width_multiple", 1.0) / 8  # keep the test fast; routing unchanged
        model = build_model(cfg, nc=3).eval()
        s = int(model.stride.max())
        with torch.no_grad():
            pred, raw = model(torch.rand(1, 3, 2 * s, 2 * s))
        assert pred.shape[-1] == 8 and len(raw) == model.detect.nl, path.name


def test_shipped_cfgs_equal_official(fixtures_dir):
    for name in available_cfgs():
        variant, _, stem = name.rpartition("/")
        ours = load_cfg(__import__("yolo_prune").models.resolve_cfg(name))
        theirs = load_cfg(fixtures_dir / "official-cfg" / (variant or "training") / f"{stem}.yaml")
        for key in ("nc", "anchors", "backbone", "head"):
            assert ours[key] == theirs[key], (name, key)


@pytest.mark.parametrize("name", ["yolov7-tiny", "yolov7", "yolov7x", "deploy/yolov7"])
def test_forward_train_and_eval(name):
    model = build_model(name, nc=4)
    x = torch.rand(2, 3, 64, 96)
    model.train()
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 9), (2, 3, 4, 6, 9), (2, 3, 2, 3, 9)]
    model.eval()
    with torch.no_grad():
        pred, raw = model(x)
    assert pred.shape == (2, 3 * (96 + 24 + 6), 9)
    # decoded xy lie around the image, wh positive, scores in [0, 1]
    assert (pred[..., 2:4] > 0).all() and (pred[..., 4:] >= 0).all() and (pred[..., 4:] <= 1).all()


def test_decoded_boxes_follow_yolov7_formula(tiny_model):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        pred, raw = tiny_model(x)
    head = tiny_model.detect
    r = raw[0].sigmoid()  # [1, na, ny, nx, no]
    gy, gx = 3, 5
    cx = (r[0, 1, gy, gx, 0] * 2 - 0.5 + gx) * head.stride[0]
    w = (r[0, 1, gy, gx, 2] * 2) ** 2 * head.anchor_grid[0, 0, 1, 0, 0, 0]
    idx = (1 * 8 + gy) * 8 + gx
    assert torch.allclose(pred[0, idx, 0], cx) and torch.allclose(pred[0, idx, 2], w)


@pytest.mark.parametrize("name", available_cfgs())
def test_fp16_forward_cpu_every_shipped_cfg(name):
    model = build_model(name, nc=3).half()
    x = torch.rand(1, 3, 64, 64).half()
    with torch.no_grad():
        pred, _ = model.eval()(x)
        raw = model.train()(x)
    assert pred.dtype == torch.float16 and torch.isfinite(pred).all() and pred.shape == (1, 252, 8)
    assert [r.dtype for r in raw] == [torch.float16] * 3


@pytest.mark.gpu
def test_cuda_fp16_matches_fp32(tiny_model):
    model = copy.deepcopy(tiny_model).cuda()
    x = torch.rand(1, 3, 128, 128, device="cuda")
    with torch.no_grad():
        ref = model(x)[0]
        half = model.half()(x.half())[0].float()
    assert torch.allclose(ref, half, atol=0.5, rtol=1e-2)


@pytest.mark.parametrize("how", ["conv_bn", "repconv", "implicit", "all"])
def test_each_fusion_alone_preserves_output(how):
    torch.manual_seed(1)
    model = build_model("yolov7", nc=3).eval()
    for m in model.modules():  # non-trivial BN statistics so folding is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)[0]
        fn = {"conv_bn": fuse_conv_bn, "repconv": fuse_repconv, "implicit": fold_implicit,
              "all": lambda m: fuse(m, implicit=True)}[how]
        out = fn(copy.deepcopy(model))(x)[0]
    assert torch.allclose(ref, out, atol=1e-3, rtol=1e-3)


def test_repconv_with_identity_branch_fuses_exactly():
    from yolo_prune.models.blocks import RepConv

    torch.manual_seed(0)
    rep = RepConv(8, 8, 3, 1).eval()
    for bn in [rep.rbr_identity, rep.rbr_dense[1], rep.rbr_1x1[1]]:
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 8, 10, 10)
    with torch.no_grad():
        ref = rep(x)
        from yolo_prune.models.fuse import merge_repconv
        merge_repconv(rep)
        assert torch.allclose(ref, rep(x), atol=1e-5)


def test_nc_override_and_width_list():
    model = build_model("yolov7-tiny", nc=7)
    assert model.nc == 7 and model.detect.m[0].out_channels == 36
    widths = model.widths()
    widths[3] = 16
    slim = build_model("yolov7-tiny", nc=7, widths=widths)
    assert slim.widths()[3] == 16 and count_params(slim) < count_params(model)


def test_unknown_module_is_named(tmp_path):
    cfg = load_cfg(__import__("yolo_prune").models.resolve_cfg("yolov7-tiny"))
    cfg["backbone"][2] = [-1, 1, "Foo", [32]]
    with pytest.raises(ConfigError, match=r"unknown module 'Foo' at layer 2; known: .*Conv"):
        build_model(cfg)


@pytest.mark.parametrize("bad,match", [
    ([-1, 1, "Conv", [32, 3, 1, None, 1, "os.system('x')"]], "unknown activation"),
    ([5, 1, "Conv", [32]], "not before layer"),
    ([-1, 1, "Conv"], r"expected \[from, number, module, args\]"),
])
def test_bad_rows_are_reported(bad, match):
    cfg = load_cfg(__import__("yolo_prune").models.resolve_cfg("yolov7-tiny"))
    cfg["backbone"][2] = bad
    with pytest.raises(ConfigError, match=match):
        build_model(cfg)


@pytest.mark.parametrize("k", [3, 5, 9, 13])
def test_exact_max_pool_equals_the_k_by_k_pool_and_exports_one_node(k, tmp_path):
    """ExactMaxPool2d gives nn.MaxPool2d's values exactly, in training (row pool then column pool; gradients
    included in sum) and in inference (strided maxima), and ONNX export keeps one k x k MaxPool node."""
    import onnx

    from yolo_prune.models.blocks import SP, ExactMaxPool2d

    torch.manual_seed(k)
    x = torch.randn(2, 5, 11, 7, requires_grad=True)
    ref, ours = torch.nn.MaxPool2d(k, 1, k // 2), ExactMaxPool2d(k, 1, k // 2)
    out = ours(x)
    assert torch.equal(out, ref(x))
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref(x).sum(), x)
    assert torch.equal(g.sum(), g_ref.sum()) and (g >= 0).all()
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
        strided = ExactMaxPool2d(k, 2, k // 2)
        assert torch.equal(strided(x), torch.nn.MaxPool2d(k, 2, k // 2)(x))
    path = tmp_path / "sp.onnx"
    torch.onnx.export(SP(k).eval(), (torch.zeros(1, 4, 16, 16),), str(path), dynamo=False, opset_version=12)
    pools = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 1 and list(pools[0].attribute[[a.name for a in pools[0].attribute].index("kernel_shape")].ints) == [k, k]


@pytest.mark.parametrize("shape", [(2, 3, 11, 7), (1, 1, 1, 1), (3, 2, 16, 16), (1, 2, 13, 3), (2, 4, 6, 9)])
def test_exact_max_pool2d_gives_max_pool2ds_values(shape):
    """The strided-maxima kernels equal F.max_pool2d value for value: odd sizes (floor mode drops the last
    row/column), ties, -inf, NaN (propagates in both), strides 1-3, paddings 0-6, kernels 2-13."""
    import torch.nn.functional as F

    from yolo_prune.models.exact_pool import exact_max_pool2d

    torch.manual_seed(sum(shape))
    x = torch.randn(shape)
    x.view(-1)[1::3] = 0.5  # ties
    x.view(-1)[2::7] = float("-inf")
    if x.numel() > 4:
        x.view(-1)[4] = float("nan")
    checked = 0
    for k, s, p in [(2, 2, 0), (3, 3, 0), (5, 1, 2), (9, 1, 4), (13, 1, 6), (3, 1, 1), (3, 2, 1), (2, 1, 0), (4, 2, 1),
                    (6, 3, 3)]:
        if min(shape[2], shape[3]) + 2 * p < k:
            continue
        ref, ours = F.max_pool2d(x, k, s, p), exact_max_pool2d(x, k, s, p)
        assert ref.shape == ours.shape, (k, s, p)
        assert torch.equal(ref.isnan(), ours.isnan()) and torch.equal(ref.nan_to_num(7.0), ours.nan_to_num(7.0)), (k, s, p)
        checked += 1
    assert checked >= 4


def test_exact_max_pool2d_returns_a_dense_copy_and_refuses_what_max_pool2d_refuses():
    """A new tensor in the input's memory format (never a view of the input: k 1), channels-last kept, the same
    errors as max_pool2d for impossible sizes; forward-mode AD and fx tracing take torch's pool."""
    import torch.autograd.forward_ad as fwAD
    import torch.nn.functional as F

    from yolo_prune.models.blocks import MP, ExactMaxPool2d
    from yolo_prune.models.exact_pool import exact_max_pool2d, exact_pool_applies

    x = torch.randn(2, 3, 9, 9)
    same = ExactMaxPool2d(1, 1)(x)
    same.zero_()
    assert x.abs().sum() > 0
    strided = exact_max_pool2d(x, 3, 2, 1)
    assert strided.is_contiguous() and torch.equal(strided, F.max_pool2d(x, 3, 2, 1))
    last = exact_max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, 1)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, strided)
    for args in [(torch.randn(1, 1, 1, 1), 2, 2, 0), (x, 2, 2, 2)]:
        with pytest.raises(RuntimeError):
            exact_max_pool2d(*args)
    with fwAD.dual_level():
        assert not exact_pool_applies(fwAD.make_dual(x, torch.ones_like(x)))
    assert len(torch.fx.symbolic_trace(MP(2)).graph.nodes) >= 3  # placeholder, pool, output


def test_model_pools_take_the_exact_kernels_only_outside_autograd(monkeypatch):
    """Inference on CPU runs the strided-maxima kernels (and the model output is unchanged); a forward that
    records gradients runs torch's pools."""
    import yolo_prune.models.blocks as blocks

    model = build_model(load_cfg(__import__("yolo_prune").models.resolve_cfg("yolov7-tiny"))).eval()
    calls = []
    real = blocks.exact_max_pool2d
    monkeypatch.setattr(blocks, "exact_max_pool2d", lambda *a: calls.append(a[1:]) or real(*a))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        fast = model(x)[0]
    assert sorted(set(calls)) == [(2, 2, 0), (5, 1, 2), (9, 1, 4), (13, 1, 6)]
    calls.clear()
    monkeypatch.setattr(blocks, "exact_pool_applies", lambda _x: False)
    with torch.no_grad():
        plain = model(x)[0]
    assert calls == [] and torch.equal(fast, plain)
