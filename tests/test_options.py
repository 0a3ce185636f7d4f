"""Every option dataclass built from a dict rejects an unknown key with one error that names it."""

import pytest

from engine_plugins.methods.gpff.model import GPFFModelConfig, SamplerDefaults
from engine_plugins.methods.gpff.noise import NoiseConfig
from engine_plugins.methods.propagator.model import FlowModelConfig
from engine_plugins.methods.response_matching.model import RelaxDefaults, RMModelConfig
from engine_plugins.methods.response_matching.noise import RMNoiseConfig
from engine_plugins.nn.nequip_backbone import NequIPConfig
from engine_plugins.options import UnknownOptionError, options_from_dict
from engine_plugins.train.gpff import GPFFTrainConfig
from engine_plugins.train.propagator import FlowTrainConfig
from engine_plugins.train.response_matching import RMTrainConfig

BUILDERS = {
    "gpff model": lambda d: GPFFModelConfig.from_dict(d),
    "gpff sampler": lambda d: SamplerDefaults.from_dict(d),
    "gpff noise": lambda d: NoiseConfig.from_dict(d),
    "flow model": lambda d: FlowModelConfig.from_dict({"type_names": ["Li"], **d}),
    "rm model": lambda d: RMModelConfig.from_dict(d),
    "rm relax": lambda d: RelaxDefaults.from_dict(d),
    "rm noise": lambda d: RMNoiseConfig.from_dict(d),
    "nequip": lambda d: NequIPConfig.from_kwargs(type_names=["H"], r_max=3.0, avg_num_neighbors=4.0, **d),
    "gpff train section": lambda d: GPFFTrainConfig.from_dict({"train": d}),
    "rm train section": lambda d: RMTrainConfig.from_dict({"data": d}),
    "propagator split section": lambda d: FlowTrainConfig.from_dict({"data": {"split": d}}),
    "rm top level": lambda d: RMTrainConfig.from_dict(d),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_unknown_option_is_named_with_its_section_and_the_known_ones(name):
    with pytest.raises(UnknownOptionError, match=r"unknown option\(s\) \['zz_typo'\]; known: \[") as info:
        BUILDERS[name]({"zz_typo": 1})
    # one error type that callers catching either ValueError or TypeError both see
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert "Fix:" in str(info.value)


def test_section_label_names_where_the_key_was():
    with pytest.raises(UnknownOptionError, match=r"propagator config section 'data.split'"):
        FlowTrainConfig.from_dict({"data": {"split": {"zz_typo": 1}}})


def test_known_options_pass_through_unchanged():
    cfg = options_from_dict(RMNoiseConfig, {"sigma_min": 0.07, "strain_max": 0.2}, "RM noise")
    assert cfg.sigma_min == 0.07 and cfg.strain_max == 0.2 and cfg == RMNoiseConfig(sigma_min=0.07, strain_max=0.2)
