"""Hook specifications: each hook returns an iterable of typed registration objects."""

from __future__ import annotations

from typing import Iterable

import pluggy

from engine_plugins.plugins.specs import BackboneSpec, CGMappingSpec, EngineSpec, MethodSpec

PROJECT_NAME = "engine_plugins"
ENTRY_POINT_GROUP = "engine_plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class EnginePluginsSpecs:
    @hookspec
    def engine_plugins_methods(self) -> Iterable[MethodSpec]:
        """Register methods (model + loss + sampler for a role)."""

    @hookspec
    def engine_plugins_backbones(self) -> Iterable[BackboneSpec]:
        """Register backbones (equivariant networks)."""

    @hookspec
    def engine_plugins_engines(self) -> Iterable[EngineSpec]:
        """Register engine backends."""

    @hookspec
    def engine_plugins_cg_mappings(self) -> Iterable[CGMappingSpec]:
        """Register coarse-graining mappings."""
