"""Plugin registry (pluggy, conda's pattern): typed registration objects, entry point group ``engine_plugins``."""

from engine_plugins.plugins.hookspecs import hookimpl
from engine_plugins.plugins.manager import (
    DuplicatePluginError,
    PluginManager,
    PluginWarning,
    UnknownPluginError,
    get_plugin_manager,
)
from engine_plugins.plugins.specs import BackboneSpec, CGMappingSpec, EngineSpec, MethodSpec

__all__ = [
    "BackboneSpec",
    "CGMappingSpec",
    "DuplicatePluginError",
    "EngineSpec",
    "MethodSpec",
    "PluginManager",
    "PluginWarning",
    "UnknownPluginError",
    "get_plugin_manager",
    "hookimpl",
]
