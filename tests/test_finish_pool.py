"""Finishing configurations (COCOeval) in worker processes: same numbers as in this process, errors surfaced."""
from __future__ import annotations

import pytest
import torch

import yolo_prune as yp
from yolo_prune.analysis.finish_pool import FinishPool, WorkerPolicy, score_workers
from yolo_prune.errors import YoloPruneError
from yolo_prune.pipeline.scoring import DetectionScorer


def _confident_model(seed: int):
    """A random yolov7-tiny (nc=3) whose boxes pass the confidence threshold: NMS and COCOeval have real work."""
    torch.manual_seed(seed)
    model = yp.build_model("yolov7-tiny", nc=3).eval()
    with torch.no_grad():
        for conv in model.detect.m:
            conv.bias.view(3, -1)[:, 4] += 4.0
    return model


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A DetectionScorer, a small synthetic set's batches, and the states of two models on it (real detections)."""
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.pipeline.evaluation import DataSettings, cached_batches

    root = tmp_path_factory.mktemp("pool")
    generate_synthetic(root / "data", n_train=2, n_val=8, img_size=96, n_classes=3, seed=2)
    batches, cfg = cached_batches(DataSettings(str(root / "data" / "data.yaml"), img_size=96, batch_size=4,
                                               workers=0), 32, torch.device("cpu"))
    scorer = DetectionScorer(cfg.nc, cfg.names)
    states = []
    for seed in (0, 1):
        model, state = _confident_model(seed), scorer.start()
        with torch.no_grad():
            for b in batches:
                scorer.update(state, model(b.inputs(torch.float32))[0], b.meta)
        states.append(state)
    return scorer, states, batches


def test_packed_state_unpacks_to_the_same_records(scored):
    scorer, states, _ = scored
    run = states[0]
    back = scorer.portable(run).unpack()
    assert back.paths == run.paths and back.shapes == run.shapes and (back.hw, back.batch) == (run.hw, run.batch)
    assert sum(len(d) for d in run.dets) > 0
    for a, b in zip(run.dets + run.labels, back.dets + back.labels):
        assert torch.equal(a, b)


def test_worker_process_finishes_with_the_in_process_numbers(scored):
    scorer, states, _ = scored
    here = [scorer.finish(s) for s in states]
    with FinishPool(scorer, 1, steal=False) as pool:
        assert pool.workers == 1
        for i, s in enumerate(states):
            pool.submit(i, s)
        there = pool.results([1, 0])[::-1]  # any order
        assert pool.worker_seconds > 0 and pool.local_seconds == 0
    assert there == here and here[0]["map50"] > 0 and here[0] != here[1]


def test_waiting_for_workers_finishes_queued_states_here(scored):
    """results() finishes states no worker has taken yet in this process (the worker is still starting), with the
    same numbers; the worker answers the one it took."""
    scorer, states, _ = scored
    here = [scorer.finish(s) for s in states]
    keys = range(6)
    with FinishPool(scorer, 1) as pool:
        for k in keys:
            pool.submit(k, states[k % 2])
        got = pool.results(list(keys))
        assert pool.stolen >= 1 and pool.local_seconds > 0
        assert pool.stolen + (pool.worker_seconds > 0) <= len(keys)
    assert got == [here[k % 2] for k in keys]


def _until_taken(pool: FinishPool) -> None:
    """Wait (at most 10 s) until a feeder has taken every submitted state."""
    import time

    t0 = time.perf_counter()
    while pool._tasks._items and time.perf_counter() - t0 < 10:
        time.sleep(0.001)
    assert not pool._tasks._items


def test_only_states_submitted_up_to_the_asked_ones_are_taken_back(scored):
    """Asked for round B while round C is queued too, this process takes back B's queued states only: C stays with
    the workers (they finish it beside the next forwards)."""
    scorer, states, _ = scored
    with FinishPool(scorer, 1) as pool:
        pool.submit("B1", states[0])
        _until_taken(pool)
        for key in ("B2", "C1", "C2"):
            pool.submit(key, states[0])
        b = pool.results(["B1", "B2"])  # B1 went to the (still starting) worker; B2 is finished here
        assert pool.stolen == 1
        c = pool.results(["C1", "C2"])
    assert b == c == [scorer.finish(states[0])] * 2


