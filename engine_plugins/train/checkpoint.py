"""Checkpoints that resume training exactly: atomic writes and RNG state capture (method-agnostic).

A checkpoint is one ``torch.save`` dict. :func:`save_checkpoint` writes it to a temporary file and
renames it, so a kill during the write leaves the previous checkpoint intact. :func:`rng_state` /
:func:`set_rng_state` capture python's, numpy's and torch's global generators (CPU and, when
initialised, CUDA) plus any named ``torch.Generator`` the loop draws from.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch


def rng_state(generators: Optional[Dict[str, torch.Generator]] = None) -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], generators: Optional[Dict[str, torch.Generator]] = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (generators or {}).items():
        if k not in state["generators"]:
            raise KeyError(f"checkpoint has no state for generator '{k}'")
        g.set_state(state["generators"][k])


def save_checkpoint(state: Dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    # our own files, with RNG states (numpy arrays, tuples): not weights-only
    return torch.load(path, map_location=map_location, weights_only=False)


__all__ = ["load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]
