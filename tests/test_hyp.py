"""load_hyp: official hyp YAMLs, shipped names, validation errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yolo_prune.engine.hyp import OPTIONAL_DEFAULTS, REQUIRED_KEYS, hyp_dir, load_hyp, shipped_hyp_names
from yolo_prune.errors import ConfigError

FIXTURES = Path("/work/shared/fixtures/official-hyp")
OFFICIAL = ["p5", "p6", "tiny", "custom"]


def _official(name: str) -> Path:
    path = FIXTURES / f"hyp.scratch.{name}.yaml"
    if not path.is_file():
        pytest.skip(f"fixture {path} not available")
    return path


def _base() -> dict:
    """Raw mapping of the shipped p5 file, the starting point of the malformed-file tests."""
    return yaml.safe_load((hyp_dir() / "hyp.scratch.p5.yaml").read_text())


def _write(tmp_path: Path, data: dict, text_extra: str = "") -> Path:
    path = tmp_path / "hyp.test.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False) + text_extra)
    return path


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_fixtures_load(name: str) -> None:
    path = _official(name)
    hyp = load_hyp(path)
    raw = yaml.safe_load(path.read_text())
    assert {k: hyp[k] for k in raw} == raw
    assert set(REQUIRED_KEYS) <= set(hyp)
    assert hyp["loss_ota"] == 1 and hyp["label_smoothing"] == 0.0


@pytest.mark.parametrize("name", ["tiny", "p5", "p6", "custom"])
def test_shipped_names_match_official(name: str) -> None:
    assert f"scratch.{name}" in shipped_hyp_names()
    shipped = load_hyp(f"scratch.{name}")
    assert shipped == load_hyp(_official(name))
    assert load_hyp(f"hyp.scratch.{name}.yaml") == shipped


def test_shipped_values_spot_check() -> None:
    tiny, p5 = load_hyp("scratch.tiny"), load_hyp("scratch.p5")
    assert (tiny["lrf"], tiny["cls"], tiny["obj"], tiny["mixup"]) == (0.01, 0.5, 1.0, 0.05)
    assert (p5["lrf"], p5["cls"], p5["obj"], p5["scale"], p5["paste_in"]) == (0.1, 0.3, 0.7, 0.9, 0.15)


def test_missing_key_names_key_and_file(tmp_path: Path) -> None:
    data = _base()
    del data["anchor_t"]
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_hyp(path)
    assert "anchor_t" in str(err.value) and str(path) in str(err.value)


def test_optional_keys_default(tmp_path: Path) -> None:
    data = {k: v for k, v in _base().items() if k not in OPTIONAL_DEFAULTS}
    hyp = load_hyp(_write(tmp_path, data))
    assert {k: hyp[k] for k in OPTIONAL_DEFAULTS} == dict(OPTIONAL_DEFAULTS)


def test_unknown_key_warns_and_is_kept(tmp_path: Path) -> None:
    data = {**_base(), "lr_typo": 0.1}
    with pytest.warns(UserWarning, match="lr_typo"):
        hyp = load_hyp(_write(tmp_path, data))
    assert hyp["lr_typo"] == 0.1


def test_commented_anchors_key_is_known(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    data = {**_base(), "anchors": 3}
    assert load_hyp(_write(tmp_path, data))["anchors"] == 3
    assert not [w for w in recwarn if "anchors" in str(w.message)]


@pytest.mark.parametrize("value", ["fast", True, None, [0.01], float("nan")])
def test_non_number_rejected_with_line(tmp_path: Path, value: object) -> None:
    data = {**_base(), "lr0": value}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"lr0") as err:
        load_hyp(path)
    assert f"{path}:1" in str(err.value)  # lr0 is the first line


def test_loss_ota_values(tmp_path: Path) -> None:
    base = _base()
    assert load_hyp(_write(tmp_path, {**base, "loss_ota": False}))["loss_ota"] == 0
    with pytest.raises(ConfigError, match="loss_ota"):
        load_hyp(_write(tmp_path, {**base, "loss_ota": 2}))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_hyp("scratch.nonexistent")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_hyp(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr0: [0.01\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_hyp(broken)
