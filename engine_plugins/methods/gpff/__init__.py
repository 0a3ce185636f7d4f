"""Generative pseudo force fields (GPFF, seed 004): noise ladder, loss, model, samplers.

``noise`` (ladder, targets, loss) and ``samplers`` import only torch; ``model`` imports nequip
(a few seconds), so it is not imported here: ``from engine_plugins.methods.gpff.model import ...``.
"""

from engine_plugins.methods.gpff.analytic import QuadraticPseudoForce, script_quadratic
from engine_plugins.methods.gpff.noise import (
    NoiseConfig,
    gpff_loss,
    make_noisy_batch,
    pseudo_energy,
    pseudo_force_target,
    rmsd,
    sample_sigmas,
)
from engine_plugins.methods.gpff.samplers import SAMPLERS, SampleResult, SamplerError, sample, sigma_ladder

__all__ = [
    "NoiseConfig", "QuadraticPseudoForce", "SAMPLERS", "SampleResult", "SamplerError", "gpff_loss",
    "make_noisy_batch", "pseudo_energy", "pseudo_force_target", "rmsd", "sample", "sample_sigmas",
    "script_quadratic", "sigma_ladder",
]
