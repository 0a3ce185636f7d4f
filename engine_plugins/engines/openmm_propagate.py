"""Learned propagation as an OpenMM integrator: one ``propagator`` jump of Δτ per ``step()``.

How it works (DESIGN.md, OpenMM backend):

* a ``TorchForce`` in its own force group (``propagator_group``, default 30) wraps the package's
  TorchScript :class:`~engine_plugins.methods.propagator.sampler.FlowSampler`; its output "forces"
  are the sampled displacements divided by a constant ``c = 2**-10 nm^2 mol/kJ`` (kJ/mol/nm), so
  ``x + c*f`` is the jumped position in nm (``c`` a power of two: the division is exact);
* a ``CustomIntegrator`` with step size Δτ (ps, from the artifact's ``delta_tau``) applies
  ``x <- x + c*f_propagator``, then ``x <- x + c*f_corrector`` (the corrector, if given, in its
  own group, default 31, evaluated at the jumped positions; its ``passes`` run inside that one
  evaluation), sets ``v = (x_new - x_old) / Δτ``
  and increments the context parameter ``ep_step`` (steps done, like ``Simulation.currentStep``);
* the noise key is (``seed`` fixed at creation, step ``ep_step + 1``, attempt, particle index + 1):
  the jump that reaches step n draws with step n, as LAMMPS's ``fix ep/propagate`` (its
  ``ntimestep``) and the standalone ``propagate`` do, so the same seed and start step give the
  same trajectory in every engine;
* temperature is the context parameter ``ep_temperature`` (K; ``context.setParameter`` changes it).

So OpenMM's app layer works unchanged: ``Simulation.step``, ``DCDReporter``, ``StateDataReporter``,
checkpoints (``ep_step`` and the integrator's ``retries`` are in the checkpoint, so a restarted
run continues with the same noise), and simulation time advances by Δτ per step.

What reporters show: velocities are the mean velocity over the last jump, ``(x_new - x_old)/Δτ``,
so the kinetic energy/temperature columns are those of that coarse velocity (far below the
thermal value for a large Δτ; a diagnostic of how far atoms jump, not a thermometer). The
propagator/corrector forces contribute, as their "energy", the number of redraws their current
jump needed (normally 0; the integrator sums them in its global ``retries``), so the potential
energy column is that of the system's own forces (kept in the System and never used for
motion) plus this count. Pass ``report_retries=False`` for an energy of exactly 0.

Evaluations are cached on (positions, box, ep_step, ep_temperature): a reporter asking for the
state recomputes nothing, and a repeated call returns the same jump (a pure function of the key).

Usage::

    setup = create_learned_integrator(system, pdb.topology, "propagator.pt", temperature=300, seed=1)
    simulation = app.Simulation(pdb.topology, system, setup.integrator)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from engine_plugins.engines.openmm_backend import (OpenMMBackendError, _types_from_topology,
                                                   import_openmmtorch)
from engine_plugins.export.artifact import Artifact, load_artifact
from engine_plugins.methods.propagator.sampler import (FlowSampler, SamplerError, build_flow_sampler,
                                                       check_passes_have_corrector, check_temperature_range,
                                                       check_vector_field_role, type_indices)
from engine_plugins.units import OPENMM_UNITS, UnitError, length_factor, time_factor

#: x <- x + C * f: displacement (nm) = C * force (kJ/mol/nm); a power of two so d / C * C == d exactly.
DISPLACEMENT_PER_FORCE = 2.0 ** -10
JUMP_PARAMETER = "ep_step"
TEMPERATURE_PARAMETER = "ep_temperature"
RETRIES_VARIABLE = "retries"


class LearnedPropagationError(OpenMMBackendError):
    """Learned propagation cannot be set up for this system (the message names the fix)."""


class FlowForceCore(torch.nn.Module):
    """TorchForce adapter body: nm <-> model units, cache, and the sampler call.

    It never raises: problems are left in ``error`` and the top-level ``forward`` of the wrapper
    raises them. Why: libtorch segfaults (``InterpreterStateImpl::callstack``) when an exception
    raised in a nested scripted call unwinds through openmmtorch's C++ kernel; a raise in the
    top-level ``forward`` is reported cleanly as an ``OpenMMException``.
    """

    def __init__(self, sampler: FlowSampler, types: Sequence[int], nm_to_model: float, seed: int,
                 report_retries: bool) -> None:
        super().__init__()
        sampler.raise_on_failure = False
        self.sampler = sampler
        self.register_buffer("types", torch.tensor(list(types), dtype=torch.long))
        self.nm_to_model = float(nm_to_model)
        self.model_to_force = float(1.0 / nm_to_model / DISPLACEMENT_PER_FORCE)
        self.seed = int(seed)
        self.report_retries = bool(report_retries)
        self.model_dtype = sampler.model_dtype
        self.cache_pos = torch.empty(0, 3, dtype=torch.float64)
        self.cache_box = torch.empty(0, dtype=torch.float64)
        self.cache_step = -1
        self.cache_temperature = -1.0
        self.cache_energy = torch.zeros((), dtype=torch.float64)
        self.cache_forces = torch.empty(0, 3, dtype=torch.float64)
        self.evaluations = 0  # sampler calls (cache misses)
        self.error = ""

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor], ep_step: torch.Tensor,
                ep_temperature: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = positions.shape[0]
        step = int(torch.round(ep_step).item()) + 1  # the step this jump reaches
        temp = float(ep_temperature.item())
        box_key = torch.empty(0, dtype=positions.dtype, device=positions.device)
        if boxvectors is not None:
            box_key = boxvectors
        hit = (step == self.cache_step and temp == self.cache_temperature
               and self.cache_pos.shape == positions.shape and self.cache_pos.dtype == positions.dtype
               and self.cache_pos.device == positions.device and self.cache_box.shape == box_key.shape)
        if hit:
            hit = bool(torch.equal(self.cache_pos, positions)) and bool(torch.equal(self.cache_box, box_key))
        if hit:
            return self.cache_energy, self.cache_forces
        nothing = torch.zeros_like(positions)
        zero = torch.zeros([], dtype=positions.dtype, device=positions.device)
        self.error = ""
        if n != self.types.shape[0]:
            self.error = f"engine_plugins: the learned-propagation force was built for {self.types.shape[0]} " \
                         f"particles but the system has {n}; rebuild it with create_learned_integrator"
            return zero, nothing
        if step < 1:
            self.error = f"engine_plugins: context parameter ep_step is {step - 1}; it must be >= 0"
            return zero, nothing
        if not bool(torch.isfinite(positions).all()):
            self.error = "engine_plugins: non-finite (NaN or inf) particle positions reached the learned " \
                         "propagator; the input coordinates are invalid"
            return zero, nothing
        pos = positions.to(self.model_dtype) * self.nm_to_model
        box: Optional[torch.Tensor] = None
        if boxvectors is not None:
            box = boxvectors.to(self.model_dtype) * self.nm_to_model
        temps = torch.full([n], temp, dtype=self.model_dtype, device=positions.device)
        types = self.types.to(positions.device)
        d = self.sampler(pos, types, box, temps, self.seed, step)
        self.evaluations += 1
        self.error = self.sampler.failure
        forces = (d * self.model_to_force).to(positions.dtype)
        value = 0.0
        if self.report_retries:
            value = float(self.sampler.last_retries)
        energy = torch.full([], value, dtype=positions.dtype, device=positions.device)
        self.cache_pos = positions.detach().clone()
        self.cache_box = box_key.detach().clone()
        self.cache_step = step
        self.cache_temperature = temp
        self.cache_energy = energy
        self.cache_forces = forces
        return energy, forces


class OpenFlowForce(torch.nn.Module):
    """TorchForce module for a system without periodic boundaries."""

    def __init__(self, core: FlowForceCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, positions: torch.Tensor, ep_step: torch.Tensor,
                ep_temperature: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # openmmtorch calls forward with grad mode on and positions that require grad; a jump needs
        # no gradient, and recording one through the ODE loop cost 1.5x the jump (CG water, CPU)
        with torch.no_grad():
            out = self.core(positions, None, ep_step, ep_temperature)
        if self.core.error != "":
            raise RuntimeError(self.core.error)
        return out


class PeriodicFlowForce(torch.nn.Module):
    """TorchForce module for a periodic system (OpenMM passes the box vectors, nm)."""

    def __init__(self, core: FlowForceCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, positions: torch.Tensor, boxvectors: torch.Tensor, ep_step: torch.Tensor,
                ep_temperature: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # see OpenFlowForce.forward
            out = self.core(positions, boxvectors, ep_step, ep_temperature)
        if self.core.error != "":
            raise RuntimeError(self.core.error)
        return out


@dataclass
class LearnedPropagation:
    """What :func:`create_learned_integrator` built; ``integrator`` goes into ``app.Simulation``."""

    integrator: Any  # openmm.CustomIntegrator
    propagator_force: Any  # openmmtorch.TorchForce
    corrector_force: Any | None
    delta_tau_ps: float
    seed: int
    temperature: float
    periodic: bool
    types: list[str] = field(default_factory=list)
    jump_parameter: str = JUMP_PARAMETER
    temperature_parameter: str = TEMPERATURE_PARAMETER

    def retries(self) -> int:
        """Redraws of rejected jumps so far (integrator global ``retries``; needs report_retries)."""
        return int(round(self.integrator.getGlobalVariableByName(RETRIES_VARIABLE)))

    def jump_index(self, context) -> int:
        """Steps (jumps) done (context parameter ``ep_step``); the next jump draws with step ``+ 1``."""
        return int(round(context.getParameter(self.jump_parameter)))


def _artifact(model: str | os.PathLike | Artifact) -> Artifact:
    return model if isinstance(model, Artifact) else load_artifact(model)


def _resolve_types(topology_or_types, n_particles: int, type_names: Sequence[str],
                   type_map: Mapping[str, str] | None) -> tuple[list[str], Any]:
    """(model type name per particle, topology or None)."""
    if topology_or_types is None:
        raise LearnedPropagationError("give the model type of every particle: an OpenMM Topology or a list of "
                                      "type names (one per particle)")
    topology = topology_or_types if hasattr(topology_or_types, "atoms") else None
    if topology is not None:
        try:
            names = _types_from_topology(topology, type_names, type_map)
        except OpenMMBackendError as exc:
            raise LearnedPropagationError(str(exc)) from exc
    else:
        names = [type_map.get(t, t) if type_map else t for t in list(topology_or_types)]
        try:
            idx = type_indices(names, type_names)
        except SamplerError as exc:
            raise LearnedPropagationError(str(exc)) from exc
        names = [type_names[i] for i in idx.tolist()]
    if len(names) != n_particles:
        raise LearnedPropagationError(f"{len(names)} particle types for a system of {n_particles} particles. "
                                      "Fix: give one type per particle (the topology must match the system)")
    return names, topology


def _check_system(system, names: Sequence[str], masses: Mapping[str, float], groups: Sequence[int]) -> None:
    if system.getNumConstraints() > 0:
        raise LearnedPropagationError(
            f"the system has {system.getNumConstraints()} constraints, but a learned jump moves every particle "
            "freely (constraints would be ignored). Fix: build the system without constraints "
            "(e.g. createSystem(..., constraints=None, rigidWater=False)) or on CG beads")
    for i in range(system.getNumForces()):
        f = system.getForce(i)
        if f.getForceGroup() in groups:
            raise LearnedPropagationError(
                f"force {i} ({type(f).__name__}) is already in force group {f.getForceGroup()}, which the learned "
                "propagation needs for itself. Fix: move it (setForceGroup) or pass propagator_group=/corrector_group=")
    mismatch = []
    for i, t in enumerate(names):
        m = system.getParticleMass(i)
        m = m.value_in_unit(m.unit) if hasattr(m, "unit") else float(m)
        if m == 0.0:
            raise LearnedPropagationError(f"particle {i} has zero mass (virtual site or fixed atom); learned "
                                          "propagation moves every particle. Fix: give it its real mass")
        if abs(m - masses[t]) > 1e-3 * masses[t]:
            mismatch.append((i, t, m))
    if mismatch:
        i, t, m = mismatch[0]
        warnings.warn(f"{len(mismatch)} particle mass(es) differ from the model's (e.g. particle {i}: {m:g} amu, model "
                      f"'{t}' {masses[t]:g} amu); the jump removes the centre-of-mass drift with the model's "
                      "masses, so OpenMM's centre of mass may drift. Fix: build the system with "
                      "create_system_for_model or the model's masses", UserWarning, stacklevel=3)


def _box_ok(system, cutoff_nm: float) -> None:
    a, b, c = [np.array(v.value_in_unit(v.unit) if hasattr(v, "unit") else v, float)
               for v in system.getDefaultPeriodicBoxVectors()]
    vol = abs(np.dot(a, np.cross(b, c)))
    width = min(vol / np.linalg.norm(np.cross(b, c)), vol / np.linalg.norm(np.cross(c, a)),
                vol / np.linalg.norm(np.cross(a, b)))
    if width < 2.0 * cutoff_nm:
        raise LearnedPropagationError(f"the periodic box is {width:.4g} nm wide, less than twice the model cutoff "
                                      f"({cutoff_nm:.4g} nm). Fix: replicate the system to a larger box")


def _make_force(art: Artifact, role: str, type_idx: list[int], periodic: bool, seed: int, group: int,
                temperature: float, start_step: int, report_retries: bool, flow_steps: int | None,
                solver: str | None, prior_scale: Mapping[str, float] | None = None,
                contact_rounds: int | None = None, passes: int | None = None):
    openmmtorch = import_openmmtorch()
    try:
        sampler = build_flow_sampler(art, role, flow_steps, solver, prior_scale=prior_scale,
                                     contact_rounds_override=contact_rounds, passes=passes)
        nm_to_model = length_factor(OPENMM_UNITS["length"], art.metadata.units["length"])
    except (SamplerError, UnitError) as exc:
        raise LearnedPropagationError(str(exc)) from exc
    cls = PeriodicFlowForce if periodic else OpenFlowForce
    module = torch.jit.script(cls(FlowForceCore(sampler, type_idx, nm_to_model, seed, report_retries)))
    force = openmmtorch.TorchForce(module)
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.addGlobalParameter(JUMP_PARAMETER, float(start_step))
    force.addGlobalParameter(TEMPERATURE_PARAMETER, float(temperature))
    force.setForceGroup(group)
    force.setName(f"engine_plugins learned {role}")
    return force


def create_learned_integrator(system, topology_or_types, propagator: str | os.PathLike | Artifact,
                              corrector: str | os.PathLike | Artifact | None = None, *,
                              temperature: float, seed: int = 0, start_step: int = 0,
                              type_map: Mapping[str, str] | None = None, periodic: bool | None = None,
                              flow_steps: int | None = None, solver: str | None = None,
                              corrector_flow_steps: int | None = None, corrector_solver: str | None = None,
                              propagator_group: int = 30, corrector_group: int = 31,
                              report_retries: bool = True,
                              prior_scale: Mapping[str, float] | None = None,
                              contact_rounds: int | None = None,
                              corrector_passes: int | None = None) -> LearnedPropagation:
    """Add the learned-propagation force(s) to ``system`` and return the integrator that applies them.

    ``topology_or_types``: an OpenMM Topology (element symbol, atom name or residue name, e.g. CG
    beads named by residue, remapped by ``type_map``) or a list of model type names, one per
    particle. ``temperature`` in K (warns outside the trained range). ``seed`` (0 <= seed < 2**63)
    and ``start_step`` (the step counter of the start structure; jump k draws with step
    ``start_step + k + 1``) fix the noise. ``periodic`` defaults to whether the
    topology has a box, else to the model's periodicity. ``flow_steps``/``solver`` (and
    ``corrector_flow_steps``/``corrector_solver``) override the metadata. ``prior_scale`` ({type: scale}) overrides the propagator's prior
    scale, e.g. the adaptive prior's pick for this material (``prior.measure_adaptive_scale``);
    ``contact_rounds`` the rounds of the propagator's contact redraw (``role_fields.contact``; 0: off);
    ``corrector_passes`` the corrector's passes per jump (``role_fields.passes``; all of them run
    inside the corrector's one force evaluation).
    The System keeps its own forces; they never move particles (only reporters see them).
    """
    import openmm as mm

    prop = _artifact(propagator)
    try:
        check_vector_field_role(prop, "propagator")
    except SamplerError as exc:
        raise LearnedPropagationError(str(exc)) from exc
    corr = _artifact(corrector) if corrector is not None else None
    if corr is not None:
        try:
            check_vector_field_role(corr, "corrector")
        except SamplerError as exc:
            raise LearnedPropagationError(str(exc)) from exc
    meta = prop.metadata
    if not (0 <= int(seed) < 2 ** 63) or int(start_step) < 0 or int(start_step) >= 2 ** 53:
        raise LearnedPropagationError("seed must be in [0, 2**63) and start_step in [0, 2**53)")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise LearnedPropagationError(f"temperature must be a positive number of kelvin, got {temperature!r}")
    if propagator_group == corrector_group or not all(0 <= g <= 31 for g in (propagator_group, corrector_group)):
        raise LearnedPropagationError("propagator_group and corrector_group must differ and lie in 0..31")
    names, topology = _resolve_types(topology_or_types, system.getNumParticles(), meta.type_names, type_map)
    if periodic is None:
        periodic = (topology.getPeriodicBoxVectors() is not None) if topology is not None else \
            meta.periodicity == "periodic"
    for art in [prop] + ([corr] if corr is not None else []):
        if art.metadata.periodicity == "periodic" and not periodic:
            raise LearnedPropagationError(
                f"{art.path}: the model was trained on periodic systems but this system has no periodic box. "
                "Fix: set box vectors (topology.setPeriodicBoxVectors) or pass periodic=True")
        if art.metadata.periodicity == "nonperiodic" and periodic:
            raise LearnedPropagationError(
                f"{art.path}: the model was trained on non-periodic systems but this system is periodic. "
                "Fix: remove the box (periodic=False) or use a periodic model")
        if periodic:
            _box_ok(system, art.metadata.cutoff * length_factor(art.metadata.units["length"], "nm"))
    try:
        check_passes_have_corrector(corr, corrector_passes)
    except SamplerError as exc:
        raise LearnedPropagationError(str(exc)) from exc
    check_temperature_range(float(temperature), meta, stacklevel=2)
    masses = {t: float(m) for t, m in meta.role_fields["prior"]["mass"].items()}
    groups = [propagator_group] + ([corrector_group] if corr is not None else [])
    _check_system(system, names, masses, groups)
    pidx = type_indices(names, meta.type_names).tolist()
    pforce = _make_force(prop, "propagator", pidx, periodic, seed, propagator_group, temperature, start_step,
                         report_retries, flow_steps, solver, prior_scale, contact_rounds)
    cforce = None
    if corr is not None:
        missing = sorted({t for t in names if t not in corr.metadata.type_names})
        if missing:
            raise LearnedPropagationError(f"the corrector does not know type(s) {missing}. Fix: use a corrector "
                                          "trained on the same species as the propagator")
        cidx = type_indices(names, corr.metadata.type_names).tolist()
        cforce = _make_force(corr, "corrector", cidx, periodic, seed, corrector_group, temperature, start_step,
                             report_retries, corrector_flow_steps, corrector_solver, passes=corrector_passes)
    delta_tau_ps = float(meta.role_fields["delta_tau"]) * time_factor(meta.units["time"], "ps")
    if not delta_tau_ps > 0:
        raise LearnedPropagationError(f"{prop.path}: role_fields.delta_tau must be > 0, got {meta.role_fields['delta_tau']}")

    integ = mm.CustomIntegrator(delta_tau_ps)
    integ.addGlobalVariable("ep_c", DISPLACEMENT_PER_FORCE)
    integ.addGlobalVariable(RETRIES_VARIABLE, 0.0)
    integ.addPerDofVariable("x_start", 0.0)
    integ.addComputePerDof("x_start", "x")
    if report_retries:
        integ.addComputeGlobal(RETRIES_VARIABLE, f"{RETRIES_VARIABLE} + energy{propagator_group}")
    integ.addComputePerDof("x", f"x + ep_c*f{propagator_group}")
    if cforce is not None:
        if report_retries:
            integ.addComputeGlobal(RETRIES_VARIABLE, f"{RETRIES_VARIABLE} + energy{corrector_group}")
        integ.addComputePerDof("x", f"x + ep_c*f{corrector_group}")
    integ.addComputePerDof("v", "(x - x_start)/dt")
    integ.addComputeGlobal(JUMP_PARAMETER, f"{JUMP_PARAMETER} + 1")

    system.addForce(pforce)
    if cforce is not None:
        system.addForce(cforce)
    return LearnedPropagation(integ, pforce, cforce, delta_tau_ps, int(seed), float(temperature), bool(periodic),
                              list(names))


def create_system_for_model(topology, propagator: str | os.PathLike | Artifact,
                            type_map: Mapping[str, str] | None = None):
    """An OpenMM System for ``topology`` with one particle per atom/bead and the model's masses, no forces.

    The box comes from the topology (none for an open system). Why: a CG structure (beads) has no
    force field to build a System from, and the model's masses keep the centre of mass fixed.
    """
    import openmm as mm

    art = _artifact(propagator)
    names, _ = _resolve_types(topology, topology.getNumAtoms(), art.metadata.type_names, type_map)
    masses = art.metadata.role_fields["prior"]["mass"]
    system = mm.System()
    box = topology.getPeriodicBoxVectors()
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    for t in names:
        system.addParticle(float(masses[t]))
    return system