def test_an_error_in_a_state_taken_back_is_raised_as_scoring_here_raises_it(scored):
    scorer, states, _ = scored
    bad = scorer.portable(states[0])
    bad.labels = bad.labels.copy()
    bad.labels[:, 0] = 7  # a class the scorer does not have (nc=3)
    with pytest.raises(Exception) as here:
        scorer.finish(bad)
    with FinishPool(scorer, 1) as pool:
        pool.submit("ok", states[0])
        _until_taken(pool)  # by the worker's feeder
        pool.submit("bad", bad)
        with pytest.raises(type(here.value), match="nc=3"):
            pool.results(["ok", "bad"])
        assert pool._waiting == 1 and pool.stolen == 1


def test_a_worker_failure_is_raised_with_the_configuration(scored):
    scorer, states, _ = scored
    bad = scorer.portable(states[0])
    bad.labels = bad.labels.copy()
    bad.labels[:, 0] = 7  # a class the scorer does not have (nc=3)
    with FinishPool(scorer, 1, steal=False) as pool:
        pool.submit((5, 0.5), bad)
        with pytest.raises(YoloPruneError, match=r"scoring configuration \(5, 0\.5\) failed in a worker process "
                                                 r"\(--score-workers 0 scores in this process\):(.|\n)*nc=3"):
            pool.results([(5, 0.5)])


def test_a_dead_worker_is_reported_not_waited_for(scored):
    scorer, states, _ = scored
    with FinishPool(scorer, 1, steal=False) as pool:
        pool._workers[0].proc.kill()
        pool._workers[0].proc.wait()
        pool.submit("baseline", states[0])
        with pytest.raises(YoloPruneError, match="the worker process ended"):
            pool.results(["baseline"])


def test_workers_started_mid_analysis_give_the_in_process_results(scored, tmp_path, monkeypatch):
    """The automatic policy finishes the first round here and starts a worker when the rest is worth it; the
    stored results are the same as finishing everything in this process."""
    from yolo_prune.analysis.sensitivity import run_sensitivity
    from yolo_prune.analysis.store import ResultStore
    from yolo_prune.graph import derive_graph

    scorer, _, batches = scored
    model = _confident_model(0)
    graph = derive_graph(model)
    kw = dict(layers=[0, 5, 23], img_size=96, progress=False, chunk_layers=1)
    started, real_start = [], FinishPool.start
    monkeypatch.setattr(FinishPool, "start", lambda pool, n: started.append(n) or real_start(pool, n))
    here = run_sensitivity(model, graph, batches, scorer, ResultStore.open(tmp_path / "here", {"s": 1}), [0.5], **kw)
    later = run_sensitivity(model, graph, batches, scorer, ResultStore.open(tmp_path / "later", {"s": 1}), [0.5],
                            score_workers=WorkerPolicy(1, 1e-9), **kw)

    def plain(results):
        return {k: {m: v for m, v in r.items() if m != "speed"} for k, r in results.items()}

    assert plain(later.results) == plain(here.results) and len(here.results) == 3
    assert [n for n in started if n] == [1]  # one worker, started by the second run (after its first round)


def test_automatic_policy():
    assert score_workers("cpu", None, cpus=2, threads=1) == WorkerPolicy(1, 2.0)
    assert score_workers("cpu", None, cpus=2, threads=2) == WorkerPolicy(0, 2.0)  # no spare core: none
    assert score_workers("cpu", None, cpus=1, threads=1) == WorkerPolicy(0, 2.0)
    assert score_workers("cuda", None, cpus=16) == WorkerPolicy(4, 2.0)
    assert score_workers("cuda", None, cpus=3) == WorkerPolicy(2, 2.0)
    assert score_workers("cpu", 3, cpus=2, threads=2) == WorkerPolicy(3, 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert score_workers("cpu", None, cpus=4) == WorkerPolicy(1, 2.0)  # torch's own thread count by default
    finally:
        torch.set_num_threads(before)


def test_an_idle_pool_closes_at_once(scored):
    import time

    scorer, _, _ = scored
    pool = FinishPool(scorer, 2)
    procs = [w.proc for w in pool._workers]
    t0 = time.perf_counter()
    pool.close()  # the workers are still starting: stopped, not waited for
    assert time.perf_counter() - t0 < 2 and all(p.wait(timeout=10) != 0 for p in procs)  # killed
    used = FinishPool(scorer, 1, steal=False)
    used.submit("baseline", scored[1][0])
    used.results(["baseline"])
    proc = used._workers[0].proc
    t0 = time.perf_counter()
    used.close()  # a worker that worked is told to end, not waited for: it ends on its own
    assert time.perf_counter() - t0 < 0.5 and proc.wait(timeout=30) == 0
