"""Strict option dataclasses from dicts (config files, artifact metadata).

Every config section and every model/noise/sampler option set is a dataclass built from a dict; an
unknown key (usually a typo) must be an error that lists the known keys, never silently dropped.
One helper so every section says it the same way.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, Type, TypeVar

T = TypeVar("T")


class UnknownOptionError(ValueError, TypeError):
    """A dict has keys its dataclass does not know.

    Both a ``ValueError`` (a bad config value) and a ``TypeError`` (what ``cls(**d)`` would raise for
    an unexpected keyword), so callers that catch either keep working."""


def check_known(cls: type, d: Mapping[str, Any], what: str) -> None:
    """Raise :class:`UnknownOptionError` if ``d`` has keys that are not fields of dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UnknownOptionError(f"{what}: unknown option(s) {unknown}; known: {sorted(known)}. "
                                 "Fix: correct the spelling or remove them")


def options_from_dict(cls: Type[T], d: Mapping[str, Any], what: str) -> T:
    """``cls(**d)`` after :func:`check_known` (``what`` names the section in the message)."""
    check_known(cls, d, what)
    return cls(**d)  # type: ignore[call-arg]
