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
from typing import Any, Dict, Optional, Sequence, Tuple, Union

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


def read_init_source(path: Union[str, os.PathLike], role: str, method: Optional[str], model_config_key: str,
                     type_names: Sequence[str], model_options: Dict[str, Any], free_keys: Sequence[str] = ()
                     ) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, Any], Optional[Dict[str, Any]]]:
    """(model config, weights, description, checkpoint config) of a run's ``train.init_from``: a
    training checkpoint (its EMA weights) or an exported artifact of role ``role`` (and ``method``,
    when given) whose provenance records its model config under ``model_config_key``. The checkpoint
    config is None for an artifact. Raises ValueError when the source's type names differ from
    ``type_names`` or one of this run's ``model_options`` (other than ``free_keys``, which do not
    change the parameters) differs from the source's: the architecture comes from the source."""
    import zipfile

    from engine_plugins.export.artifact import METADATA_FILE, load_artifact, read_metadata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: {path} does not exist. Fix: a checkpoint (checkpoints/last.pt) "
                                "or an exported artifact (.pt)")
    is_artifact = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_artifact = any(n.endswith("extra/" + METADATA_FILE) for n in zf.namelist())
    if is_artifact:
        meta = read_metadata(path)
        if meta.role != role or (method and meta.method != method):
            raise ValueError(f"train.init_from: {path} is a '{meta.role}' artifact (method {meta.method!r}); this "
                             f"run trains a '{role}'{f' ({method})' if method else ''}. Fix: start from an "
                             "artifact of the same role and method")
        mc = (meta.provenance or {}).get(model_config_key)
        if not isinstance(mc, dict):
            raise ValueError(f"train.init_from: {path} records no {model_config_key} in its provenance, so its "
                             "architecture is unknown. Fix: start from a training checkpoint")
        desc = {"kind": "artifact", "path": str(path), "content_hash": meta.content_hash,
                "steps": (meta.provenance or {}).get("steps")}
        _check_init_architecture(path, mc, type_names, model_options, free_keys)
        # the artifact's weights (TorchScript load, content hash verified)
        return dict(mc), dict(load_artifact(path).module.state_dict()), desc, None
    saved = load_checkpoint(path)
    if not isinstance(saved, dict) or "model_config" not in saved:
        raise ValueError(f"train.init_from: {path} is neither an exported artifact nor a training checkpoint")
    mc = dict(saved["model_config"])
    _check_init_architecture(path, mc, type_names, model_options, free_keys)
    state = dict(saved["model"])
    state.update(saved["ema"])
    desc = {"kind": "checkpoint", "path": str(path), "steps": int(saved["step"])}
    return mc, state, desc, saved.get("config", {})


def _check_init_architecture(path: Path, mc: Dict[str, Any], type_names: Sequence[str],
                             model_options: Dict[str, Any], free_keys: Sequence[str]) -> None:
    if list(mc.get("type_names", [])) != list(type_names):
        raise ValueError(f"train.init_from: {path} has type names {mc.get('type_names')}, the data {list(type_names)}. "
                         "Fix: the same types in the same order")
    differ = {k: (mc.get(k), v) for k, v in model_options.items()
              if k not in free_keys and k in mc and mc.get(k) != v}
    if differ:
        raise ValueError(f"train.init_from: the architecture differs from {path} in model option(s) "
                         f"{ {k: {'init_from': a, 'config': b} for k, (a, b) in differ.items()} }. Fix: drop "
                         "these keys from the config's model section (they come from init_from) or start afresh")


def load_init_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Copy the init_from weights into the eager model (cast to its dtype); every parameter and
    buffer must be there with its shape (extra entries: the constants TorchScript adds)."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    bad = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad:
        raise ValueError(f"train.init_from: {path} does not fit the model: missing {missing[:5]}, shape differs "
                         f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:5]]}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(device=v.device, dtype=v.dtype))


__all__ = ["load_checkpoint", "load_init_state", "read_init_source", "rng_state", "save_checkpoint",
           "set_rng_state"]
