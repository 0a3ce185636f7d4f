"""NequIP as the default equivariant backbone, and a NequIP ``pseudo_force`` model.

The network is built from nequip 0.19.1's own modules, in the order nequip's ``FullNequIPGNNModel``
builds them (so the same seed gives the same weights; ``tests/test_nequip_backbone.py`` checks that
the two agree), behind our own module with the artifact contract
``forward(pos, types, edge_index, edge_shift, n_local) -> (atom_energy[N], forces[N, 3])``.

NequIP API facts (nequip 0.19.1, e3nn 0.6.0, torch 2.12), found by reading the installed source
---------------------------------------------------------------------------------------------
* Data is a ``Dict[str, Tensor]`` with keys from ``nequip.data.AtomicDataDict``: ``pos`` [N, 3],
  ``atom_types`` [N] (int64), ``edge_index`` [2, E], ``cell`` [1, 3, 3] (rows are cell vectors),
  ``edge_cell_shift`` [E, 3] (integer *cell* shifts), ``edge_vectors`` [E, 3], ``edge_lengths``
  [E, 1], ``node_attrs``/``node_features`` [N, d], ``edge_attrs`` (spherical harmonics),
  ``edge_embedding`` (radial basis), ``edge_cutoff``, ``atomic_energy`` [N, 1], ``total_energy``.
* ``edge_index[0]`` is the centre (nequip calls it "dst", messages are summed onto it) and
  ``edge_index[1]`` the neighbour ("src"); nequip's edge vector is ``pos[ei[1]] - pos[ei[0]] +
  edge_cell_shift @ cell``. That is our convention exactly, with ``edge_shift`` Cartesian.
* Feeding edge vectors: ``nequip.nn.with_edge_vectors_`` (used by ``SphericalHarmonicEdgeAttrs`` and
  ``EdgeLengthNormalizer``) returns early when ``edge_vectors`` is already in the dict. So our first
  stage, :class:`CartesianEdgeVectors`, writes ``edge_vectors = pos[j] - pos[i] + edge_shift`` itself;
  no cell and no ``edge_cell_shift`` are passed. This is exact (no identity-cell round trip, no
  fractional shifts), differentiable with respect to ``pos``, and scriptable. The alternative (an
  identity ``cell`` with the Cartesian shift as ``edge_cell_shift``) gives the same numbers but puts a
  fake cell in the data, which ``ForceStressOutput`` would then use for a meaningless stress.
* ``ForceStressOutput`` (the force head nequip's builders append) differentiates ``total_energy`` of
  *all* nodes, and when ``edge_vectors`` is present it switches to edge forces (the LAMMPS ML-IAP
  path). Neither is our contract (energy of the ``n_local`` owned atoms, forces on every node), so
  we do not use it: the backbone ends at ``atomic_energy`` and :class:`NequIPPseudoForce` takes the
  gradient with ``engine_plugins.nn.forces.local_energy_forces``.
* Ghosts: ``InteractionBlock`` keeps ``num_local_nodes = num_nodes(data)`` unless the LAMMPS ML-IAP
  object is in the data, i.e. with plain tensors every node (ghosts included) is updated in every
  layer. Energies of atoms within ``num_layers * r_max`` of the halo's outer edge are wrong, but
  ``sum(atom_energy[:n_local])`` is exact when the halo is ``num_layers * r_max`` wide.
* ``AvgNumNeighborsNorm`` asserts that ``avg_num_neighbors`` is given (no default); ``type_names``
  must be alphanumeric; per-type energy scales/shifts are a float or a ``{type: value}`` dict (lists
  are rejected). ``PerTypeScaleShift`` always outputs float64 (nequip's "global dtype") and the edge
  geometry is float64 by nequip convention even for a float32 model (``BesselEdgeLengthEncoding`` and
  ``SphericalHarmonicEdgeAttrs`` cast to the model dtype): we compute edge vectors in float64 and
  cast the outputs to the caller's dtype.
* Model builders (``@model_builder``) require ``nequip.utils.global_state.set_global_state()`` to have
  run. It is process-wide: ``torch.set_default_dtype(float64)``, lightning ``seed_everything(123)``
  (python/numpy/torch RNGs, ``PL_GLOBAL_SEED`` env var, a lazily queued CUDA seed), a TorchScript
  fusion strategy, ``PYTORCH_JIT_USE_NNC_NOT_NVFUSER=1``, e3nn optimization defaults, the torch
  multiprocessing sharing strategy, two ``torch._dynamo.config`` flags, TF32 settings on CUDA.
  Also, ``model_builder``'s ``conditional_torchscript_mode`` exit flips e3nn's ``jit_mode`` from
  ``"eager"`` to ``"script"`` (legacy ``jit_script_fx`` mapping). :func:`nequip_global_state`
  snapshots all of that and restores it (and nequip's own "initialized" flag) on exit; the seeding is
  suppressed for the call because we seed model init ourselves. Not thread safe (neither is
  ``torch.set_default_dtype``).
* Scripting: ``nequip-compile --mode torchscript`` refuses torch >= 2.10, but the modules still
  script: ``nequip.utils.compile.prepare_model_for_compile(model, device)`` (parameters
  ``requires_grad=False``, ``eval()``, move) then ``e3nn.util.jit.script(model)`` (recursively honours
  e3nn's ``@compile_mode``). It mutates the module, so :func:`script_nequip_model` works on a deep
  copy. ``torch.jit.script`` emits DeprecationWarnings in torch 2.12 (silenced here).
* Extension point: the backbone is a ``nequip.nn.SequentialGraphNetwork`` of named stages; fields not
  declared by any stage still flow through the dict, so per-node conditioning (time, temperature)
  can be added later as a stage inserted after ``type_embed`` (``SequentialGraphNetwork.insert``, or
  a new entry in :func:`nequip_stages`) reading its own field, like nequip's
  ``categorical_graph_field_embed`` does for graph-level categories.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
from unittest import mock

import torch

from engine_plugins.export.metadata import ArtifactMetadata
from engine_plugins.nn.forces import local_energy_forces
from engine_plugins.options import options_from_dict

# importing this module imports nequip and e3nn (a few seconds); `engine_plugins.nn` does not.
import e3nn  # noqa: E402
from e3nn import o3  # noqa: E402
from e3nn.util.jit import compile_mode  # noqa: E402
from nequip.data import AtomicDataDict  # noqa: E402
from nequip.nn import (  # noqa: E402
    ApplyFactor,
    ConvNetLayer,
    GraphModuleMixin,
    PerTypeScaleShift,
    ScalarMLP,
    SequentialGraphNetwork,
)
from nequip.nn.embedding import (  # noqa: E402
    BesselEdgeLengthEncoding,
    EdgeLengthNormalizer,
    NodeTypeEmbed,
    PolynomialCutoff,
    SphericalHarmonicEdgeAttrs,
)

#: Our Cartesian per-edge shift field (nequip's ``edge_cell_shift`` is in cell units).
EDGE_SHIFT_KEY = "edge_shift"
METHOD_NAME = "nequip_pseudo_force"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------------
# containing nequip's process-wide state
# --------------------------------------------------------------------------------------------------
def _fusion_strategy() -> Any:
    old = torch.jit.set_fusion_strategy([("DYNAMIC", 10)])
    torch.jit.set_fusion_strategy(old)
    return old


@contextlib.contextmanager
def nequip_global_state() -> Iterator[None]:
    """Run nequip's ``set_global_state()`` for the block and undo every global change on exit.

    Restores torch's default dtype, the python/numpy/torch RNG states, environment variables,
    TorchScript fusion strategy, e3nn optimization defaults, multiprocessing sharing strategy,
    ``torch._dynamo.config`` flags, TF32 flags and nequip's own global-state bookkeeping.
    """
    import numpy as np
    import torch._dynamo  # noqa: F401  (set_global_state touches its config)
    from nequip.utils import global_state as gs

    env_keys = ("PYTORCH_JIT_USE_NNC_NOT_NVFUSER", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    saved_dtype = torch.get_default_dtype()
    saved_e3nn = dict(e3nn.get_optimization_defaults())
    saved_fusion = _fusion_strategy()
    saved_sharing = torch.multiprocessing.get_sharing_strategy()
    dyn = torch._dynamo.config
    saved_dynamo = (dyn.capture_dynamic_output_shape_ops, dyn.capture_scalar_outputs)
    saved_py_rng = random.getstate()
    saved_np_rng = np.random.get_state()
    saved_gs = (gs._GLOBAL_STATE_INITIALIZED, dict(gs._latest_global_config))
    cuda = torch.cuda.is_available()
    if cuda:
        saved_tf32 = (torch.backends.fp32_precision, torch.backends.cuda.matmul.allow_tf32,
                      torch.backends.cudnn.allow_tf32)
    cuda_devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            # we seed model init ourselves; nequip's seed_everything(123) would also queue a lazy
            # CUDA seed that no RNG snapshot can undo
            with mock.patch.object(gs, "seed_everything", lambda *a, **k: None):
                gs.set_global_state()
            yield
    finally:
        torch.set_default_dtype(saved_dtype)
        e3nn._OPT_DEFAULTS.clear()
        e3nn._OPT_DEFAULTS.update(saved_e3nn)
        torch.jit.set_fusion_strategy(saved_fusion)
        if torch.multiprocessing.get_sharing_strategy() != saved_sharing:
            torch.multiprocessing.set_sharing_strategy(saved_sharing)
        dyn.capture_dynamic_output_shape_ops, dyn.capture_scalar_outputs = saved_dynamo
        random.setstate(saved_py_rng)
        np.random.set_state(saved_np_rng)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        gs._GLOBAL_STATE_INITIALIZED = saved_gs[0]
        gs._latest_global_config.clear()
        gs._latest_global_config.update(saved_gs[1])
        if cuda:
            torch.backends.fp32_precision = saved_tf32[0]
            torch.backends.cuda.matmul.allow_tf32 = saved_tf32[1]
            torch.backends.cudnn.allow_tf32 = saved_tf32[2]


@contextlib.contextmanager
def _building(model_dtype: torch.dtype, seed: int) -> Iterator[None]:
    """What nequip's ``@model_builder`` does around a build, with the global state contained."""
    from nequip.utils import torch_default_dtype
    from nequip.utils.compile import conditional_torchscript_mode

    with nequip_global_state():
        with conditional_torchscript_mode(False), torch_default_dtype(model_dtype):
            # CPU generator only (torch.manual_seed would also queue a lazy CUDA seed); restored
            # by nequip_global_state's fork_rng
            torch.random.default_generator.manual_seed(seed)
            yield


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
@dataclass
class NequIPConfig:
    """Hyperparameters of the NequIP backbone (names follow nequip's ``NequIPGNNModel``)."""

    type_names: List[str]
    r_max: float
    avg_num_neighbors: Union[float, Dict[str, float]]
    num_layers: int = 3
    l_max: int = 1
    parity: bool = True
    num_features: Union[int, List[int]] = 32
    num_bessels: int = 8
    bessel_trainable: bool = False
    polynomial_cutoff_p: int = 6
    radial_mlp_depth: int = 1
    radial_mlp_width: int = 64
    type_embed_num_features: Optional[int] = None
    readout_mlp_hidden_layers_depth: int = 0
    readout_mlp_hidden_layers_width: Optional[int] = None
    per_type_energy_scales: Union[float, Dict[str, float]] = 1.0
    per_type_energy_shifts: Union[float, Dict[str, float]] = 0.0
    per_type_energy_scales_trainable: bool = False
    per_type_energy_shifts_trainable: bool = False
    model_dtype: str = "float64"
    seed: int = 0

    def __post_init__(self) -> None:
        self.type_names = list(self.type_names)
        if not self.type_names or not all(isinstance(t, str) and t.isalnum() for t in self.type_names):
            raise ValueError(f"type_names {self.type_names!r}: nequip needs a non-empty list of "
                             "alphanumeric names. Fix: rename the types (e.g. 'CA' not 'C-alpha')")
        if len(set(self.type_names)) != len(self.type_names):
            raise ValueError(f"type_names {self.type_names!r} has duplicates")
        if not self.r_max > 0:
            raise ValueError(f"r_max={self.r_max!r}: the cutoff must be positive")
        if self.avg_num_neighbors is None:
            raise ValueError("avg_num_neighbors is required (nequip normalises neighbour sums by "
                             "1/sqrt of it). Fix: pass the mean neighbour count within r_max of the "
                             "training data, e.g. engine_plugins.nn.nequip_backbone.average_num_neighbors")
        if int(self.num_layers) < 1:
            raise ValueError(f"num_layers={self.num_layers}: need at least one interaction layer")
        if self.model_dtype not in _DTYPES:
            raise ValueError(f"model_dtype={self.model_dtype!r}: use 'float32' or 'float64'")
        if self.l_max < 0:
            raise ValueError(f"l_max={self.l_max}: must be >= 0")
        self.r_max = float(self.r_max)

    @classmethod
    def from_kwargs(cls, **config: Any) -> "NequIPConfig":
        return options_from_dict(cls, config, "NequIP backbone options")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def average_num_neighbors(pos: torch.Tensor, r_max: float, box: Optional[torch.Tensor] = None) -> float:
    """Mean number of neighbours within ``r_max`` (the value nequip wants as ``avg_num_neighbors``)."""
    from engine_plugins.nn.graph import neighbor_graph

    edge_index, _ = neighbor_graph(pos, float(r_max), box)
    return float(edge_index.shape[1]) / max(1, pos.shape[0])


