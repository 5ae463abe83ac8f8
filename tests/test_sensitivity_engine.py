"""Sensitivity engine: fast path == pruned models, published output format, resume, 2-rank gloo sharding."""
from __future__ import annotations

import ast
import copy
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from yolo_prune.analysis.sensitivity import Batch, run_sensitivity
from yolo_prune.analysis.store import ResultStore
from yolo_prune.analysis.table import read_table
from yolo_prune.errors import YoloPruneError
from yolo_prune.graph import derive_graph
from yolo_prune.models import build_model
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.models.conv_backend import onednn_convolutions
from yolo_prune.models.fuse import fuse
from yolo_prune.prune import prune


class SumScorer:
    """A cheap, deterministic scorer: statistics of the raw predictions (enough to detect any difference)."""

    def start(self):
        return []

    def update(self, state, pred, meta):
        state.append(pred.double().mean(dim=1).sum(0))

    def finish(self, state):
        v = torch.stack(state).sum(0)
        return {"mp": float(v[4]), "mr": float(v[5]), "map50": float(v[0]), "map": float(v[2]),
                "per_class": [float(x) for x in v[5:]]}


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model("yolov7-tiny", nc=2).eval()
    g = torch.Generator().manual_seed(1)
    batches = [Batch(torch.rand(2, 3, 64, 64, generator=g), None) for _ in range(2)]
    return model, derive_graph(model), batches


LAYERS = [0, 6, 23, 24, 39, 52, 54]
RATES = [0.25, 0.5]


def test_fast_path_equals_evaluating_pruned_models(tmp_path):
    model, graph, batches = _setup()
    store = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path, {"a": 1}), RATES,
                            layers=LAYERS, img_size=64, progress=False, chunk_layers=3)
    for layer in LAYERS:
        for rate in RATES:
            pruned = prune(model, [(layer, rate)], summarize=False).model
            scorer = SumScorer()
            state = scorer.start()
            with torch.no_grad():
                for b in batches:
                    scorer.update(state, pruned(b.images)[0], None)
            ref = scorer.finish(state)
            got = store.results[f"{layer}:{rate:g}"]
            assert got["map"] == pytest.approx(ref["map"], rel=1e-5), (layer, rate)
            fused = fuse(pruned)
            assert got["params"] == count_params(fused)  # reported on the fused model, as published
            assert got["gflops"] == round(count_gflops(fused, 64), 4)  # closed-form costs == counting the model
    assert store.baseline["params"] == count_params(fuse(copy.deepcopy(model)))
    assert store.baseline["gflops"] == round(count_gflops(fuse(copy.deepcopy(model)), 64), 4)


def test_published_output_files_parse_back(tmp_path):
    model, graph, batches = _setup()
    run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path, {"rates": RATES}), RATES,
                    layers=LAYERS, img_size=64, progress=False)
    rows = ast.literal_eval((tmp_path / "output_25.txt").read_text())
    assert [r[0] for r in rows] == LAYERS
    layer, (mp_, mr, map50, map_, per_class, speed, params, gflops) = rows[0]
    assert len(per_class) == 2  # one entry per class
    assert len(speed) == 6 and speed[3:] == (64, 64, 2) and isinstance(params, int)
    table = read_table(tmp_path)
    assert table.rates == (0.25, 0.5) and table.layers == LAYERS and table.baseline is not None
    os.unlink(tmp_path / "sensitivity.json")  # the published files alone are enough for selection
    published = read_table(tmp_path)
    assert published.entries[(23, 0.5)].map == table.entries[(23, 0.5)].map and published.baseline is None


def test_resume_skips_finished_and_matches(tmp_path):
    model, graph, batches = _setup()
    full = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "a", {"s": 1}),
                           RATES, layers=LAYERS, img_size=64, progress=False)
    partial = ResultStore.open(tmp_path / "b", {"s": 1})
    run_sensitivity(model, graph, batches, SumScorer(), partial, RATES, layers=LAYERS[:3], img_size=64,
                    progress=False)

    class Counting(SumScorer):
        starts = 0

        def start(self):
            Counting.starts += 1
            return super().start()

    resumed = run_sensitivity(model, graph, batches, Counting(), ResultStore.open(tmp_path / "b", {"s": 1}),
                              RATES, layers=LAYERS, img_size=64, progress=False)
    assert Counting.starts == len(LAYERS[3:]) * len(RATES)  # finished configs and the baseline were not redone
    strip = lambda res: {k: {kk: vv for kk, vv in v.items() if kk != "speed"} for k, v in res.items()}
    assert strip(resumed.results) == strip(full.results)


