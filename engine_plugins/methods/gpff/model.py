"""GPFF ``pseudo_force`` model on the NequIP backbone: conservative or direct equivariant head.

* ``head="conservative"``: the backbone's per-atom pseudo-energies, forces = -grad of the owned
  atoms' energy (exactly :class:`~engine_plugins.nn.nequip_backbone.NequIPPseudoForce`'s
  contract). Usable by any engine minimizer (OpenMM ``LocalEnergyMinimizer``, LAMMPS ``minimize``).
* ``head="direct"``: the last interaction layer keeps its l=1 features and an equivariant linear
  map gives one ``1o`` vector per atom, the force, directly (one backward pass fewer in training,
  none at inference). A scalar linear head gives per-atom energies, an auxiliary output trained to
  the quadratic pseudo-energy (for ranking); forces are *not* its gradient
  (``role_fields.conservative = False``: engines must not hand such a model to a line-search
  minimizer). Ghost nodes get zero force (their owners' ranks compute them).

Graph for molecules: all pairs within ``r_max`` (default 12 A). For molecules of <= 29 atoms the
clean structure is fully connected at 12 A and the noisy one stays connected up to the default
``sigma_max`` (noise.py); the Bessel basis is widened to 16 functions so that the 12 A radial
range keeps about the resolution of nequip's 8 functions over 5-6 A.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from engine_plugins.export.metadata import ArtifactMetadata
from engine_plugins.methods.gpff.noise import PSEUDO_ENERGY_UNITS, NoiseConfig
from engine_plugins.nn.forces import local_energy_forces
from engine_plugins.nn.nequip_backbone import (
    EDGE_SHIFT_KEY,
    NequIPConfig,
    _building,
    _DTYPES,
    _hidden_irreps,
    nequip_stages,
    script_nequip_model,
)
from engine_plugins.options import options_from_dict

from nequip.data import AtomicDataDict  # noqa: E402
from nequip.nn import AtomwiseLinear, ConvNetLayer, PerTypeScaleShift, SequentialGraphNetwork  # noqa: E402

METHOD_NAME = "gpff"
HEADS = ("conservative", "direct")
VECTOR_KEY = "gpff_vector"
SAMPLERS = ("ancestral", "heun", "denoise", "adaptive")


@dataclass
class GPFFModelConfig:
    """Model options: the head, plus the NequIP backbone's options (``r_max`` is the cutoff)."""

    type_names: List[str] = field(default_factory=lambda: ["H", "C", "N", "O", "F"])
    head: str = "conservative"
    r_max: float = 12.0
    avg_num_neighbors: Optional[float] = None  # None: computed from the training data
    num_layers: int = 3
    l_max: int = 1
    parity: bool = True
    num_features: int = 32
    num_bessels: int = 16
    radial_mlp_depth: int = 2
    radial_mlp_width: int = 64
    polynomial_cutoff_p: int = 6
    readout_mlp_hidden_layers_depth: int = 1
    readout_mlp_hidden_layers_width: Optional[int] = 32
    energy_scale: float = 1.0
    vector_scale: float = 1.0
    model_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"model.head '{self.head}': use one of {HEADS}")
        self.type_names = list(self.type_names)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GPFFModelConfig":
        return options_from_dict(cls, d, "GPFF model options")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def nequip_config(self) -> NequIPConfig:
        if self.avg_num_neighbors is None:
            raise ValueError("model.avg_num_neighbors is not set. Fix: give it, or let the trainer compute "
                             "it from the training molecules")
        return NequIPConfig(
            type_names=self.type_names, r_max=self.r_max, avg_num_neighbors=float(self.avg_num_neighbors),
            num_layers=self.num_layers, l_max=self.l_max, parity=self.parity, num_features=self.num_features,
            num_bessels=self.num_bessels, polynomial_cutoff_p=self.polynomial_cutoff_p,
            radial_mlp_depth=self.radial_mlp_depth, radial_mlp_width=self.radial_mlp_width,
            readout_mlp_hidden_layers_depth=self.readout_mlp_hidden_layers_depth,
            readout_mlp_hidden_layers_width=self.readout_mlp_hidden_layers_width,
            per_type_energy_scales=float(self.energy_scale), model_dtype=self.model_dtype, seed=self.seed)


