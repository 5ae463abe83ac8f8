"""Connectivity graphs: derived == published, shipped files regenerate, YAML round-trips, checks explain."""
from __future__ import annotations

from pathlib import Path

import pytest

from yolo_prune.cli import main
from yolo_prune.errors import ConfigError
from yolo_prune.graph import check_against, derive_graph, read_published
from yolo_prune.models import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cfg,published", [("yolov7-tiny", "yolov7-tiny_pruning_cfg.yaml"),
                                           ("yolov7", "yolov7_pruning_cfg.yaml")])
def test_derived_graph_equals_published(fixtures_dir, cfg, published):
    graph = derive_graph(build_model(cfg))
    assert check_against(read_published(fixtures_dir / "published-pruning-config" / published), graph) == []


@pytest.mark.parametrize("cfg", ["yolov7", "yolov7-tiny", "yolov7x"])
def test_shipped_pruning_configs_regenerate_identically(tmp_path, cfg):
    out = tmp_path / "g.yaml"
    assert main(["graph", "--cfg", cfg, "--out", str(out)]) == 0
    assert out.read_text() == (REPO / "pruning_config" / f"{cfg}_pruning_cfg.yaml").read_text()


def test_published_format_round_trips(tmp_path, tiny_model):
    graph = derive_graph(tiny_model)
    path = graph.save(tmp_path / "g.yaml")
    back = read_published(path)
    assert back.nconv == 55 and back.entries == graph.entries() and check_against(back, graph) == []


def test_spp_repeat_and_sizes(tiny_model):
    graph = derive_graph(tiny_model)
    assert graph[23].consumers == ((24, 0), (24, 1), (24, 2), (24, 3))  # SP pools + identity into one concat
    assert graph[24].sizes == [256, 256, 256, 256]
    assert [n.kind for n in graph.nodes[55:]] == ["head"] * 3 and not any(n.prunable for n in graph.nodes[55:])


def test_pruned_model_graph_has_current_widths(tiny_model):
    from yolo_prune.prune import prune

    pruned = prune(tiny_model, [(23, 0.5)], summarize=False).model
    graph = derive_graph(pruned)
    assert graph[23].out_channels == 128 and graph[24].sizes == [128, 128, 128, 128]


def test_check_reports_first_wrong_entry_in_words(tmp_path, tiny_model, capsys):
    graph = derive_graph(tiny_model)
    text = graph.to_yaml().replace("[[6], [3], []], # 2", "[[6], [2], []], # 2")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    problems = check_against(read_published(bad), graph)
    assert problems[0] == "layer 2 (model.2): file says consumers/slices [(6, 2)], the model says [(6, 3)]"
    assert main(["graph", "--cfg", "yolov7-tiny", "--check", str(bad)]) == 1
    assert "layer 2 (model.2)" in capsys.readouterr().err


@pytest.mark.parametrize("text,match", [
    ("nconv: 3\n", "expected keys 'nconv' and 'pruning_cfg'"),
    ("nconv: 1\npruning_cfg: [[[1], [0]]]\n", r"entry 0: expected \[consumers, slices, sizes\]"),
    ("nconv: 1\npruning_cfg: [[[1, 2], [0], []]]\n", "2 consumers but 1 slices"),
    ("nconv: 1\npruning_cfg: [[[a], [0], []]]\n", "expected a list of integers"),
])
def test_malformed_graph_files(tmp_path, text, match):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_published(path)


def test_shortcut_adds_couple_their_producers(fixtures_dir):
    """yolov7-e6e's Shortcut rows add two ELAN outputs: the two Convs become one coupled group (pruned together)."""
    from yolo_prune.models.spec import load_cfg

    cfg = load_cfg(fixtures_dir / "official-cfg" / "deploy" / "yolov7-e6e.yaml")
    cfg["width_multiple"] = 0.125
    model = build_model(cfg, nc=2)
    graph = derive_graph(model)
    shortcuts = [s.index for s in model.specs if s.module == "Shortcut"]
    assert len(graph.groups) == len(shortcuts) == 11
    for group, row in zip(graph.groups, shortcuts):
        sources = model.specs[row].sources()
        assert [graph[i].name for i in group] == [f"model.{s}" for s in sorted(sources)]
    assert all(n.prunable for n in graph.nodes if n.kind != "head")
    assert "coupled: [[12, 21], [33, 42]" in graph.to_yaml()


def test_graph_print(capsys):
    assert main(["graph", "--cfg", "yolov7", "--print"]) == 0
    out = capsys.readouterr().out
    assert "conv  46 model.51.cv6" in out and "-> 47[0]" in out