def test_other_settings_refused_unless_exist_ok(tmp_path):
    ResultStore(tmp_path, {"rates": [0.5]}).save()
    with pytest.raises(YoloPruneError, match="other settings \\(rates\\)"):
        ResultStore.open(tmp_path, {"rates": [0.25]})
    assert ResultStore.open(tmp_path, {"rates": [0.25]}, exist_ok=True).results == {}


def test_analysed_model_is_recorded_and_another_one_refused(tmp_path):
    ResultStore(tmp_path, {"rates": [0.5]}, model={"source": "a.pt", "graph_fingerprint": "abc"}).save()
    assert read_table(tmp_path).model == {"source": "a.pt", "graph_fingerprint": "abc"}
    with pytest.raises(YoloPruneError, match="analysis of another model"):
        ResultStore.open(tmp_path, {"rates": [0.5]}, model={"source": "a.pt", "graph_fingerprint": "def"})
    assert ResultStore.open(tmp_path, {"rates": [0.5]}, model={"source": "a.pt", "graph_fingerprint": "abc"})
    ResultStore(tmp_path, {"rates": [0.5]}).save()  # written before models were recorded: still resumes
    assert ResultStore.open(tmp_path, {"rates": [0.5]}, model={"source": "a.pt", "graph_fingerprint": "def"})


def _rank_main(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from yolo_prune.analysis.distributed import process_group_info

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, graph, batches = _setup()
    run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(out_dir, {"s": 1}), RATES,
                    layers=LAYERS, img_size=64, progress=False, chunk_layers=2, dist=process_group_info())
    assert os.path.exists(os.path.join(out_dir, "output_50.txt"))  # every rank returns after rank 0 wrote them
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter finalisation, where gloo's threads can abort a finished rank (pytorch#190489)


def test_two_rank_gloo_equals_one_process(tmp_path):
    model, graph, batches = _setup()
    single = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "one", {"s": 1}),
                             RATES, layers=LAYERS, img_size=64, progress=False, chunk_layers=2)
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path / "two")), nprocs=2,
                       join=True, start_method="spawn")
    two = json.loads((tmp_path / "two" / "sensitivity.json").read_text())
    assert set(two["results"]) == set(single.results)
    for key, res in single.results.items():
        assert two["results"][key]["map"] == pytest.approx(res["map"], rel=1e-6)
        assert two["results"][key]["params"] == res["params"]
    assert (tmp_path / "two" / "output_50.txt").read_text().count("\n(") == len(LAYERS)


def _environment_rank(rank, world, port, out_dir):
    import torch.distributed as dist

    from yolo_prune.analysis.distributed import environment_group

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with environment_group("cpu") as info:
        assert dist.is_initialized() and (info.rank, info.world) == (rank, world)
        gathered = info.all_gather(rank * 10)
    assert not dist.is_initialized()  # the group it created is destroyed at the end of the block
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(gathered, f)
    os._exit(0)  # skip interpreter finalisation, where gloo's threads can abort a finished rank (pytorch#190489)


def test_environment_group_joins_under_torchrun_variables_and_destroys_what_it_created(tmp_path):
    import socket

    import torch.distributed as dist

    from yolo_prune.analysis.distributed import environment_group

    with environment_group("cpu") as info:  # no torchrun variables: one rank, nothing initialised
        assert (info.rank, info.world) == (0, 1) and not dist.is_initialized()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_environment_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [0, 10]


# ------------------------------------------------------------------------------------------- speed: stacking, plan
def test_stacked_rates_equal_one_pass_per_configuration(tmp_path):
    """A layer's rates in one stacked pass (masks per slice, batch k * B) give the results of one pass each (batch
    B) exactly: the analysis runs every convolution on one kernel whatever the batch (conftest: one thread, where
    PyTorch's own choice differs between batch 8 and 16 for 1x1 convolutions)."""
    model, graph, _ = _setup()
    batches = [Batch(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)), None)]  # k * B = 16
    kw = dict(layers=LAYERS, img_size=64, progress=False)
    one = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "one", {"s": 1}), RATES,
                          stack_bytes=0, **kw)
    stacked = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "st", {"s": 1}), RATES,
                              stack_bytes=1 << 30, **kw)
    assert set(stacked.results) == set(one.results)
    for key, res in one.results.items():
        for metric in ("mp", "mr", "map50", "map", "per_class"):
            assert stacked.results[key][metric] == res[metric], (key, metric)
        assert (stacked.results[key]["params"], stacked.results[key]["gflops"]) == (res["params"], res["gflops"])