def _direct_stages(cfg: NequIPConfig, vector_scale: float):
    """nequip stages whose last layer keeps l=1 features, with linear scalar and vector heads."""
    stages = nequip_stages(cfg)
    last = f"layer{cfg.num_layers - 1}_convnet"
    names = list(stages)
    for name in names[names.index(last):]:
        del stages[name]
    prev = stages[list(stages)[-1]].irreps_out
    _, hidden = _hidden_irreps(cfg)
    i = cfg.num_layers - 1
    stages[last] = ConvNetLayer(
        irreps_in=prev, feature_irreps_hidden=hidden,
        convolution_kwargs={"radial_mlp_depth": cfg.radial_mlp_depth, "radial_mlp_width": cfg.radial_mlp_width,
                            "use_sc": i != 0, "is_first_layer": i == 0,
                            "avg_num_neighbors": cfg.avg_num_neighbors, "type_names": cfg.type_names},
        resnet=False)
    prev = stages[last].irreps_out
    stages["vector_readout"] = AtomwiseLinear(field=AtomicDataDict.NODE_FEATURES_KEY, out_field=VECTOR_KEY,
                                              irreps_in=prev, irreps_out="1x1o")
    stages["per_atom_energy_readout"] = AtomwiseLinear(
        field=AtomicDataDict.NODE_FEATURES_KEY, out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        irreps_in=stages["vector_readout"].irreps_out, irreps_out="1x0e")
    stages["per_type_energy_scale_shift"] = PerTypeScaleShift(
        type_names=cfg.type_names, field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY, scales=cfg.per_type_energy_scales,
        shifts=cfg.per_type_energy_shifts, scales_trainable=False, shifts_trainable=False,
        irreps_in=stages["per_atom_energy_readout"].irreps_out)
    return stages


