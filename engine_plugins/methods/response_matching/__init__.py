"""Response matching (RM, seed 002) for periodic crystals: displacement + strain noise, pseudo-forces and
pseudo-stress as the response, a short-range repulsion; conservative NequIP model (stress from the
edge-force virial); relaxations standalone and in the engines.

``noise`` imports only torch/numpy; ``model`` imports nequip (a few seconds), so import it explicitly:
``from engine_plugins.methods.response_matching.model import ...``.
"""

from engine_plugins.methods.response_matching.noise import (
    CrystalRecord,
    RMNoiseConfig,
    make_noisy_crystal,
    pseudo_energy,
    response_targets,
    rm_loss,
)

__all__ = ["CrystalRecord", "RMNoiseConfig", "make_noisy_crystal", "pseudo_energy", "response_targets", "rm_loss"]
