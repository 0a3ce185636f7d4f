"""RM ``pseudo_force`` model: NequIP per-atom pseudo-energy + the analytic short-range repulsion.

Conservative by construction: ``forces = -dE/dx`` of ``E = sum(atom_energy[:n_local])``, and the
strain derivative is ``D = dE/d eta = sum_e r_e (x) dE/dr_e`` (every edge vector is
``pos[j] - pos[i] + edge_shift``, and the energy depends on positions only through edge vectors),
so ``-D`` is exactly the virial LAMMPS's pair ep/torch accumulates with ``fdotr`` over local and
ghost atoms. ``forward`` keeps the role contract (atom_energy, forces); the exported method
``energy_forces_virial`` also returns ``W = -D`` for standalone callers (stress = ``D / V``), taken
from the gradient with respect to ``edge_shift`` (``dE/d shift_e = dE/d r_e``).

Per-atom repulsion energy of centre i: ``(k_rep/4) sum_{edges i->j} max(0, r0_ij - r_ij)^2`` (half
of each pair; see :mod:`.noise`). Ghost nodes (LAMMPS) get per-atom energies too; only the owned
atoms' sum is the energy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from engine_plugins.export.metadata import ArtifactMetadata
from engine_plugins.methods.response_matching.noise import PSEUDO_ENERGY_UNITS, RMNoiseConfig, repulsion_radii
from engine_plugins.nn.nequip_backbone import (
    EDGE_SHIFT_KEY,
    NequIPConfig,
    _building,
    _DTYPES,
    nequip_stages,
    script_nequip_model,
)
from engine_plugins.options import options_from_dict

from nequip.data import AtomicDataDict  # noqa: E402
from nequip.nn import SequentialGraphNetwork  # noqa: E402

METHOD_NAME = "response_matching"


@dataclass
class RMModelConfig:
    """The NequIP backbone's options (``r_max`` is the cutoff, A) for an RM model."""

    type_names: List[str] = field(default_factory=list)
    r_max: float = 4.0
    avg_num_neighbors: Optional[float] = None  # None: computed from the training crystals
    num_layers: int = 2
    l_max: int = 1
    parity: bool = True
    num_features: int = 16
    num_bessels: int = 8
    radial_mlp_depth: int = 1
    radial_mlp_width: int = 32
    polynomial_cutoff_p: int = 6
    readout_mlp_hidden_layers_depth: int = 1
    readout_mlp_hidden_layers_width: Optional[int] = 16
    energy_scale: float = 1.0
    model_dtype: str = "float64"
    seed: int = 0

    def __post_init__(self) -> None:
        self.type_names = list(self.type_names)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RMModelConfig":
        return options_from_dict(cls, d, "RM model options")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def nequip_config(self) -> NequIPConfig:
        if self.avg_num_neighbors is None:
            raise ValueError("model.avg_num_neighbors is not set. Fix: give it, or let the trainer compute it "
                             "from the training crystals")
        if not self.type_names:
            raise ValueError("model.type_names is empty. Fix: list the elements, or let the trainer take them "
                             "from the training crystals")
        return NequIPConfig(
            type_names=self.type_names, r_max=self.r_max, avg_num_neighbors=float(self.avg_num_neighbors),
            num_layers=self.num_layers, l_max=self.l_max, parity=self.parity, num_features=self.num_features,
            num_bessels=self.num_bessels, polynomial_cutoff_p=self.polynomial_cutoff_p,
            radial_mlp_depth=self.radial_mlp_depth, radial_mlp_width=self.radial_mlp_width,
            readout_mlp_hidden_layers_depth=self.readout_mlp_hidden_layers_depth,
            readout_mlp_hidden_layers_width=self.readout_mlp_hidden_layers_width,
            per_type_energy_scales=float(self.energy_scale), model_dtype=self.model_dtype, seed=self.seed)