class GPFFPseudoForce(torch.nn.Module):
    """GPFF pseudo-force model, ``forward(pos, types, edge_index, edge_shift, n_local)``.

    Returns ``(atom_energy[N], forces[N, 3])`` in eV and eV/A (k = 1 eV/A^2: forces are
    displacements towards the clean structure, in A). Grad mode must be on for the conservative
    head. In training mode outputs keep their graph (``create_graph``) for the loss.
    """

    def __init__(self, backbone: SequentialGraphNetwork, config: GPFFModelConfig,
                 noise: Optional[NoiseConfig] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = config.head
        self.direct = config.head == "direct"
        self.cutoff = float(config.r_max)
        self.num_layers = int(config.num_layers)
        self.type_names: List[str] = list(config.type_names)
        self.model_dtype = config.model_dtype
        self.vector_scale = float(config.vector_scale)
        noise = noise or NoiseConfig()
        self.sigma_min = float(noise.sigma_min)
        self.sigma_max = float(noise.sigma_max)
        self.config_json = json.dumps(config.to_dict(), sort_keys=True)
        self.shift_field = EDGE_SHIFT_KEY
        self.vector_field = VECTOR_KEY

    @property
    @torch.jit.unused
    def config(self) -> GPFFModelConfig:
        return GPFFModelConfig(**json.loads(self.config_json))

    def forward(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        pos = pos.detach()
        if not self.direct:
            pos = pos.requires_grad_(True)
        data: Dict[str, torch.Tensor] = {
            AtomicDataDict.POSITIONS_KEY: pos.to(torch.float64),
            AtomicDataDict.ATOM_TYPE_KEY: types.to(torch.long),
            AtomicDataDict.EDGE_INDEX_KEY: edge_index.to(torch.long),
            self.shift_field: edge_shift.to(torch.float64),
        }
        data = self.backbone(data)
        atom_energy = data[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1).to(pos.dtype)
        if self.direct:
            vec = data[self.vector_field].to(pos.dtype) * self.vector_scale
            owned = (torch.arange(pos.shape[0], device=pos.device) < n_local).to(pos.dtype)
            forces = vec * owned.unsqueeze(1)
        else:
            forces = local_energy_forces(atom_energy, pos, n_local, create_graph=self.training)
        if self.training:
            return atom_energy, forces
        return atom_energy.detach(), forces.detach()


def build_gpff_model(config: Optional[GPFFModelConfig] = None, noise: Optional[NoiseConfig] = None,
                     **options: Any) -> GPFFPseudoForce:
    """A fresh :class:`GPFFPseudoForce` (options: the fields of :class:`GPFFModelConfig`)."""
    if config is not None and options:
        raise TypeError("pass either a GPFFModelConfig or keyword options, not both")
    cfg = config if config is not None else GPFFModelConfig.from_dict(options)
    ncfg = cfg.nequip_config()
    with _building(_DTYPES[ncfg.model_dtype], ncfg.seed):
        stages = _direct_stages(ncfg, cfg.vector_scale) if cfg.head == "direct" else nequip_stages(ncfg)
        net = SequentialGraphNetwork(stages)
    return GPFFPseudoForce(net, cfg, noise)


def script_gpff_model(model: GPFFPseudoForce, device: str = "cpu") -> torch.jit.ScriptModule:
    """TorchScript the model (nequip's way; the input model is left untouched)."""
    return script_nequip_model(model, device)


@dataclass
class SamplerDefaults:
    """Sampler defaults written into the artifact (what ``sample`` uses when not told)."""

    sampler: str = "heun"
    nfe: int = 32
    schedule: str = "karras"
    rho: float = 7.0
    denoise_step: float = 0.5
    sigma_start: Optional[float] = None  # generation from noise starts here (None: sigma_max)
    eta: Optional[float] = None  # ancestral noise of the tested setting (None: 1 standalone, 0 engines)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler '{self.sampler}': use one of {SAMPLERS}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SamplerDefaults":
        return options_from_dict(cls, d, "sampler options")


def gpff_metadata(model_config: GPFFModelConfig, noise: Optional[NoiseConfig] = None,
                  sampler: Optional[SamplerDefaults] = None, periodicity: str = "nonperiodic",
                  provenance: Optional[Dict[str, Any]] = None,
                  prior: Optional[Dict[str, Any]] = None) -> ArtifactMetadata:
    """Artifact metadata for a GPFF model (role ``pseudo_force``, method ``gpff``).

    ``prior``: the start-structure prior of generation (``generate.py``), e.g.
    ``{"kind": "gaussian", "coord_var_coeff": a}`` (per-coordinate variance ``sigma^2 + a N^(2/3)``)."""
    noise = noise or NoiseConfig()
    sampler = sampler or SamplerDefaults()
    cfg = model_config
    role_fields = {
        "conservative": cfg.head == "conservative",
        "head": cfg.head,
        "sigma_min": noise.sigma_min,
        "sigma_max": noise.sigma_max,
        "noise": {"kind": "variance_exploding", **noise.to_dict(),
                  "centroid": "unweighted centroid of the noise removed per molecule"},
        "pseudo_energy": {"form": "quadratic", "spring_constant": 1.0,
                          "spring_constant_units": "eV/angstrom^2",
                          "target": (("F = R* P*x0 + t* - x (clean structure with like atoms relabelled (P*) "
                                      "and Kabsch-aligned to x, nearest copy)") if noise.relabel_target else
                                     "F = R* x0 + t* - x (clean structure Kabsch-aligned to x)"
                                     if noise.align_target else "F = x0 - x"),
                          "time_input": False},
        "default_sampler": sampler.sampler,
        "default_nfe": int(sampler.nfe),
        "sampler_schedule": {"kind": sampler.schedule, "rho": sampler.rho},
        "denoise_step": sampler.denoise_step,
        "samplers": list(SAMPLERS),
        "graph": f"all pairs within the cutoff ({cfg.r_max:g} A); no periodic images for molecules",
    }
    if prior is not None:
        role_fields["prior"] = dict(prior)
    if sampler.sigma_start is not None or sampler.eta is not None:
        role_fields["generation"] = {k: v for k, v in (("sigma_start", sampler.sigma_start), ("eta", sampler.eta))
                                     if v is not None}
    return ArtifactMetadata(
        role="pseudo_force", method=METHOD_NAME, type_names=list(cfg.type_names), cutoff=float(cfg.r_max),
        num_message_passing_layers=int(cfg.num_layers), units=dict(PSEUDO_ENERGY_UNITS),
        dtype=cfg.model_dtype, periodicity=periodicity, role_fields=role_fields,
        provenance={"backbone": "nequip", "gpff_model_config": cfg.to_dict(), **(provenance or {})})


__all__ = [
    "GPFFModelConfig", "GPFFPseudoForce", "HEADS", "METHOD_NAME", "SAMPLERS", "SamplerDefaults",
    "build_gpff_model", "gpff_metadata", "script_gpff_model",
]
