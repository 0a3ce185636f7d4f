"""The built-in plugin: registered through the entry-point group like any third-party plugin.

Factories import their modules lazily so that listing plugins stays cheap.
"""

from __future__ import annotations

from typing import Any, Iterable

from engine_plugins.plugins.hookspecs import hookimpl
from engine_plugins.plugins.specs import BackboneSpec, EngineSpec, MethodSpec


def _lj_model(**config: Any) -> Any:
    from engine_plugins.methods.lennard_jones import LennardJones

    return LennardJones(config["epsilon"], config["sigma"], config["cutoff"])


def _lj_metadata(**config: Any) -> Any:
    from engine_plugins.methods.lennard_jones import lennard_jones_metadata

    return lennard_jones_metadata(config["type_names"], config["cutoff"], config.get("units"),
                                  config.get("periodicity", "any"))


def _nequip_pf_model(**config: Any) -> Any:
    from engine_plugins.nn.nequip_backbone import build_nequip_pseudo_force

    return build_nequip_pseudo_force(**{k: v for k, v in config.items() if k not in ("units", "periodicity")})


def _nequip_pf_metadata(**config: Any) -> Any:
    from engine_plugins.nn.nequip_backbone import NequIPConfig, nequip_pseudo_force_metadata

    artifact_keys = ("units", "periodicity")
    cfg = NequIPConfig.from_kwargs(**{k: v for k, v in config.items() if k not in artifact_keys})
    return nequip_pseudo_force_metadata(cfg, **{k: config[k] for k in artifact_keys if k in config})


def _nequip_script(model: Any) -> Any:
    from engine_plugins.nn.nequip_backbone import script_nequip_model

    return script_nequip_model(model)


_GPFF_ARTIFACT_KEYS = ("noise", "sampler", "periodicity", "provenance")


def _gpff_model(**config: Any) -> Any:
    from engine_plugins.methods.gpff.model import build_gpff_model
    from engine_plugins.methods.gpff.noise import NoiseConfig

    noise = NoiseConfig.from_dict(config.get("noise", {}))
    return build_gpff_model(noise=noise, **{k: v for k, v in config.items() if k not in _GPFF_ARTIFACT_KEYS})


def _gpff_metadata(**config: Any) -> Any:
    from engine_plugins.methods.gpff.model import GPFFModelConfig, SamplerDefaults, gpff_metadata
    from engine_plugins.methods.gpff.noise import NoiseConfig

    cfg = GPFFModelConfig.from_dict({k: v for k, v in config.items() if k not in _GPFF_ARTIFACT_KEYS})
    return gpff_metadata(cfg, NoiseConfig.from_dict(config.get("noise", {})),
                         SamplerDefaults.from_dict(config.get("sampler", {})),
                         periodicity=config.get("periodicity", "nonperiodic"), provenance=config.get("provenance"))


def _gpff_loss(*args: Any, **kwargs: Any) -> Any:
    from engine_plugins.methods.gpff.noise import gpff_loss

    return gpff_loss(*args, **kwargs)


def _gpff_sample(*args: Any, **kwargs: Any) -> Any:
    from engine_plugins.methods.gpff.samplers import sample

    return sample(*args, **kwargs)


def _flow_model(**config: Any) -> Any:
    from engine_plugins.methods.propagator.model import ARTIFACT_KEYS, build_flow_model

    return build_flow_model(**{k: v for k, v in config.items() if k not in ARTIFACT_KEYS})


def _flow_metadata(role: str) -> Any:
    def build(**config: Any) -> Any:
        from engine_plugins.methods.propagator.model import ARTIFACT_KEYS, FlowModelConfig, flow_model_metadata

        cfg = FlowModelConfig.from_dict({k: v for k, v in config.items() if k not in ARTIFACT_KEYS})
        return flow_model_metadata(role, cfg, config.get("role_fields", {}), config.get("periodicity", "any"),
                                   config.get("provenance"))

    return build


def _flow_loss(*args: Any, **kwargs: Any) -> Any:
    from engine_plugins.methods.propagator.loss import flow_matching_loss

    return flow_matching_loss(*args, **kwargs)


def _flow_script(model: Any) -> Any:
    from engine_plugins.methods.propagator.model import script_flow_model

    return script_flow_model(model)


_RM_ARTIFACT_KEYS = ("noise", "relax", "provenance")


def _rm_model(**config: Any) -> Any:
    from engine_plugins.methods.response_matching.model import build_rm_model
    from engine_plugins.methods.response_matching.noise import RMNoiseConfig

    noise = RMNoiseConfig.from_dict(config.get("noise", {}))
    return build_rm_model(noise=noise, **{k: v for k, v in config.items() if k not in _RM_ARTIFACT_KEYS})


