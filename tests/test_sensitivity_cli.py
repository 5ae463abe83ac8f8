"""`yolo-prune test --task pruning_sensitivity_analysis` on real files: kill + resume, outputs, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import yolo_prune as yp
from yolo_prune.cli import main


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from yolo_prune.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root / "data", n_train=4, n_val=16, img_size=96, n_classes=3, seed=1)
    torch.manual_seed(0)
    model = yp.build_model("yolov7-tiny", nc=3)
    with torch.no_grad():  # many confident boxes, so NMS and COCOeval have real work and non-zero recall
        for conv in model.detect.m:
            conv.bias.view(3, -1)[:, 4] += 4.0
    weights = yp.save_checkpoint(model, root / "tiny3.pt")
    return root / "data" / "data.yaml", weights


def _args(data, weights, project, *extra):
    return ["test", "--data", str(data), "--weights", str(weights), "--img", "96", "--batch", "4", "--device", "cpu",
            "--workers", "0", "--task", "pruning_sensitivity_analysis", "--pruning-rate", "[0.25, 0.5]",
            "--project", str(project), "--name", "sens", "--chunk-layers", "1", *extra]


def _strip_speed(results):
    return {k: {kk: vv for kk, vv in v.items() if kk != "speed"} for k, v in results.items()}


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(small_set, tmp_path):
    data, weights = small_set
    layers = "[0, 3, 7, 11, 16, 21, 23, 28, 33, 39, 45, 52]"
    assert main(_args(data, weights, tmp_path / "full", "--layers", layers, "--json")) == 0
    full = json.loads((tmp_path / "full" / "sens" / "sensitivity.json").read_text())

    store = tmp_path / "killed" / "sens" / "sensitivity.json"
    cmd = [sys.executable, "-m", "yolo_prune", *_args(data, weights, tmp_path / "killed", "--layers", layers, "--json")]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # same float summation order as in-process
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if store.exists() and len(json.loads(store.read_text())["results"]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads(store.read_text())
    assert 2 <= len(partial["results"]) < 24, "the run was not interrupted mid-way"
    assert main(_args(data, weights, tmp_path / "killed", "--layers", layers, "--json")) == 0
    resumed = json.loads(store.read_text())
    assert _strip_speed(resumed["results"]) == _strip_speed(full["results"])
    for name in ("output_25.txt", "output_50.txt"):
        a = (tmp_path / "full" / "sens" / name).read_text().splitlines()
        b = (tmp_path / "killed" / "sens" / name).read_text().splitlines()
        strip = lambda line: line.split("(", 3)[:2] + [line.rsplit(")", 2)[-1]]  # noqa: E731 - speed differs
        assert [strip(x) for x in a] == [strip(x) for x in b]


def test_outputs_and_baseline_match_plain_evaluation(small_set, tmp_path, capsys):
    data, weights = small_set
    assert main(_args(data, weights, tmp_path, "--layers", "[0, 23]", "--json")) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert set(saved["results"]) == {"0:0.25", "0:0.5", "23:0.25", "23:0.5"}
    from yolo_prune.graph import derive_graph

    fingerprint = derive_graph(yp.load_model(weights)).fingerprint()
    assert saved["model"] == {"source": str(weights), "graph_fingerprint": fingerprint}
    assert main(["test", "--data", str(data), "--weights", str(weights), "--img", "96", "--batch", "4",
                 "--device", "cpu", "--workers", "0", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert saved["baseline"]["map"] == pytest.approx(plain["map"], abs=1e-9) and plain["map"] > 0
    # the analysis stores what `test` reports: mp/mr test.py's, map50/map pycocotools', test.py's set apart
    assert saved["baseline"]["official"] == pytest.approx(plain["official"], abs=1e-9)
    assert (saved["baseline"]["mp"], saved["baseline"]["mr"]) == pytest.approx((plain["mp"], plain["mr"]), abs=1e-9)
    # pruning on the fly evaluates the same as the analysis entry
    assert main(["test", "--data", str(data), "--weights", str(weights), "--img", "96", "--batch", "4",
                 "--device", "cpu", "--workers", "0", "--json", "--modification", "prune-structured",
                 "--pruning-params", "[(23, 0.5)]"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert saved["results"]["23:0.5"]["map"] == pytest.approx(pruned["map"], abs=1e-6)
    assert saved["results"]["23:0.5"]["params"] < saved["baseline"]["params"]
    lines = (tmp_path / "sens" / "output_50.txt").read_text().splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and lines[1].startswith("(0, (")


def test_rerun_with_other_settings_needs_exist_ok(small_set, tmp_path, capsys):
    data, weights = small_set
    assert main(_args(data, weights, tmp_path, "--layers", "[0]")) == 0
    assert main(_args(data, weights, tmp_path, "--layers", "[0]", "--criterion", "1")) == 2
    assert "other settings (criterion)" in capsys.readouterr().err
    assert main(_args(data, weights, tmp_path, "--layers", "[0]", "--criterion", "1", "--exist-ok")) == 0


@pytest.mark.parametrize("change,message", [
    (("--data", "/nonexistent/data.yaml"), "--data /nonexistent/data.yaml: file not found"),
    (("--weights", "/nonexistent/w.pt"), "--weights /nonexistent/w.pt: file not found"),
    (("--pruning-rate", "[0.5, 1.5]"), "must lie in (0, 1)"),
    (("--pruning-rate", "half"), "--pruning-rate: cannot parse"),
])
def test_bad_input(small_set, tmp_path, capsys, change, message):
    data, weights = small_set
    args = _args(data, weights, tmp_path)
    i = args.index(change[0])
    args[i + 1] = change[1]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sens" / "sensitivity.json").exists()


def test_on_the_fly_pruning_follows_scoring(small_set, tmp_path, capsys):
    """test --modification prune-structured evaluates the model `prune` writes, for either scoring."""
    data, weights = small_set
    params = "[(1, 0.5), (2, 0.5), (3, 0.5), (10, 0.5)]"
    common = ["--data", str(data), "--img", "96", "--batch", "4", "--device", "cpu", "--workers", "0", "--json"]
    assert main(["prune", "--weights", str(weights), "--pruning-params", params, "--scoring", "independent",
                 "--output", str(tmp_path / "p.pt"), "--img", "96"]) == 0
    capsys.readouterr()
    assert main(["test", "--weights", str(tmp_path / "p.pt"), *common]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert main(["test", "--weights", str(weights), *common, "--modification", "prune-structured",
                 "--pruning-params", params, "--scoring", "independent"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == pytest.approx(saved["map"], abs=1e-9)


def test_dry_run_prints_the_plan_and_writes_nothing(small_set, tmp_path):
    from cli_workspace import run_cli

    data, weights = small_set
    code, out, err = run_cli(_args(data, weights, tmp_path, "--layers", "[0, 3, 23]", "--dry-run"))
    assert code == 0, err
    plan = next(line for line in out.splitlines() if line.startswith("plan: "))
    assert plan.startswith("plan: 6 configurations (0 done, 6 to do) on 16 images in 4 batches, 3 chunk(s)")
    assert "estimated from 2 configuration(s) on the first batch" in plan and "ETA " in plan
    assert not (tmp_path / "sens").exists()


def test_early_stop_marks_stopped_configurations_and_is_part_of_the_settings(small_set, tmp_path):
    from cli_workspace import run_cli

    data, weights = small_set
    args = _args(data, weights, tmp_path, "--layers", "[0, 23]", "--early-stop", "1.0", "--early-stop-after", "0.25")
    code, out, err = run_cli(args)
    assert code == 0, err
    assert out.splitlines()[0].startswith("plan: 4 configurations") and "first chunk: " in out
    saved = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert saved["settings"]["early_stop"] == {"below": 1.0, "after": 0.25}
    stopped = [r for r in saved["results"].values() if "early_stop" in r]
    for r in stopped:  # decided after the first batch of 4 images (a quarter of 16)
        assert r["early_stop"]["images"] == 4 and r["early_stop"]["map50"] < r["early_stop"]["baseline_map50"]
    kept = [r for r in saved["results"].values() if "early_stop" not in r]
    assert len(stopped) + len(kept) == 4
    code, _, err = run_cli(_args(data, weights, tmp_path, "--layers", "[0, 23]"))  # other settings: refused
    assert code == 2 and "early_stop" in err


@pytest.mark.parametrize("extra,words", [
    (["--cache-mib", "-1"], "--cache-mib"),
    (["--score-workers", "-1"], "--score-workers"),
    (["--early-stop", "1.5"], "--early-stop 1.5: the mAP@.5 ratio must be in (0, 1]"),
    (["--early-stop-after", "0.5"], "--early-stop-after: only with --early-stop"),
    (["--early-stop", "--early-stop-after", "1"], "--early-stop-after 1.0: the image fraction must be in (0, 1)"),
])
def test_early_stop_bad_values_are_usage_errors(small_set, tmp_path, extra, words):
    from cli_workspace import run_cli

    data, weights = small_set
    code, _, err = run_cli(_args(data, weights, tmp_path, *extra))
    assert code == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "sens").exists()


def test_analysis_speed_flags_without_the_analysis_are_usage_errors(small_set, tmp_path):
    from cli_workspace import run_cli

    data, weights = small_set
    code, _, err = run_cli(["test", "--data", str(data), "--weights", str(weights), "--dry-run", "--stack-mib", "0",
                            "--cache-mib", "0", "--score-workers", "1"])
    assert code == 2 and ("--dry-run, --stack-mib, --cache-mib, --score-workers: only with --task "
                          "pruning_sensitivity_analysis") in err


def test_score_worker_process_gives_the_in_process_results(small_set, tmp_path):
    """--score-workers 1: COCOeval of each chunk runs in a worker process while the next chunk's forwards run; the
    stored metrics are those of scoring in this process, value for value."""
    data, weights = small_set
    layers = "[0, 3, 23, 40]"
    assert main(_args(data, weights, tmp_path / "here", "--layers", layers, "--score-workers", "0", "--json")) == 0
    assert main(_args(data, weights, tmp_path / "pool", "--layers", layers, "--score-workers", "1", "--json")) == 0
    here, pool = (json.loads((tmp_path / d / "sens" / "sensitivity.json").read_text()) for d in ("here", "pool"))
    assert len(pool["results"]) == 8 and _strip_speed(pool["results"]) == _strip_speed(here["results"])
    assert {k: v for k, v in pool["baseline"].items() if k != "speed"} == \
        {k: v for k, v in here["baseline"].items() if k != "speed"}