def test_activation_cache_runs_the_full_forward_once_per_batch_with_identical_results(tmp_path, monkeypatch):
    """Kept across chunks, the unpruned activations are computed once per batch (not once per chunk) and every
    configuration's result is bit-identical to recomputing them per chunk; a budget below one batch keeps none."""
    from yolo_prune.analysis import fastforward

    model, graph, batches = _setup()
    calls = []
    real = fastforward.run_all
    monkeypatch.setattr(fastforward, "run_all", lambda m, x: calls.append(len(x)) or real(m, x))
    kw = dict(layers=LAYERS, img_size=64, progress=False, chunk_layers=2)  # 4 chunks
    kept = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "kept", {"s": 1}), RATES,
                           **kw)
    assert len(calls) == len(batches)
    calls.clear()
    again = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "per", {"s": 1}), RATES,
                            cache_bytes=0, **kw)
    assert len(calls) == len(batches) * 4
    def without_speed(results):
        return {key: {k: v for k, v in res.items() if k != "speed"} for key, res in results.items()}

    assert without_speed(kept.results) == without_speed(again.results)
    calls.clear()
    cache = fastforward.ActivationCache(budget=1000)
    for _ in range(2):
        cache.outputs(0, model, batches[0].inputs(torch.float32))
    assert cache.used == 0 and len(calls) == 2  # nothing kept: computed each time


def test_cpu_cache_budget_is_a_quarter_of_the_available_host_memory(monkeypatch):
    """On CPU the default activation cache follows the host (a quarter of what psutil says is available); an explicit
    budget wins, 0 included."""
    from yolo_prune.analysis import planning

    monkeypatch.setattr(planning, "available_host_bytes", lambda: 24 << 30)
    assert planning.cache_budget(torch.device("cpu")) == 6 << 30
    assert planning.cache_budget(torch.device("cpu"), 0) == 0
    assert planning.cache_budget(torch.device("cpu"), 123) == 123
    monkeypatch.undo()
    import psutil

    assert abs(planning.cache_budget(torch.device("cpu")) - psutil.virtual_memory().available / 4) < 256 << 20


def test_channels_last_scoring_equals_the_default_layout_and_restores_the_model(tmp_path):
    """Scoring in channels-last layout on CPU (opt-in) gives the default layout's raw outputs to float rounding, and
    the model leaves the analysis with its weights in the default layout. (Every convolution runs another oneDNN
    kernel in the two layouts, 1x1 ones included, so the summed statistics differ by up to ~1e-6 relative.)"""
    model, graph, batches = _setup()
    kw = dict(layers=LAYERS, img_size=64, progress=False)
    fast = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "cl", {"s": 1}), RATES,
                           channels_last_cpu=True, **kw)
    assert all(p.is_contiguous() for p in model.parameters())
    plain = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "nchw", {"s": 1}), RATES,
                            **kw)
    assert set(fast.results) == set(plain.results)
    assert any(fast.results[k]["map"] != r["map"] for k, r in plain.results.items())  # another layout ran
    for key, res in plain.results.items():
        for metric in ("mp", "mr", "map50", "map", "per_class"):
            assert fast.results[key][metric] == pytest.approx(res[metric], rel=1e-5, abs=1e-9), (key, metric)