# --------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------
@compile_mode("script")
class CartesianEdgeVectors(GraphModuleMixin, torch.nn.Module):
    """``edge_vectors = pos[j] - pos[i] + edge_shift`` (Cartesian shifts; our graph convention).

    nequip's ``with_edge_vectors_`` then uses these as they are, so no cell is needed.
    """

    def __init__(self, shift_field: str = EDGE_SHIFT_KEY, irreps_in: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.shift_field = shift_field
        self._init_irreps(
            irreps_in={**(irreps_in or {}), shift_field: "1o"},
            irreps_out={AtomicDataDict.EDGE_VECTORS_KEY: "1o", AtomicDataDict.EDGE_LENGTH_KEY: "0e"},
        )

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        pos = data[AtomicDataDict.POSITIONS_KEY]
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        vec = torch.index_select(pos, 0, edge_index[1]) - torch.index_select(pos, 0, edge_index[0])
        if self.shift_field in data:
            vec = vec + data[self.shift_field].to(vec.dtype)
        data[AtomicDataDict.EDGE_VECTORS_KEY] = vec
        data[AtomicDataDict.EDGE_LENGTH_KEY] = vec.square().sum(1, keepdim=True).sqrt()
        return data


def _hidden_irreps(cfg: NequIPConfig) -> Tuple[List[int], str]:
    num_features = cfg.num_features
    if isinstance(num_features, int):
        num_features = [num_features] * (cfg.l_max + 1)
    num_features = list(num_features)
    if len(num_features) != cfg.l_max + 1:
        raise ValueError(f"num_features={num_features} must have l_max + 1 = {cfg.l_max + 1} entries")
    irreps = o3.Irreps([
        (num_features[l], (l, p))
        for l in range(cfg.l_max + 1)
        for p in ((1, -1) if cfg.parity else ((1,) if l % 2 == 0 else (-1,)))
    ])
    return num_features, repr(irreps)


def nequip_stages(cfg: NequIPConfig) -> "OrderedDict[str, GraphModuleMixin]":
    """The backbone's named stages, built in nequip's ``FullNequIPGNNModel`` order.

    Call inside :func:`_building` (dtype and seed). Later stages read fields by name, so a new
    stage (e.g. time conditioning after ``type_embed``) is added by inserting it here.
    """
    num_features, hidden = _hidden_irreps(cfg)
    layer_irreps = [hidden] * (cfg.num_layers - 1) + [repr(o3.Irreps([(num_features[0], (0, 1))]))]
    type_embed_features = cfg.type_embed_num_features or num_features[0]

    stages: "OrderedDict[str, GraphModuleMixin]" = OrderedDict()
    stages["edge_vectors"] = CartesianEdgeVectors()
    stages["type_embed"] = NodeTypeEmbed(type_names=cfg.type_names, num_features=type_embed_features,
                                         irreps_in=stages["edge_vectors"].irreps_out)
    stages["spharm"] = SphericalHarmonicEdgeAttrs(
        irreps_edge_sh=repr(o3.Irreps.spherical_harmonics(lmax=cfg.l_max)),
        irreps_in=stages["type_embed"].irreps_out)
    stages["edge_norm"] = EdgeLengthNormalizer(r_max=cfg.r_max, type_names=cfg.type_names,
                                               irreps_in=stages["spharm"].irreps_out)
    stages["bessel_encode"] = BesselEdgeLengthEncoding(
        num_bessels=cfg.num_bessels, trainable=cfg.bessel_trainable,
        cutoff=PolynomialCutoff(cfg.polynomial_cutoff_p),
        edge_invariant_field=AtomicDataDict.EDGE_EMBEDDING_KEY, irreps_in=stages["edge_norm"].irreps_out)
    # nequip's Bessel normalisation (kept for weight compatibility with nequip's builder)
    stages["factor"] = ApplyFactor(in_field=AtomicDataDict.EDGE_EMBEDDING_KEY,
                                   factor=(2 * math.pi) / (cfg.r_max * cfg.r_max),
                                   irreps_in=stages["bessel_encode"].irreps_out)
    prev = stages["factor"].irreps_out
    for i in range(cfg.num_layers):
        layer = ConvNetLayer(
            irreps_in=prev,
            feature_irreps_hidden=layer_irreps[i],
            convolution_kwargs={
                "radial_mlp_depth": cfg.radial_mlp_depth,
                "radial_mlp_width": cfg.radial_mlp_width,
                "use_sc": i != 0,  # isolated-atom limit, as nequip does
                "is_first_layer": i == 0,
                "avg_num_neighbors": cfg.avg_num_neighbors,
                "type_names": cfg.type_names,
            },
            resnet=False,
        )
        stages[f"layer{i}_convnet"] = layer
        prev = layer.irreps_out
    width = cfg.readout_mlp_hidden_layers_width or o3.Irreps(layer_irreps[-1]).dim
    stages["per_atom_energy_readout"] = ScalarMLP(
        output_dim=1, hidden_layers_depth=cfg.readout_mlp_hidden_layers_depth,
        hidden_layers_width=width, nonlinearity="silu", bias=False, forward_weight_init=True,
        field=AtomicDataDict.NODE_FEATURES_KEY, out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        irreps_in=prev)
    stages["per_type_energy_scale_shift"] = PerTypeScaleShift(
        type_names=cfg.type_names, field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        scales=cfg.per_type_energy_scales, shifts=cfg.per_type_energy_shifts,
        scales_trainable=cfg.per_type_energy_scales_trainable,
        shifts_trainable=cfg.per_type_energy_shifts_trainable,
        irreps_in=stages["per_atom_energy_readout"].irreps_out)
    return stages


def build_nequip_backbone(config: Optional[NequIPConfig] = None, **options: Any) -> SequentialGraphNetwork:
    """NequIP network as a nequip graph module: data dict in, data dict out.

    Inputs: ``pos`` (float64 by nequip convention), ``atom_types``, ``edge_index`` [centre, neighbour],
    ``edge_shift`` (Cartesian). Outputs: ``node_features`` (per-atom invariant scalars of the last
    layer) and ``atomic_energy`` [N, 1]. Options: the fields of :class:`NequIPConfig` as keywords
    (registration-friendly ``build_nequip_backbone(**config)``), or a ready ``config``. The global
    state (default dtype, RNGs, ...) is the same after the call as before; ``seed`` makes the init
    deterministic.
    """
    if config is not None and options:
        raise TypeError("pass either a NequIPConfig or keyword options, not both")
    cfg = config if config is not None else NequIPConfig.from_kwargs(**options)
    with _building(_DTYPES[cfg.model_dtype], cfg.seed):
        net = SequentialGraphNetwork(nequip_stages(cfg))
    net.nequip_config = cfg  # plain python attribute, dropped by TorchScript
    return net


class NequIPPseudoForce(torch.nn.Module):
    """Conservative ``pseudo_force`` model: the NequIP backbone's per-atom energies and their forces.

    ``forward(pos, types, edge_index, edge_shift, n_local)`` follows
    :mod:`engine_plugins.export.roles`: energy ``sum(atom_energy[:n_local])``, forces on every node
    (ghosts included). Grad mode must be on (the caller's default). In training mode the forces keep
    their graph (``create_graph``) so that a force loss can be backpropagated.
    """

    def __init__(self, backbone: SequentialGraphNetwork, config: NequIPConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.cutoff = float(config.r_max)
        self.num_layers = int(config.num_layers)
        self.type_names: List[str] = list(config.type_names)
        self.model_dtype = config.model_dtype
        self.config_json = json.dumps(config.to_dict(), sort_keys=True)
        self.shift_field = EDGE_SHIFT_KEY  # TorchScript cannot read module-level str globals

    @property
    @torch.jit.unused
    def config(self) -> NequIPConfig:
        return NequIPConfig(**json.loads(self.config_json))

    def forward(self, pos: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        pos = pos.detach().requires_grad_(True)
        data: Dict[str, torch.Tensor] = {
            AtomicDataDict.POSITIONS_KEY: pos.to(torch.float64),  # nequip's data dtype
            AtomicDataDict.ATOM_TYPE_KEY: types.to(torch.long),
            AtomicDataDict.EDGE_INDEX_KEY: edge_index.to(torch.long),
            self.shift_field: edge_shift.to(torch.float64),
        }
        data = self.backbone(data)
        atom_energy = data[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1).to(pos.dtype)
        forces = local_energy_forces(atom_energy, pos, n_local, create_graph=self.training)
        if self.training:
            return atom_energy, forces
        return atom_energy.detach(), forces.detach()


def build_nequip_pseudo_force(**config: Any) -> NequIPPseudoForce:
    """A :class:`NequIPPseudoForce` with a fresh backbone (options: :class:`NequIPConfig`)."""
    cfg = NequIPConfig.from_kwargs(**config)
    return NequIPPseudoForce(build_nequip_backbone(config=cfg), cfg)


def script_nequip_model(model: torch.nn.Module, device: Union[str, torch.device] = "cpu"
                        ) -> torch.jit.ScriptModule:
    """TorchScript a NequIP-based model the way nequip did before torch 2.10.

    ``prepare_model_for_compile`` (frozen parameters, eval, device) on a deep copy, then e3nn's
    ``script``. The input model and the global state are left as they were.
    """
    from e3nn.util.jit import script
    from nequip.utils.compile import prepare_model_for_compile

    work = prepare_model_for_compile(copy.deepcopy(model), device)
    with nequip_global_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return script(work)


def nequip_pseudo_force_metadata(model_or_config: Union[NequIPPseudoForce, NequIPConfig],
                                 units: Optional[Dict[str, str]] = None, periodicity: str = "any",
                                 provenance: Optional[Dict[str, Any]] = None) -> ArtifactMetadata:
    """Artifact metadata for an exported :class:`NequIPPseudoForce` (role ``pseudo_force``)."""
    cfg = model_or_config.config if isinstance(model_or_config, NequIPPseudoForce) else model_or_config
    return ArtifactMetadata(
        role="pseudo_force",
        method=METHOD_NAME,
        type_names=list(cfg.type_names),
        cutoff=float(cfg.r_max),
        num_message_passing_layers=int(cfg.num_layers),
        units=dict(units or {"length": "angstrom", "energy": "kcal/mol", "time": "fs"}),
        dtype=cfg.model_dtype,
        periodicity=periodicity,
        role_fields={"conservative": True},
        provenance={"backbone": "nequip", "nequip_config": cfg.to_dict(), **(provenance or {})},
    )


__all__ = [
    "EDGE_SHIFT_KEY",
    "CartesianEdgeVectors",
    "NequIPConfig",
    "NequIPPseudoForce",
    "average_num_neighbors",
    "build_nequip_backbone",
    "build_nequip_pseudo_force",
    "nequip_global_state",
    "nequip_pseudo_force_metadata",
    "nequip_stages",
    "script_nequip_model",
]
