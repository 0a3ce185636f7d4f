"""Typed registration objects: what a plugin hands the registry (conda's pattern).

A plugin never registers bare callables: it returns these dataclasses, so the registry can check
names and roles and tell the user where each entry came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from engine_plugins.export.metadata import ROLES


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"{kind} name {name!r} must be a non-empty string without spaces")


@dataclass(frozen=True)
class MethodSpec:
    """A method for one role: a model factory (+ loss and sampler where the role trains/samples).

    ``build_model(**config) -> torch.nn.Module`` returns a module implementing the role's signature
    (engine_plugins.export.roles); ``build_metadata(**config) -> ArtifactMetadata`` describes it;
    ``script(model) -> ScriptModule`` scripts it where plain ``torch.jit.script`` is not enough.
    """

    name: str
    role: str
    build_model: Callable[..., Any]
    build_metadata: Callable[..., Any] | None = None
    loss: Callable[..., Any] | None = None
    sampler: Callable[..., Any] | None = None
    script: Callable[..., Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("method", self.name)
        if self.role not in ROLES:
            raise ValueError(f"method {self.name!r}: unknown role {self.role!r}; use one of {', '.join(ROLES)}")


@dataclass(frozen=True)
class BackboneSpec:
    """A network that turns a graph into per-atom features (NequIP is the default)."""

    name: str
    build: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("backbone", self.name)


@dataclass(frozen=True)
class EngineSpec:
    """An engine backend: which roles it runs and how to attach an artifact to it."""

    name: str
    roles: tuple[str, ...]
    attach: Callable[..., Any] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("engine", self.name)
        bad = [r for r in self.roles if r not in ROLES]
        if bad:
            raise ValueError(f"engine {self.name!r}: unknown role(s) {bad}")


@dataclass(frozen=True)
class CGMappingSpec:
    """A coarse-graining mapping: atoms -> beads."""

    name: str
    build: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("CG mapping", self.name)
