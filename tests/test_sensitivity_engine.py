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
    dist.destroy_process_group()


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
