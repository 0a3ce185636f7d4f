"""The learned flow vector field for the ``propagator`` and ``corrector`` roles (NequIP backbone).

One network, two geometries (LiFlow's design on NequIP modules):

* the graph is built by the caller on the conditioning frame ``x_cond`` (cutoff ``r_max``) and
  shared by every flow step; the edge geometry NequIP sees (spherical harmonics, Bessel radial
  basis, polynomial cutoff) is that of ``x_cond``;
* the flow state enters twice: as an ``l = 1`` node feature ``(x_t - x_cond) / disp_scale[type]``
  (``1x1o``, appended to the scalar node features) and, when ``edge_state`` is on, through the
  lengths of the edge vectors of ``x_t`` (a second Bessel basis on ``|x_t[j] - x_t[i] + shift|``,
  multiplied by the ``x_cond`` cutoff envelope so that an edge still fades out smoothly with the
  ``x_cond`` geometry the graph was built on);
* conditioning: Gaussian-Fourier features of the flow time ``t`` and of ``T / 1000 K``, mapped by
  a small MLP and added to the scalar node features after the type embedding;
* every interaction layer keeps ``l = 1`` features and an equivariant linear map gives one ``1o``
  vector per atom, multiplied by a per-type output scale (``out_scale``, Å, set from the data).

Properties (tests/test_propagator_model.py): rotation equivariant, translation invariant (only
differences of positions enter), local (a node sees nodes within ``num_layers`` graph hops of
edges shorter than ``r_max``: the halo is ``num_layers * r_max``), TorchScript-able (nequip's way,
:func:`script_flow_model`), float64 by default, float32 optional (edge geometry in float64 as
nequip does, outputs in the caller's dtype).

NequIP modules used as they are: ``CartesianEdgeVectors`` (ours, from the backbone module),
``NodeTypeEmbed``, ``SphericalHarmonicEdgeAttrs``, ``EdgeLengthNormalizer``,
``BesselEdgeLengthEncoding``, ``ApplyFactor``, ``ConvNetLayer``, ``AtomwiseLinear``; new stages
(:class:`FlowConditioning`, :class:`FlowStateEmbedding`) are nequip ``GraphModuleMixin`` modules
inserted into the same ``SequentialGraphNetwork``. nequip's process-wide state is contained by
:func:`engine_plugins.nn.nequip_backbone._building` exactly as for the other NequIP models.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch

from engine_plugins.nn.nequip_backbone import (
    EDGE_SHIFT_KEY,
    CartesianEdgeVectors,
    _building,
    _DTYPES,
    script_nequip_model,
)
from engine_plugins.options import options_from_dict

from e3nn import o3  # noqa: E402
from e3nn.util.jit import compile_mode  # noqa: E402
from nequip.data import AtomicDataDict  # noqa: E402
from nequip.nn import ApplyFactor, AtomwiseLinear, ConvNetLayer, GraphModuleMixin, SequentialGraphNetwork  # noqa: E402
from nequip.nn.embedding import (  # noqa: E402
    BesselEdgeLengthEncoding,
    EdgeLengthNormalizer,
    NodeTypeEmbed,
    PolynomialCutoff,
    SphericalHarmonicEdgeAttrs,
)

METHOD_NAME = "flow_propagator"
#: data-dict fields of the new stages
FLOW_POS_KEY = "flow_pos"
FLOW_TIME_KEY = "flow_time"
TEMPERATURE_KEY = "temperature"
VELOCITY_KEY = "flow_velocity"
NOISE_LEVEL_KEY = "corrector_noise_level"


@dataclass
class FlowModelConfig:
    """Options of the flow vector field (NequIP names where they exist; ``r_max`` is the cutoff).

    ``disp_scale`` and ``out_scale`` (Å per type) normalise the flow state and scale the output;
    the trainer sets them from the training data when they are left ``None``.
    """

    type_names: List[str] = field(default_factory=lambda: ["Fw", "Li"])
    r_max: float = 4.5
    avg_num_neighbors: Optional[float] = None  # None: computed by the trainer from the data
    num_layers: int = 2
    l_max: int = 1
    parity: bool = False
    num_features: int = 16
    num_bessels: int = 8
    radial_mlp_depth: int = 1
    radial_mlp_width: int = 32
    polynomial_cutoff_p: int = 6
    fourier_features: int = 16       # sin + cos pairs per conditioning input (32 numbers each)
    fourier_scale_time: float = 2.0  # std of the random frequencies for t in [0, 1]
    fourier_scale_temperature: float = 1.0  # ... for T / 1000 K
    edge_state: bool = True          # Bessel features of the x_t edge lengths as well
    noise_conditioning: bool = False  # a corrector told its input's noise level s (A) per atom
    fourier_scale_noise: float = 4.0  # std of the random frequencies for s in angstrom
    disp_scale: Optional[Dict[str, float]] = None
    out_scale: Optional[Dict[str, float]] = None
    model_dtype: str = "float64"
    seed: int = 0

    def __post_init__(self) -> None:
        self.type_names = list(self.type_names)
        if not self.type_names or not all(isinstance(t, str) and t.isalnum() for t in self.type_names):
            raise ValueError(f"model.type_names {self.type_names!r}: need a non-empty list of alphanumeric names. "
                             "Fix: rename the types (nequip's rule)")
        if not float(self.r_max) > 0:
            raise ValueError(f"model.r_max={self.r_max!r}: the cutoff must be positive (angstrom)")
        if int(self.num_layers) < 1:
            raise ValueError(f"model.num_layers={self.num_layers}: need at least one interaction layer")
        if self.l_max < 1:
            raise ValueError(f"model.l_max={self.l_max}: the vector head needs l_max >= 1")
        if self.model_dtype not in _DTYPES:
            raise ValueError(f"model.model_dtype={self.model_dtype!r}: use 'float32' or 'float64'")
        for name in ("disp_scale", "out_scale"):
            table = getattr(self, name)
            if table is None:
                continue
            missing = [t for t in self.type_names if t not in table]
            if missing:
                raise ValueError(f"model.{name} has no entry for type(s) {missing}. Fix: one value (angstrom) per type")
            bad = {t: v for t, v in table.items() if not (math.isfinite(float(v)) and float(v) > 0)}
            if bad:
                raise ValueError(f"model.{name} must be positive and finite, got {bad}")
        self.r_max = float(self.r_max)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FlowModelConfig":
        return options_from_dict(cls, d, "flow model options")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def hidden_irreps(self) -> str:
        parities = (1, -1) if self.parity else None
        items = []
        for l in range(self.l_max + 1):
            ps = parities if parities is not None else ((1,) if l % 2 == 0 else (-1,))
            items += [(self.num_features, (l, p)) for p in ps]
        return repr(o3.Irreps(items))


# --------------------------------------------------------------------------------------------------
# new graph stages
# --------------------------------------------------------------------------------------------------
@compile_mode("script")
class FlowConditioning(GraphModuleMixin, torch.nn.Module):
    """Add MLP(GaussianFourier(t), GaussianFourier(T / 1000 K)) to the scalar node features.

    Gaussian-Fourier features: ``[sin(2 pi B x), cos(2 pi B x)]`` with fixed random ``B ~ N(0, s^2)``
    (seeded; a buffer, so it travels with the model).
    """

    def __init__(self, num_features: int, fourier_features: int, scale_time: float, scale_temperature: float,
                 irreps_in: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self._init_irreps(irreps_in=irreps_in, required_irreps_in=[AtomicDataDict.NODE_FEATURES_KEY])
        dtype = torch.get_default_dtype()
        self.register_buffer("freq_time", torch.randn(fourier_features, dtype=dtype) * scale_time)
        self.register_buffer("freq_temperature", torch.randn(fourier_features, dtype=dtype) * scale_temperature)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4 * fourier_features, num_features), torch.nn.SiLU(),
                                       torch.nn.Linear(num_features, num_features))
        scalars = self.irreps_in[AtomicDataDict.NODE_FEATURES_KEY]
        if not all(ir.l == 0 and ir.p == 1 for _, ir in scalars) or scalars.dim != num_features:
            raise ValueError(f"FlowConditioning needs {num_features} even scalar node features, got {scalars}")
        self._dtype = dtype
        self.time_field = FLOW_TIME_KEY  # TorchScript cannot read module-level str globals
        self.temperature_field = TEMPERATURE_KEY

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        t = data[self.time_field].to(self._dtype).view(-1, 1)
        temp = data[self.temperature_field].to(self._dtype).view(-1, 1) / 1000.0
        a = 2.0 * math.pi * t * self.freq_time.view(1, -1)
        b = 2.0 * math.pi * temp * self.freq_temperature.view(1, -1)
        emb = torch.cat([torch.sin(a), torch.cos(a), torch.sin(b), torch.cos(b)], dim=1)
        data[AtomicDataDict.NODE_FEATURES_KEY] = data[AtomicDataDict.NODE_FEATURES_KEY] + self.mlp(emb)
        return data


@compile_mode("script")
class NoiseLevelConditioning(GraphModuleMixin, torch.nn.Module):
    """Add MLP(GaussianFourier(s)) to the scalar node features, s the noise level (A) of each atom.

    Why: a corrector that is not told s must guess it from the frame and, on a frame that is
    already clean, still pulls the atoms towards their mean sites (a cold framework); told s, it
    moves a frame only as far as noise of that size explains (seed 003's refinement is likewise
    conditioned on its noise level).
    """

    def __init__(self, num_features: int, fourier_features: int, scale: float,
                 irreps_in: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self._init_irreps(irreps_in=irreps_in, required_irreps_in=[AtomicDataDict.NODE_FEATURES_KEY])
        dtype = torch.get_default_dtype()
        self.register_buffer("freq_noise", torch.randn(fourier_features, dtype=dtype) * scale)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * fourier_features, num_features), torch.nn.SiLU(),
                                       torch.nn.Linear(num_features, num_features))
        self._dtype = dtype
        self.noise_field = NOISE_LEVEL_KEY

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        s = data[self.noise_field].to(self._dtype).view(-1, 1)
        a = 2.0 * math.pi * s * self.freq_noise.view(1, -1)
        emb = torch.cat([torch.sin(a), torch.cos(a)], dim=1)
        data[AtomicDataDict.NODE_FEATURES_KEY] = data[AtomicDataDict.NODE_FEATURES_KEY] + self.mlp(emb)
        return data


@compile_mode("script")
class FlowStateEmbedding(GraphModuleMixin, torch.nn.Module):
    """Bring the flow state ``x_t`` in: a ``1x1o`` node feature and (optionally) x_t edge lengths.

    * node features become ``[scalars, (x_t - x_cond) / disp_scale[type]]`` (irreps ``F x 0e + 1x1o``);
    * with ``edge_state``, ``edge_embedding`` becomes ``[bessel(|r_cond|), bessel(|r_t|)] * cutoff(|r_cond|)``
      where ``r_t = x_t[j] - x_t[i] + shift`` (translation invariant, no singularity at r_t = 0).
    """

    def __init__(self, r_max: float, num_bessels: int, disp_scale: List[float], edge_state: bool,
                 irreps_in: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        irreps_in = dict(irreps_in or {})
        scalars = o3.Irreps(irreps_in[AtomicDataDict.NODE_FEATURES_KEY])
        n_edge = o3.Irreps(irreps_in[AtomicDataDict.EDGE_EMBEDDING_KEY]).num_irreps
        irreps_out = {AtomicDataDict.NODE_FEATURES_KEY: repr((scalars + o3.Irreps("1x1o")).simplify())}
        if edge_state:
            irreps_out[AtomicDataDict.EDGE_EMBEDDING_KEY] = repr(o3.Irreps([(n_edge + num_bessels, (0, 1))]))
        self._init_irreps(irreps_in=irreps_in, irreps_out=irreps_out)
        self.edge_state = bool(edge_state)
        self.r_max = float(r_max)
        self.register_buffer("bessel_weights", torch.linspace(1.0, num_bessels, num_bessels,
                                                              dtype=torch.float64).unsqueeze(0))
        self.register_buffer("disp_scale", torch.tensor(disp_scale, dtype=torch.float64))
        self.shift_field = EDGE_SHIFT_KEY
        self.flow_pos_field = FLOW_POS_KEY
        self._dtype = torch.get_default_dtype()

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        pos = data[AtomicDataDict.POSITIONS_KEY]
        x_t = data[self.flow_pos_field]
        types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        d = (x_t - pos) / self.disp_scale[types].unsqueeze(1)
        data[AtomicDataDict.NODE_FEATURES_KEY] = torch.cat(
            [data[AtomicDataDict.NODE_FEATURES_KEY], d.to(self._dtype)], dim=1)
        if self.edge_state:
            ei = data[AtomicDataDict.EDGE_INDEX_KEY]
            r = torch.index_select(x_t, 0, ei[1]) - torch.index_select(x_t, 0, ei[0])
            if self.shift_field in data:
                r = r + data[self.shift_field].to(r.dtype)
            x = r.square().sum(1, keepdim=True).sqrt() / self.r_max
            bessel = torch.sinc(x * self.bessel_weights) * self.bessel_weights
            envelope = data[AtomicDataDict.EDGE_CUTOFF_KEY].to(torch.float64).view(-1, 1)
            # same normalisation as the x_cond Bessel features (nequip's 2 pi / r_max^2 factor)
            extra = (bessel * envelope * (2.0 * math.pi / (self.r_max * self.r_max))).to(self._dtype)
            data[AtomicDataDict.EDGE_EMBEDDING_KEY] = torch.cat([data[AtomicDataDict.EDGE_EMBEDDING_KEY], extra], 1)
        return data


def flow_stages(cfg: FlowModelConfig) -> "OrderedDict[str, GraphModuleMixin]":
    """The named stages of the vector field (call inside ``_building``)."""
    if cfg.avg_num_neighbors is None:
        raise ValueError("model.avg_num_neighbors is not set. Fix: give it, or let the trainer compute it "
                         "from the training frames")
    disp = [float((cfg.disp_scale or {}).get(t, 1.0)) for t in cfg.type_names]
    hidden = cfg.hidden_irreps()
    s: "OrderedDict[str, GraphModuleMixin]" = OrderedDict()
    s["edge_vectors"] = CartesianEdgeVectors()
    s["type_embed"] = NodeTypeEmbed(type_names=cfg.type_names, num_features=cfg.num_features,
                                    irreps_in=s["edge_vectors"].irreps_out)
    s["conditioning"] = FlowConditioning(cfg.num_features, cfg.fourier_features, cfg.fourier_scale_time,
                                         cfg.fourier_scale_temperature, irreps_in=s["type_embed"].irreps_out)
    if cfg.noise_conditioning:
        s["noise_conditioning"] = NoiseLevelConditioning(cfg.num_features, cfg.fourier_features,
                                                         cfg.fourier_scale_noise, irreps_in=s["conditioning"].irreps_out)
    s["spharm"] = SphericalHarmonicEdgeAttrs(irreps_edge_sh=repr(o3.Irreps.spherical_harmonics(lmax=cfg.l_max)),
                                             irreps_in=s["conditioning"].irreps_out)
    s["edge_norm"] = EdgeLengthNormalizer(r_max=cfg.r_max, type_names=cfg.type_names,
                                          irreps_in=s["spharm"].irreps_out)
    s["bessel_encode"] = BesselEdgeLengthEncoding(
        num_bessels=cfg.num_bessels, cutoff=PolynomialCutoff(cfg.polynomial_cutoff_p),
        edge_invariant_field=AtomicDataDict.EDGE_EMBEDDING_KEY, irreps_in=s["edge_norm"].irreps_out)
    s["factor"] = ApplyFactor(in_field=AtomicDataDict.EDGE_EMBEDDING_KEY,
                              factor=(2 * math.pi) / (cfg.r_max * cfg.r_max), irreps_in=s["bessel_encode"].irreps_out)
    s["flow_state"] = FlowStateEmbedding(cfg.r_max, cfg.num_bessels, disp, cfg.edge_state,
                                         irreps_in=s["factor"].irreps_out)
    prev = s["flow_state"].irreps_out
    for i in range(cfg.num_layers):
        layer = ConvNetLayer(
            irreps_in=prev, feature_irreps_hidden=hidden,
            convolution_kwargs={"radial_mlp_depth": cfg.radial_mlp_depth, "radial_mlp_width": cfg.radial_mlp_width,
                                "use_sc": i != 0, "is_first_layer": i == 0,
                                "avg_num_neighbors": cfg.avg_num_neighbors, "type_names": cfg.type_names},
            resnet=False)
        s[f"layer{i}_convnet"] = layer
        prev = layer.irreps_out
    s["vector_readout"] = AtomwiseLinear(field=AtomicDataDict.NODE_FEATURES_KEY, out_field=VELOCITY_KEY,
                                         irreps_in=prev, irreps_out="1x1o")
    return s


class FlowVectorField(torch.nn.Module):
    """``forward(x_t, x_cond, types, edge_index, edge_shift, t, temperature, n_local) -> v [N, 3]``.

    The role signature of ``propagator``/``corrector`` (engine_plugins.methods.propagator).
    :meth:`field` takes a per-node flow time (training batches of several frames). A
    noise-conditioned corrector (``noise_conditioning``) reads each atom's noise level from the
    optional ``noise`` argument (training) or else from its buffer ``noise_level`` (A per type, set
    at export), so the engines call it with the same eight arguments as any other.
    """

    def __init__(self, backbone: SequentialGraphNetwork, config: FlowModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.cutoff = float(config.r_max)
        self.num_layers = int(config.num_layers)
        self.type_names: List[str] = list(config.type_names)
        self.model_dtype = config.model_dtype
        self.config_json = json.dumps(config.to_dict(), sort_keys=True)
        self.shift_field = EDGE_SHIFT_KEY
        self.flow_pos_field = FLOW_POS_KEY
        self.flow_time_field = FLOW_TIME_KEY
        self.temperature_field = TEMPERATURE_KEY
        self.velocity_field = VELOCITY_KEY
        out = [float((config.out_scale or {}).get(t, 1.0)) for t in config.type_names]
        self.register_buffer("out_scale", torch.tensor(out, dtype=torch.float64))
        self.noise_conditioned = bool(config.noise_conditioning)
        self.noise_field = NOISE_LEVEL_KEY
        # not in the state dict (older checkpoints load unchanged); saved with the TorchScript module
        self.register_buffer("noise_level", torch.zeros(len(config.type_names), dtype=torch.float64),
                             persistent=False)

    @property
    @torch.jit.unused
    def config(self) -> FlowModelConfig:
        return FlowModelConfig(**json.loads(self.config_json))

    def field(self, x_t: torch.Tensor, x_cond: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
              edge_shift: torch.Tensor, t_node: torch.Tensor, temperature: torch.Tensor,
              noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The vector field with a per-node flow time ``t_node`` [N] (or 0-d); ``noise``: per-node
        noise level (A) of a noise-conditioned corrector (default: ``noise_level`` of the type)."""
        n = x_cond.shape[0]
        data: Dict[str, torch.Tensor] = {
            AtomicDataDict.POSITIONS_KEY: x_cond.to(torch.float64),
            self.flow_pos_field: x_t.to(torch.float64),
            AtomicDataDict.ATOM_TYPE_KEY: types.to(torch.long),
            AtomicDataDict.EDGE_INDEX_KEY: edge_index.to(torch.long),
            self.shift_field: edge_shift.to(torch.float64),
            self.flow_time_field: t_node.to(torch.float64).reshape(-1).expand(n).reshape(n, 1),
            self.temperature_field: temperature.to(torch.float64).reshape(-1).expand(n).reshape(n, 1),
        }
        if self.noise_conditioned:
            if noise is None:
                level = self.noise_level[types.to(torch.long)]
            else:
                level = noise.to(torch.float64).reshape(-1).expand(n)
            data[self.noise_field] = level.reshape(n, 1)
        data = self.backbone(data)
        v = data[self.velocity_field].to(torch.float64) * self.out_scale[types.to(torch.long)].unsqueeze(1)
        return v.to(x_t.dtype)

    def forward(self, x_t: torch.Tensor, x_cond: torch.Tensor, types: torch.Tensor, edge_index: torch.Tensor,
                edge_shift: torch.Tensor, t: torch.Tensor, temperature: torch.Tensor, n_local: int,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.field(x_t, x_cond, types, edge_index, edge_shift, t, temperature, noise)


def build_flow_model(config: Optional[FlowModelConfig] = None, **options: Any) -> FlowVectorField:
    """A fresh :class:`FlowVectorField` (options: the fields of :class:`FlowModelConfig`).

    The global state (default dtype, RNGs, e3nn/TorchScript settings) is the same after the call as
    before; ``seed`` makes the initial weights and the Fourier frequencies deterministic.
    """
    if config is not None and options:
        raise TypeError("pass either a FlowModelConfig or keyword options, not both")
    cfg = config if config is not None else FlowModelConfig.from_dict(options)
    with _building(_DTYPES[cfg.model_dtype], cfg.seed):
        net = SequentialGraphNetwork(flow_stages(cfg))
    return FlowVectorField(net, cfg)


def script_flow_model(model: FlowVectorField, device: str = "cpu") -> torch.jit.ScriptModule:
    """TorchScript the model (nequip's way, on a deep copy; the input model is left untouched)."""
    return script_nequip_model(model, device)


#: config keys of the plugin factories that describe the artifact, not the network
ARTIFACT_KEYS = ("role_fields", "periodicity", "provenance")


def flow_model_metadata(role: str, config: FlowModelConfig, role_fields: Dict[str, Any],
                        periodicity: str = "any", provenance: Optional[Dict[str, Any]] = None) -> "Any":
    """Artifact metadata of a flow vector field (units angstrom/eV/ps; ``role_fields`` as the
    contract in :mod:`engine_plugins.methods.propagator` asks: delta_tau, temperature_range,
    flow_steps, solver, prior, max_displacement, max_attempts)."""
    from engine_plugins.export.metadata import ArtifactMetadata

    if role not in ("propagator", "corrector"):
        raise ValueError(f"role {role!r}: a flow vector field is a 'propagator' or a 'corrector'")
    return ArtifactMetadata(role=role, method=METHOD_NAME, type_names=list(config.type_names),
                            cutoff=float(config.r_max), num_message_passing_layers=int(config.num_layers),
                            units={"length": "angstrom", "energy": "eV", "time": "ps"}, dtype=config.model_dtype,
                            periodicity=periodicity, role_fields=dict(role_fields),
                            provenance={"backbone": "nequip", "flow_model_config": config.to_dict(),
                                        **(provenance or {})})


__all__ = ["ARTIFACT_KEYS", "FLOW_POS_KEY", "FlowConditioning", "FlowModelConfig", "FlowStateEmbedding", "FlowVectorField",
           "METHOD_NAME", "NOISE_LEVEL_KEY", "NoiseLevelConditioning", "build_flow_model", "flow_model_metadata", "flow_stages", "script_flow_model"]