class RMPseudoForce(torch.nn.Module):
    """RM pseudo-force model, ``forward(pos, types, edge_index, edge_shift, n_local)``.

    Returns ``(atom_energy[N], forces[N, 3])`` (eV, eV/A). Grad mode must be on. In training mode
    outputs keep their graph (``create_graph``) for force and stress losses.
    """

    def __init__(self, backbone: SequentialGraphNetwork, config: RMModelConfig,
                 noise: Optional[RMNoiseConfig] = None) -> None:
        super().__init__()
        noise = noise or RMNoiseConfig()
        self.backbone = backbone
        self.cutoff = float(config.r_max)
        self.num_layers = int(config.num_layers)
        self.type_names: List[str] = list(config.type_names)
        self.model_dtype = config.model_dtype
        self.register_buffer("rep_radii", repulsion_radii(config.type_names, noise.repulsion_radius_factor))
        self.rep_strength = float(noise.repulsion_strength)
        self.sigma_min = float(noise.sigma_min)
        self.sigma_max = float(noise.sigma_max)
        self.config_json = json.dumps(config.to_dict(), sort_keys=True)
        self.shift_field = EDGE_SHIFT_KEY
        if float(self.rep_radii.max()) >= self.cutoff:
            raise ValueError(f"repulsion radius {float(self.rep_radii.max()):.2f} A reaches the cutoff {self.cutoff} A; "
                             "lower noise.repulsion_radius_factor or raise model.r_max")

    @property
    @torch.jit.unused
    def config(self) -> RMModelConfig:
        return RMModelConfig(**json.loads(self.config_json))

    def atom_energies(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                      edge_shift: torch.Tensor) -> torch.Tensor:
        """Per-atom pseudo-energy [N] (float64): network + repulsion (differentiable in pos and shift)."""
        ei = edge_index.to(torch.long)
        tl = types.to(torch.long)
        p64 = pos.to(torch.float64)
        s64 = edge_shift.to(torch.float64)
        data: Dict[str, torch.Tensor] = {
            AtomicDataDict.POSITIONS_KEY: p64,
            AtomicDataDict.ATOM_TYPE_KEY: tl,
            AtomicDataDict.EDGE_INDEX_KEY: ei,
            self.shift_field: s64,
        }
        data = self.backbone(data)
        e_net = data[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1).to(torch.float64)
        vec = p64[ei[1]] - p64[ei[0]] + s64
        r = vec.square().sum(1).clamp(min=1e-24).sqrt()
        r0 = self.rep_radii.to(torch.float64)[tl[ei[0]], tl[ei[1]]]
        overlap = torch.clamp(r0 - r, min=0.0)
        e_rep = torch.zeros_like(e_net).index_add_(0, ei[0], 0.25 * self.rep_strength * overlap * overlap)
        return e_net + e_rep

    def _grads(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor, edge_shift: torch.Tensor,
               n_local: int, want_shift: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = pos.detach().requires_grad_(True)
        shift = edge_shift.detach()
        if want_shift:
            shift = shift.requires_grad_(True)
        atom_energy = self.atom_energies(pos, types, edge_index, shift)
        total = atom_energy[:n_local].sum()
        inputs = [pos, shift] if want_shift else [pos]
        grad_outputs: List[Optional[torch.Tensor]] = [torch.ones_like(total)]
        grads = torch.autograd.grad([total], inputs, grad_outputs=grad_outputs, create_graph=self.training,
                                    allow_unused=True)
        gp = grads[0]
        forces = torch.zeros_like(pos) if gp is None else -gp
        gs = torch.zeros_like(shift)
        if want_shift:
            g1 = grads[1]
            if g1 is not None:
                gs = g1
        return atom_energy.to(pos.dtype), forces, gs

    def forward(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        atom_energy, forces, _ = self._grads(pos, types, edge_index, edge_shift, n_local, False)
        if self.training:
            return atom_energy, forces
        return atom_energy.detach(), forces.detach()

    @torch.jit.export
    def edge_gradients(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                       edge_shift: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(atom_energy, forces, dE/d r_e [E, 3]); training sums ``r_e (x) dE/dr_e`` per structure."""
        return self._grads(pos, types, edge_index, edge_shift, n_local, True)

    @torch.jit.export
    def energy_forces_virial(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                             edge_shift: torch.Tensor, n_local: int
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(atom_energy [N], forces [N, 3], virial W [3, 3] = -dE/d eta = -sum_e r_e (x) dE/dr_e).

        Stress (ASE sign, eV/A^3) = ``-W / V``. One structure (or sum over a disjoint batch).
        """
        atom_energy, forces, gs = self._grads(pos, types, edge_index, edge_shift, n_local, True)
        ei = edge_index.to(torch.long)
        vec = (pos[ei[1]] - pos[ei[0]] + edge_shift).to(gs.dtype)
        virial = -(vec.unsqueeze(2) * gs.unsqueeze(1)).sum(0)
        if self.training:
            return atom_energy, forces, virial
        return atom_energy.detach(), forces.detach(), virial.detach()


def build_rm_model(config: Optional[RMModelConfig] = None, noise: Optional[RMNoiseConfig] = None,
                   **options: Any) -> RMPseudoForce:
    """A fresh :class:`RMPseudoForce` (options: the fields of :class:`RMModelConfig`)."""
    if config is not None and options:
        raise TypeError("pass either an RMModelConfig or keyword options, not both")
    cfg = config if config is not None else RMModelConfig.from_dict(options)
    ncfg = cfg.nequip_config()
    with _building(_DTYPES[ncfg.model_dtype], ncfg.seed):
        net = SequentialGraphNetwork(nequip_stages(ncfg))
    return RMPseudoForce(net, cfg, noise)


def script_rm_model(model: RMPseudoForce, device: str = "cpu") -> torch.jit.ScriptModule:
    """TorchScript the model (nequip's way; the input model is left untouched)."""
    return script_nequip_model(model, device)


@dataclass
class RelaxDefaults:
    """Relaxation defaults written into the artifact (what the RM relaxations use when not told)."""

    optimizer: str = "FIRE"
    relax_cell: bool = True
    fmax: float = 0.01  # eV/A
    smax: float = 0.001  # eV/A^3
    max_steps: int = 1000
    lammps_min_style: str = "cg"
    lammps_box_relax: str = "tri 0.0"

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RelaxDefaults":
        return options_from_dict(cls, d, "relax options")


def rm_metadata(model_config: RMModelConfig, noise: Optional[RMNoiseConfig] = None,
                relax: Optional[RelaxDefaults] = None, provenance: Optional[Dict[str, Any]] = None
                ) -> ArtifactMetadata:
    """Artifact metadata for an RM crystal model (role ``pseudo_force``, periodicity ``periodic``)."""
    noise = noise or RMNoiseConfig()
    relax = relax or RelaxDefaults()
    cfg = model_config
    role_fields = {
        "conservative": True,
        "head": "conservative",
        "stress": ("virial from the edge-force sum (LAMMPS fdotr) = -dE/d(strain); the artifact also exports "
                   "energy_forces_virial(pos, types, edge_index, edge_shift, n_local) -> (atom_energy, forces, "
                   "virial); stress = -virial / volume (eV/A^3)"),
        "sigma_min": noise.sigma_min,
        "sigma_max": noise.sigma_max,
        "noise": {"kind": "response_matching", **noise.to_dict(),
                  "displacement": "Gaussian per component, centroid removed, sigma log-uniform",
                  "strain": "symmetric, s (G + G^T)/2, s log-uniform in [strain_min, strain_max]"},
        "pseudo_energy": {
            "form": "(k/2) sum |d_i|^2 + (k_eps/2) |eps|^2 + pair repulsion",
            "spring_constant": 1.0, "spring_constant_units": "eV/angstrom^2",
            "strain_stiffness": "k_eps = strain_stiffness * k * N * (V0/N)^(2/3)",
            "repulsion": (f"sum_pairs (k_rep/2) max(0, r0 - r)^2, k_rep = {noise.repulsion_strength} eV/A^2, "
                          f"r0 = {noise.repulsion_radius_factor} x (sum of covalent radii); analytic term inside "
                          "the model"),
            "time_input": False},
        "relaxation": asdict(relax),
        "graph": f"periodic neighbour list within {cfg.r_max:g} A (LAMMPS ghosts, OpenMM minimum image)",
    }
    return ArtifactMetadata(
        role="pseudo_force", method=METHOD_NAME, type_names=list(cfg.type_names), cutoff=float(cfg.r_max),
        num_message_passing_layers=int(cfg.num_layers), units=dict(PSEUDO_ENERGY_UNITS),
        dtype=cfg.model_dtype, periodicity="periodic", role_fields=role_fields,
        provenance={"backbone": "nequip", "rm_model_config": cfg.to_dict(), **(provenance or {})})


__all__ = ["METHOD_NAME", "RMModelConfig", "RMPseudoForce", "RelaxDefaults", "build_rm_model", "rm_metadata",
           "script_rm_model"]