def _rm_metadata(**config: Any) -> Any:
    from engine_plugins.methods.response_matching.model import RelaxDefaults, RMModelConfig, rm_metadata
    from engine_plugins.methods.response_matching.noise import RMNoiseConfig

    cfg = RMModelConfig.from_dict({k: v for k, v in config.items() if k not in _RM_ARTIFACT_KEYS})
    return rm_metadata(cfg, RMNoiseConfig.from_dict(config.get("noise", {})),
                       RelaxDefaults.from_dict(config.get("relax", {})), provenance=config.get("provenance"))


def _rm_loss(*args: Any, **kwargs: Any) -> Any:
    from engine_plugins.methods.response_matching.noise import rm_loss

    return rm_loss(*args, **kwargs)


def _rm_relax(*args: Any, **kwargs: Any) -> Any:
    from engine_plugins.methods.response_matching.relax import relax_structure

    return relax_structure(*args, **kwargs)


def _nequip_backbone(**config: Any) -> Any:
    from engine_plugins.nn.nequip_backbone import build_nequip_backbone

    return build_nequip_backbone(**config)


def _attach_openmm(*args: Any, **kwargs: Any) -> Any:
    from engine_plugins.engines.openmm_backend import create_pseudo_force

    return create_pseudo_force(*args, **kwargs)


@hookimpl
def engine_plugins_methods() -> Iterable[MethodSpec]:
    yield MethodSpec("lennard_jones", "pseudo_force", _lj_model, _lj_metadata,
                     description="Lennard-Jones pair potential (exactness reference for the engine chain)")
    yield MethodSpec("nequip_pseudo_force", "pseudo_force", _nequip_pf_model, _nequip_pf_metadata,
                     script=_nequip_script, description="NequIP energy model; forces as the energy gradient")
    yield MethodSpec("gpff", "pseudo_force", _gpff_model, _gpff_metadata, loss=_gpff_loss, sampler=_gpff_sample,
                     script=_nequip_script,
                     description="generative pseudo force field (seed 004): NequIP, conservative or direct head, "
                                 "trained on a quadratic pseudo-energy around clean molecules; samplers ancestral, "
                                 "heun, denoise, adaptive")
    yield MethodSpec("response_matching", "pseudo_force", _rm_model, _rm_metadata, loss=_rm_loss, sampler=_rm_relax,
                     script=_nequip_script,
                     description="response matching (seed 002) for periodic crystals: NequIP + short-range "
                                 "repulsion, pseudo-forces and pseudo-stress from displacement and strain noise; "
                                 "relaxation with the cell (standalone FIRE, LAMMPS box/relax)")
    for role in ("propagator", "corrector"):
        yield MethodSpec(f"flow_{role}", role, _flow_model, _flow_metadata(role), loss=_flow_loss, script=_flow_script,
                         description=f"flow-matching {role} (seeds 001/003, LiFlow-style): NequIP vector field on "
                                     "x_cond with x_t as l=1 node feature and edge lengths, t and T Fourier "
                                     "conditioning; train with `engine-plugins train " + role + "`")


@hookimpl
def engine_plugins_backbones() -> Iterable[BackboneSpec]:
    yield BackboneSpec("nequip", _nequip_backbone, description="NequIP (nequip 0.19.1), E(3)-equivariant")


@hookimpl
def engine_plugins_engines() -> Iterable[EngineSpec]:
    yield EngineSpec("openmm", ("pseudo_force",), _attach_openmm,
                     description="openmm-torch TorchForce (nm, kJ/mol; minimum-image graph in TorchScript)")
    yield EngineSpec("lammps", ("pseudo_force",), None,
                     description="LAMMPS plugin epplugin.so: pair_style ep/torch (ghost atoms as graph nodes)")


def _cg_mapping_builder(scheme: str) -> Any:
    def build(universe: Any, **options: Any) -> Any:
        from engine_plugins.data.cg_mapping import BUILTIN_MAPPINGS

        return BUILTIN_MAPPINGS[scheme][0](universe, **options)

    return build


@hookimpl
def engine_plugins_cg_mappings() -> Iterable[Any]:
    from engine_plugins.plugins.specs import CGMappingSpec

    yield CGMappingSpec("residue", _cg_mapping_builder("residue"),
                        description="one bead per residue (per molecule for liquids); type = residue name")
    yield CGMappingSpec("molecule", _cg_mapping_builder("molecule"),
                        description="one bead per molecule (bond-graph component); needs bonds")
    yield CGMappingSpec("file", _cg_mapping_builder("file"),
                        description="user JSON file: bead name -> 0-based atom indices (option path=...)")
    yield CGMappingSpec("graph_partition", _cg_mapping_builder("graph_partition"),
                        description="recursive spectral bisection of the bond graph into beads of ~atoms_per_bead "
                                    "heavy atoms; type = Hill formula")
