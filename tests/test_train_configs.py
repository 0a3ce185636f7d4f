"""Every training config shipped in ``engine_plugins/train/configs/`` parses with its trainer's own
reader (unknown keys, model, sampler and export settings are checked there), so a config that the
README points at cannot rot silently. No data is read and nothing is trained."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "engine_plugins" / "train" / "configs").glob("*.json"))


def _parse(path: Path):
    from engine_plugins.train.gpff import GPFFTrainConfig, read_config_file
    from engine_plugins.train.propagator import FlowTrainConfig
    from engine_plugins.train.response_matching import RMTrainConfig

    d = read_config_file(path)
    if "role" in d:  # propagator and corrector share one trainer
        return FlowTrainConfig.from_dict(d)
    if path.name.startswith("gpff"):
        return GPFFTrainConfig.from_dict(d)
    if path.name.startswith("rm_"):
        return RMTrainConfig.from_dict(d)
    raise AssertionError(f"{path.name}: no trainer reads it (add a 'role', or name it gpff_* / rm_*)")


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_parses(path: Path):
    cfg = _parse(path)
    assert cfg.output_dir.startswith("out/"), "training output belongs under out/ (ignored by git)"


def test_a_config_with_an_unknown_key_is_rejected():
    from engine_plugins.train.gpff import read_config_file
    from engine_plugins.train.propagator import FlowTrainConfig

    d = read_config_file(next(p for p in CONFIGS if p.name == "corrector_transport.json"))
    d["train"] = {**d["train"], "stepz": 10}
    with pytest.raises(ValueError, match="stepz"):
        FlowTrainConfig.from_dict(d)


def test_export_passes_belong_to_a_corrector():
    """export.passes (a corrector's passes per jump) is checked when the config is read."""
    from engine_plugins.train.propagator import FlowTrainConfig

    from engine_plugins.train.gpff import read_config_file

    d = read_config_file(next(p for p in CONFIGS if p.name == "corrector_cg_water.json"))
    d["export"]["passes"] = 17
    with pytest.raises(ValueError, match="export.passes=17"):
        FlowTrainConfig.from_dict(d)
    p = read_config_file(next(p for p in CONFIGS if p.name == "propagator_cg_water.json"))
    p["export"]["passes"] = 2
    with pytest.raises(ValueError, match="a propagator has none"):
        FlowTrainConfig.from_dict(p)