@pytest.mark.parametrize("conv", [41, 46])  # SPPCSPC cv1, cv6: the block runs on stacked inputs
def test_stacked_pass_inside_blocks_is_exact(conv):
    """yolov7: convs that are not a whole cfg layer (inside SPPCSPC): the block's inputs are repeated per
    slice; every slice equals the masked single pass (to float rounding: other batch, other kernels)."""
    from yolo_prune.analysis.fastforward import (downstream_layers, last_uses, layer_of, masked, masked_stack,
                                                 run_all, run_from, run_from_stacked)

    torch.manual_seed(0)
    model = build_model("yolov7", nc=2).eval()
    graph = derive_graph(model)
    x = torch.rand(2, 3, 64, 64)
    layer = layer_of(graph, conv)
    assert model.model[layer] is not model.conv_modules()[conv]
    n = graph[conv].out_channels
    removed = [list(range(0, n, 2)), list(range(n // 2)), [n - 1]]
    with torch.inference_mode():
        cache = run_all(model, x)
        deps = downstream_layers(model)[layer]
        single = []
        for r in removed:
            with masked(model, graph, conv, r):
                single.append(run_from(model, cache, deps, x)[0])
        with masked_stack(model, graph, conv, removed, len(x)):
            stacked = run_from_stacked(model, cache, deps, x, len(removed), None, last_uses(model))[0]
    for j, ref in enumerate(single):
        torch.testing.assert_close(stacked[2 * j:2 * j + 2], ref, rtol=1e-5, atol=1e-4)
        assert not torch.equal(stacked[2 * j:2 * j + 2], single[(j + 1) % 3])  # the masks differ per slice


def test_stacked_pass_reads_the_masked_conv_from_the_cache_bit_for_bit():
    """A conv that is a whole cfg layer is not re-run in a stacked pass: its cached output, masked per slice, is
    exactly what the re-run gives (same input, same kernel)."""
    from yolo_prune.analysis.fastforward import (downstream_layers, last_uses, layer_of, masked_stack, run_all,
                                                 run_from_stacked)

    model, graph, batches = _setup()
    x = batches[0].inputs(torch.float32)
    conv = 6
    layer = layer_of(graph, conv)
    assert model.model[layer] is model.conv_modules()[conv]
    n = graph[conv].out_channels
    removed = [list(range(0, n, 2)), list(range(n // 2))]
    calls = []
    model.model[layer].register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        cache = run_all(model, x)
        calls.clear()
        deps = downstream_layers(model)[layer]
        with masked_stack(model, graph, conv, removed, len(x)) as stack:
            rerun = model.model[layer](cache[model.specs[layer].sources()[0]])  # the hook stacks the variants
            assert torch.equal(stack(cache[layer]), rerun)
            calls.clear()
            cached = run_from_stacked(model, cache, deps, x, len(removed), stack, last_uses(model))[0]
            assert calls == []  # the conv itself did not run again
    for j, r in enumerate(removed):
        assert torch.equal(rerun[2 * j:2 * j + 2, r], torch.zeros_like(rerun[2 * j:2 * j + 2, r]))
    assert cached.shape[0] == len(removed) * len(x)


def test_stacked_copies_equal_the_plain_formulations_bit_for_bit():
    """The stacked pass' two copies: a concatenation of stacked and cached inputs (cached ones broadcast inside the
    one copy) equals torch.cat of the repeated inputs, and the per-variant filter (k copies, then each variant's
    removed channels zeroed) equals masked_fill with the broadcast masks; NaN and -0.0 included."""
    from yolo_prune.analysis.fastforward import _stack_filter, _stacked_concat, _tiled

    torch.manual_seed(0)
    k, batch = 3, 2
    stacked = torch.randn(k * batch, 4, 5, 6)
    cached = torch.randn(batch, 3, 5, 6)
    cached[0, 0, 0, 0], cached[1, 1, 1, 1] = float("nan"), -0.0
    for parts in ([(stacked, True), (cached, False)], [(cached, False), (stacked, True), (cached, False)]):
        got = _stacked_concat(parts, k, batch, 1)
        want = torch.cat([p if s else _tiled(p, k) for p, s in parts], 1)
        assert got.shape == want.shape and torch.equal(got.view(-1).view(torch.int32), want.view(-1).view(torch.int32))
    channels_last = [(stacked.contiguous(memory_format=torch.channels_last), True), (cached, False)]
    assert torch.equal(_stacked_concat(channels_last, k, batch, 1).nan_to_num(),
                       torch.cat([stacked, _tiled(cached, k)], 1).nan_to_num())

    removed = [[0, 2], [], [1]]
    keep = torch.zeros(k, 3, dtype=torch.bool)
    for j, r in enumerate(removed):
        keep[j, r] = True
    keep = keep.view(k, 1, -1, 1, 1)
    for out in (cached, torch.cat([cached] * k)):  # a cached output (batch B) and a stacked pass' own (k * B)
        want = out.view(-1, batch, *out.shape[1:]).masked_fill(keep, 0).reshape(k * batch, *out.shape[1:])
        got = _stack_filter(removed, batch)(None, None, out.clone())
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_plan_is_logged_before_work_and_dry_run_writes_nothing(tmp_path):
    model, graph, batches = _setup()
    lines: list[str] = []
    store = run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "dry", {"s": 1}), RATES,
                            layers=LAYERS, img_size=64, progress=False, chunk_layers=3, dry_run=True,
                            log=lines.append)
    assert store.results == {} and not (tmp_path / "dry").exists()
    assert len(lines) == 1 and lines[0].startswith(f"plan: {len(LAYERS) * len(RATES)} configurations (0 done, "
                                                   f"{len(LAYERS) * len(RATES)} to do) on 4 images in 2 batches, "
                                                   f"3 chunk(s) over 1 rank(s)")
    assert "s per configuration (estimated from 6 configuration(s) on the first batch); ETA " in lines[0]
    lines.clear()
    run_sensitivity(model, graph, batches, SumScorer(), ResultStore.open(tmp_path / "real", {"s": 1}), RATES,
                    layers=LAYERS, img_size=64, progress=False, chunk_layers=3, log=lines.append)
    assert lines[0].startswith("plan: 14 configurations (0 done, 14 to do)") and "ETA" not in lines[0]
    assert lines[1].startswith("first chunk: ") and lines[1].endswith("for the 8 left") and len(lines) == 2


class PartialScorer(SumScorer):
    """SumScorer plus a partial 'mAP@.5' in (0, 1]: how close the mean objectness seen so far is to ``center``
    (the unpruned model's: 1 there, less the more a configuration changes the predictions)."""

    def __init__(self, center: float = 0.0):
        self.center = center

    def update(self, state, pred, meta):
        super().update(state, pred, meta)
        state.append(pred.shape[0])  # images, interleaved with the sums

    def partial_map50(self, state):
        mean = float(torch.stack(state[0::2]).sum(0)[4]) / sum(state[1::2])
        return 1.0 / (1.0 + 1e5 * abs(mean - self.center))

    def finish(self, state):
        return super().finish(state[0::2])


def test_early_stop_decided_on_the_last_batch_marks_configurations_before_they_are_finished(tmp_path):
    """With one batch the decision falls on the last batch: configurations are marked first, then finished."""
    from yolo_prune.analysis.planning import EarlyStop

    model, graph, batches = _setup()
    kw = dict(layers=LAYERS[:3], img_size=64, progress=False)
    early = run_sensitivity(model, graph, batches[:1], PartialScorer(), ResultStore.open(tmp_path / "e", {"s": 1}),
                            RATES, early_stop=EarlyStop(1.0, 0.25), **kw)
    assert len(early.results) == 6
    assert all(r["early_stop"]["images"] == 2 for r in early.results.values() if "early_stop" in r)


def test_early_stop_stops_only_hopeless_configurations(tmp_path):
    from yolo_prune.analysis.planning import EarlyStop

    model, graph, batches = _setup()
    batches = batches * 2  # 4 batches of 2 images: the decision falls after the first (after=0.25)
    kw = dict(layers=LAYERS, img_size=64, progress=False, stack_bytes=0)
    full = run_sensitivity(model, graph, batches, PartialScorer(), ResultStore.open(tmp_path / "full", {"s": 1}),
                           RATES, **kw)
    with torch.no_grad(), onednn_convolutions(model):  # the analysis' convolution kernel
        center = float(model(batches[0].images)[0].double().mean(dim=1).sum(0)[4]) / 2
    ref = PartialScorer(center)
    ratios = {}
    for layer in LAYERS:
        for rate in RATES:  # each configuration's partial value after the first batch (the baseline's is 1)
            st = ref.start()
            pruned = prune(model, [(layer, rate)], summarize=False).model
            with torch.no_grad(), onednn_convolutions(pruned):
                ref.update(st, pruned(batches[0].images)[0], None)
            ratios[f"{layer}:{rate:g}"] = ref.partial_map50(st)
    below = sorted(ratios.values())[len(ratios) // 2]  # about half of them stop
    base = 1.0
    early = run_sensitivity(model, graph, batches, ref, ResultStore.open(tmp_path / "early", {"s": 1}),
                            RATES, early_stop=EarlyStop(below, 0.25), **kw)
    stopped = {k for k, v in early.results.items() if "early_stop" in v}
    assert stopped == {k for k, r in ratios.items() if r < below} and 0 < len(stopped) < len(ratios)
    for key, res in early.results.items():
        if key in stopped:
            record = res["early_stop"]
            assert record["images"] == 2 and record["map50"] / record["baseline_map50"] < below
            assert record["baseline_map50"] == pytest.approx(base, rel=1e-6)
        else:  # configurations that go on are scored exactly as without early stop
            assert {k: v for k, v in res.items() if k != "speed"} == \
                {k: v for k, v in full.results[key].items() if k != "speed"}
