"""The artifact metadata: what an engine must know to run a model without reading its code.

Versioned by ``schema_version``. Every field is validated on load with an error that names the
field and says how to fix it. Role-specific fields live under ``role_fields`` so that adding a role
never changes the shape of the others.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from engine_plugins.units import ENERGY_TO_KJ_PER_MOL, LENGTH_TO_NM, REDUCED, TIME_TO_PS

SCHEMA_VERSION = 1
#: Marker that tells an artifact of this package from any other TorchScript file.
FORMAT_NAME = "engine_plugins.artifact"
#: Name of the TorchScript extra file holding the metadata JSON.
METADATA_FILE = "engine_plugins_metadata.json"

ROLES = ("pseudo_force", "propagator", "corrector", "backmapper", "cg_generator")
PERIODICITIES = ("periodic", "nonperiodic", "any")
DTYPES = ("float32", "float64")
#: ODE solvers an engine runs for the propagator/corrector roles, and the priors it draws from.
FLOW_SOLVERS = ("euler", "heun")
PRIOR_KINDS = ("maxwell_boltzmann",)

#: Fields each role must carry in ``role_fields`` (DESIGN.md).
REQUIRED_ROLE_FIELDS: dict[str, tuple[str, ...]] = {
    "pseudo_force": ("conservative",),
    "propagator": ("delta_tau", "temperature_range", "flow_steps", "solver", "prior"),
    "corrector": ("temperature_range", "flow_steps", "solver", "prior"),
    "backmapper": ("cg_mapping", "flow_steps", "solver", "prior"),
    "cg_generator": ("flow_steps", "solver", "prior"),
}


class MetadataError(ValueError):
    """Artifact metadata is missing a field or has a wrong value (the message names both)."""


def _err(fieldname: str, problem: str, fix: str) -> MetadataError:
    return MetadataError(f"artifact metadata field '{fieldname}': {problem}. Fix: {fix}")


@dataclass
class ArtifactMetadata:
    """Self-description of an exported model (stored as JSON inside the TorchScript file)."""

    role: str
    method: str
    type_names: list[str]
    cutoff: float
    num_message_passing_layers: int
    units: dict[str, str]
    dtype: str = "float64"
    periodicity: str = "any"
    role_fields: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT_NAME
    content_hash: str = ""

    # ----------------------------------------------------------------- derived
    @property
    def ghost_cutoff(self) -> float:
        """Halo width an engine must provide: every atom within layers x cutoff of a local one."""
        return self.cutoff * max(1, self.num_message_passing_layers)

    # ------------------------------------------------------------- validation
    def validate(self) -> "ArtifactMetadata":
        """Check every field; raise :class:`MetadataError` naming the first bad one."""
        if self.format != FORMAT_NAME:
            raise _err("format", f"is '{self.format}', not '{FORMAT_NAME}'",
                       "export the model with engine_plugins.export.export_artifact")
        if not isinstance(self.schema_version, int) or self.schema_version < 1:
            raise _err("schema_version", f"{self.schema_version!r} is not a positive integer",
                       "re-export the model with this version of engine_plugins")
        if self.schema_version > SCHEMA_VERSION:
            raise _err("schema_version", f"version {self.schema_version} is newer than this engine_plugins "
                       f"understands (up to {SCHEMA_VERSION})", "upgrade engine_plugins")
        if self.role not in ROLES:
            raise _err("role", f"unknown role '{self.role}'", f"use one of {', '.join(ROLES)}")
        if not isinstance(self.method, str) or not self.method:
            raise _err("method", "is empty", "name the method that produced the model")
        if (not isinstance(self.type_names, list) or not self.type_names
                or not all(isinstance(t, str) and t and " " not in t for t in self.type_names)):
            raise _err("type_names", f"{self.type_names!r} is not a non-empty list of names without spaces",
                       "list the species or bead type names in model type order")
        if len(set(self.type_names)) != len(self.type_names):
            raise _err("type_names", f"{self.type_names!r} has duplicates", "give each type a unique name")
        if not isinstance(self.cutoff, (int, float)) or not self.cutoff > 0:
            raise _err("cutoff", f"{self.cutoff!r} is not a positive number", "set the model cutoff in its length unit")
        if not isinstance(self.num_message_passing_layers, int) or self.num_message_passing_layers < 0:
            raise _err("num_message_passing_layers", f"{self.num_message_passing_layers!r} is not an integer >= 0",
                       "set the number of message-passing layers (1 for a pair potential)")
        if self.dtype not in DTYPES:
            raise _err("dtype", f"'{self.dtype}' is not supported", f"use one of {', '.join(DTYPES)}")
        if self.periodicity not in PERIODICITIES:
            raise _err("periodicity", f"'{self.periodicity}' is unknown", f"use one of {', '.join(PERIODICITIES)}")
        self._validate_units()
        missing = [k for k in REQUIRED_ROLE_FIELDS[self.role] if k not in self.role_fields]
        if missing:
            raise _err(f"role_fields.{missing[0]}", f"role '{self.role}' needs it",
                       f"pass role_fields={{'{missing[0]}': ...}} when exporting")
        if self.role in ("propagator", "corrector"):
            self._validate_flow_fields()
        return self

    def _validate_flow_fields(self) -> None:
        """Propagator/corrector role_fields (contract: engine_plugins.methods.propagator)."""
        rf = self.role_fields
        if "delta_tau" in rf:
            dt = rf["delta_tau"]
            if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
                raise _err("role_fields.delta_tau", f"{dt!r} is not a positive number",
                           f"give the learned time step in the model's time unit ({self.units.get('time')}), "
                           "e.g. lag frames x frame interval")
        tr = rf["temperature_range"]
        if (not isinstance(tr, (list, tuple)) or len(tr) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in tr)
                or not 0 < tr[0] <= tr[1]):
            raise _err("role_fields.temperature_range", f"{tr!r} is not [T_min, T_max] with 0 < T_min <= T_max (K)",
                       "give the lowest and highest training temperature in kelvin")
        k = rf["flow_steps"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _err("role_fields.flow_steps", f"{k!r} is not an integer >= 1",
                       "give the default number of flow (ODE) steps per jump, e.g. 10")
        if rf["solver"] not in FLOW_SOLVERS:
            raise _err("role_fields.solver", f"{rf['solver']!r} is not a known solver",
                       f"use one of {', '.join(FLOW_SOLVERS)}")
        self._validate_prior(rf["prior"])
        md = rf.get("max_displacement")
        if md is not None and (isinstance(md, bool) or not isinstance(md, (int, float)) or not md > 0):
            raise _err("role_fields.max_displacement", f"{md!r} is not a positive number",
                       "give the longest accepted displacement of one jump in angstrom (or leave it out)")
        ma = rf.get("max_attempts")
        if ma is not None and (isinstance(ma, bool) or not isinstance(ma, int) or ma < 1):
            raise _err("role_fields.max_attempts", f"{ma!r} is not an integer >= 1",
                       "give the number of draws of a jump before the run stops (e.g. 10), or leave it out")

    def _validate_prior(self, prior: Any) -> None:
        if not isinstance(prior, dict):
            raise _err("role_fields.prior", f"{prior!r} is not a mapping",
                       "give {'kind': 'maxwell_boltzmann', 'scale': {type: s}, 'mass': {type: amu}}")
        if prior.get("kind") not in PRIOR_KINDS:
            raise _err("role_fields.prior.kind", f"{prior.get('kind')!r} is not a known prior",
                       f"use one of {', '.join(PRIOR_KINDS)}")
        for key, positive in (("scale", False), ("mass", True)):
            table = prior.get(key)
            if not isinstance(table, dict):
                raise _err(f"role_fields.prior.{key}", f"{table!r} is not a mapping type name -> value",
                           f"give one {key} per type name in {self.type_names}")
            missing = [t for t in self.type_names if t not in table]
            if missing:
                raise _err(f"role_fields.prior.{key}", f"has no entry for type(s) {missing}",
                           f"give one {key} per type name in {self.type_names}")
            for t in self.type_names:
                v = table[t]
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                if not ok or (v <= 0 if positive else v < 0):
                    raise _err(f"role_fields.prior.{key}.{t}", f"{v!r} is not a {'positive' if positive else 'non-negative'} "
                               "finite number", f"give the {'mass in amu' if positive else 'dimensionless width scale'}")

    def _validate_units(self) -> None:
        tables = {"length": LENGTH_TO_NM, "energy": ENERGY_TO_KJ_PER_MOL, "time": TIME_TO_PS}
        if not isinstance(self.units, dict):
            raise _err("units", f"{self.units!r} is not a mapping", "give units={'length':..., 'energy':..., 'time':...}")
        for kind, table in tables.items():
            u = self.units.get(kind)
            if u is None:
                raise _err(f"units.{kind}", "is missing", f"declare the model's {kind} unit")
            if u != REDUCED and u not in table:
                raise _err(f"units.{kind}", f"'{u}' is unknown", f"use one of {', '.join(sorted(table))} or 'lj'")
        reduced = [k for k in tables if self.units[k] == REDUCED]
        if reduced and len(reduced) != len(tables):
            raise _err("units", "mixes reduced (lj) and physical units", "declare all units 'lj' or none")

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "ArtifactMetadata":
        if not isinstance(data, dict):
            raise MetadataError("artifact metadata is not a JSON object. Fix: re-export the model with engine_plugins")
        if data.get("format") != FORMAT_NAME:
            raise _err("format", f"is {data.get('format')!r}, so this is not an engine_plugins artifact",
                       "export the model with engine_plugins.export.export_artifact")
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise _err("schema_version", f"version {version!r} is not one this engine_plugins reads "
                       f"(1..{SCHEMA_VERSION})", "upgrade engine_plugins, or re-export the model with it")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise _err(unknown[0], "is not part of schema version "
                       f"{SCHEMA_VERSION}", "re-export the model with this version of engine_plugins")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        for name in required:
            if name not in data:
                raise _err(name, "is missing", "re-export the model with engine_plugins")
        return cls(**data).validate()

    @classmethod
    def from_json(cls, text: str | bytes) -> "ArtifactMetadata":
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MetadataError(f"artifact metadata is not valid JSON ({exc}). Fix: re-export the model") from exc
        return cls.from_dict(data)

    def describe(self, header: dict[str, str] | None = None) -> str:
        """Human-readable summary (``engine-plugins inspect``); ``header`` rows come first."""
        length = self.units.get("length")
        rows: list[tuple[str, str]] = list((header or {}).items()) + [
            ("role", self.role),
            ("method", self.method),
            ("schema version", str(self.schema_version)),
            ("type names", " ".join(self.type_names)),
            ("cutoff", f"{self.cutoff:g} {length}"),
            ("message passing", f"{self.num_message_passing_layers} layer(s); ghost/halo width "
                                f"{self.ghost_cutoff:g} {length}"),
            ("dtype", self.dtype),
            ("units", f"length {length}, energy {self.units.get('energy')}, time {self.units.get('time')}"),
            ("periodicity", self.periodicity),
        ]
        rows += [(k, json.dumps(v)) for k, v in sorted(self.role_fields.items())]
        rows += [(f"provenance.{k}", json.dumps(v)) for k, v in sorted(self.provenance.items())]
        rows.append(("content hash", self.content_hash))
        width = max(len(k) for k, _ in rows) + 2
        return "\n".join(f"{k + ':':<{width}}{v}" for k, v in rows)
