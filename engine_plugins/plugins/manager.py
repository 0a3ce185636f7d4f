"""The plugin manager: loads built-in and third-party plugins, collects their registrations.

A plugin that fails to import (or whose hook raises) is a :class:`PluginWarning` and is skipped;
it never breaks the others. Two registrations of one name are a :class:`DuplicatePluginError`
naming both sources.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Iterable

import pluggy

from engine_plugins.plugins import hookspecs
from engine_plugins.plugins.specs import BackboneSpec, CGMappingSpec, EngineSpec, MethodSpec

BUILTIN_MODULE = "engine_plugins.plugins.builtin"

#: registry kind -> (hook name, spec type)
KINDS: dict[str, tuple[str, type]] = {
    "methods": ("engine_plugins_methods", MethodSpec),
    "backbones": ("engine_plugins_backbones", BackboneSpec),
    "engines": ("engine_plugins_engines", EngineSpec),
    "cg_mappings": ("engine_plugins_cg_mappings", CGMappingSpec),
}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered; the others are unaffected."""


class DuplicatePluginError(RuntimeError):
    """Two plugins registered the same name for the same kind."""


class UnknownPluginError(KeyError):
    """A name was asked for that no plugin registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass(frozen=True)
class Registration:
    """One registered spec and where it came from."""

    kind: str
    spec: Any
    source: str

    @property
    def name(self) -> str:
        return self.spec.name


class PluginManager(pluggy.PluginManager):
    """pluggy manager with typed registries and per-plugin provenance."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs.EnginePluginsSpecs)
        self._sources: dict[int, str] = {}
        self._registry: dict[str, dict[str, Registration]] | None = None

    # ---------------------------------------------------------------- loading
    def register_plugin(self, plugin: ModuleType | object, source: str) -> None:
        """Register ``plugin`` (a module or object with hookimpls); ``source`` says where it came from."""
        name = source
        if self.is_registered(plugin) or self.has_plugin(name):
            return
        super().register(plugin, name=name)
        self._sources[id(plugin)] = source
        self._registry = None

    def load_entrypoints(self, group: str = hookspecs.ENTRY_POINT_GROUP) -> int:
        """Load every plugin of the entry-point ``group``; broken ones become warnings."""
        count = 0
        for ep in entry_points(group=group):
            dist = getattr(ep.dist, "name", None) or "?"
            source = f"{dist}:{ep.name} ({ep.value})"
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                warnings.warn(f"engine_plugins: plugin '{ep.name}' from '{dist}' failed to load and was "
                              f"skipped: {type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
                continue
            if isinstance(plugin, ModuleType) and plugin.__name__ == BUILTIN_MODULE:
                source = f"built-in ({BUILTIN_MODULE})"
            self.register_plugin(plugin, source)
            count += 1
        return count

    def load_builtin(self) -> None:
        """Register the built-in plugin directly (a source checkout not pip-installed has no entry points)."""
        module = importlib.import_module(BUILTIN_MODULE)
        if not self.is_registered(module):
            self.register_plugin(module, f"built-in ({BUILTIN_MODULE})")

    # -------------------------------------------------------------- registry
    def _collect(self) -> dict[str, dict[str, Registration]]:
        registry: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        for kind, (hook_name, spec_type) in KINDS.items():
            for impl in getattr(self.hook, hook_name).get_hookimpls():
                source = self._sources.get(id(impl.plugin), impl.plugin_name)
                try:
                    specs: Iterable[Any] = impl.function() or ()
                    specs = list(specs)
                except Exception as exc:  # noqa: BLE001
                    warnings.warn(f"engine_plugins: plugin {source} failed in {hook_name} and was skipped: "
                                  f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
                    continue
                for spec in specs:
                    if not isinstance(spec, spec_type):
                        warnings.warn(f"engine_plugins: plugin {source} returned {type(spec).__name__} from "
                                      f"{hook_name}; expected {spec_type.__name__}; skipped", PluginWarning,
                                      stacklevel=2)
                        continue
                    prev = registry[kind].get(spec.name)
                    if prev is not None:
                        raise DuplicatePluginError(
                            f"{kind[:-1].replace('_', ' ')} '{spec.name}' is registered twice: by {prev.source} "
                            f"and by {source}. Fix: uninstall one of the two plugins or rename its entry")
                    registry[kind][spec.name] = Registration(kind, spec, source)
        return registry

    @property
    def registry(self) -> dict[str, dict[str, Registration]]:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def get(self, kind: str, name: str) -> Any:
        """The spec registered as ``name`` for ``kind`` ('methods', 'backbones', 'engines', 'cg_mappings')."""
        entries = self.registry[kind]
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise UnknownPluginError(
                f"no {kind[:-1].replace('_', ' ')} named '{name}' is registered (known: {known}). Fix: install "
                "the plugin that provides it; `engine-plugins plugins` lists what is registered")
        return entries[name].spec

    def get_method(self, name: str) -> MethodSpec:
        return self.get("methods", name)

    def get_backbone(self, name: str) -> BackboneSpec:
        return self.get("backbones", name)

    def get_engine(self, name: str) -> EngineSpec:
        return self.get("engines", name)

    def describe(self) -> str:
        """Text table of everything registered and where it came from."""
        lines: list[str] = []
        for kind, entries in self.registry.items():
            lines.append(f"{kind}:")
            if not entries:
                lines.append("  (none)")
            for name in sorted(entries):
                reg = entries[name]
                role = getattr(reg.spec, "role", None)
                roles = getattr(reg.spec, "roles", None)
                what = f"role {role}" if role else (f"roles {', '.join(roles)}" if roles else "")
                lines.append(f"  {name:<24} {what:<32} from {reg.source}")
                if reg.spec.description:
                    lines.append(f"  {'':<24} {reg.spec.description}")
        return "\n".join(lines)


def make_plugin_manager(load_entrypoints: bool = True) -> PluginManager:
    """A fresh manager with built-in and (optionally) entry-point plugins."""
    pm = PluginManager()
    if load_entrypoints:
        pm.load_entrypoints()
    pm.load_builtin()
    return pm


@functools.lru_cache(maxsize=None)
def get_plugin_manager() -> PluginManager:
    """The process-wide manager (cached; ``get_plugin_manager.cache_clear()`` reloads)."""
    return make_plugin_manager()
