"""Write and load artifacts: one TorchScript file with the metadata JSON as an extra file.

The loader is the single gate every engine path goes through in Python; it turns every way a file
can be wrong into an :class:`ArtifactError` that names the problem and the fix.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import subprocess
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine_plugins import __version__
from engine_plugins.export.metadata import METADATA_FILE, ArtifactMetadata, MetadataError
from engine_plugins.export.roles import ROLE_SMOKE_TESTS


class ArtifactError(RuntimeError):
    """A model file cannot be used: missing, corrupt, not ours, or inconsistent."""


@dataclass
class Artifact:
    """A loaded, validated artifact."""

    path: Path
    module: torch.jit.ScriptModule
    metadata: ArtifactMetadata


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def content_hash(module: torch.jit.ScriptModule, meta: ArtifactMetadata) -> str:
    """sha256 over the code, every parameter and buffer, and the metadata (hash field excluded)."""
    h = hashlib.sha256()
    h.update(module.code.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    d = meta.to_dict()
    d.pop("content_hash", None)
    h.update(ArtifactMetadata(**d).to_json().encode())
    return "sha256:" + h.hexdigest()


def export_artifact(module: torch.nn.Module, metadata: ArtifactMetadata, path: str | os.PathLike,
                    check_role: bool = True) -> Path:
    """Script ``module`` (if needed), check it against its role, and write it with ``metadata``.

    Provenance (package version, git commit, creation time) is filled in when absent.
    ``check_role=False`` skips the two-atom smoke call, for reference models defined for one
    fixed system only (e.g. the analytic GPFF quadratic around a given molecule).
    """
    metadata.validate()
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    scripted = scripted.eval()
    smoke = ROLE_SMOKE_TESTS.get(metadata.role) if check_role else None
    if smoke is not None:
        smoke(scripted, metadata)
    prov = dict(metadata.provenance)
    prov.setdefault("engine_plugins_version", __version__)
    prov.setdefault("git_commit", _git_commit())
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    prov.setdefault("torch_version", torch.__version__)
    metadata.provenance = prov
    metadata.content_hash = content_hash(scripted, metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, buf, _extra_files={METADATA_FILE: metadata.to_json()})
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)  # never leave a half-written model behind
    return path


def read_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """Read and validate only the metadata (no TorchScript load; cheap)."""
    path = Path(path)
    _check_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("extra/" + METADATA_FILE)]
            if not names:
                raise ArtifactError(
                    f"{path}: a TorchScript file without engine_plugins metadata, so not an artifact of "
                    "this package. Fix: export the model with `engine_plugins.export.export_artifact` "
                    "(or `engine-plugins export`)")
            text = zf.read(names[0])
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{path}: not a TorchScript model file (corrupt or truncated: {exc}). "
                            "Fix: re-export or re-download the model") from exc
    try:
        return ArtifactMetadata.from_json(text)
    except MetadataError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ArtifactError(f"model file '{path}' does not exist. Fix: check the path "
                            "(models shipped with the package are in exported_models/)")
    if not path.is_file():
        raise ArtifactError(f"model path '{path}' is not a file")


def load_artifact(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                  verify_hash: bool = True) -> Artifact:
    """Load and validate an artifact; every failure is an :class:`ArtifactError` with a fix."""
    path = Path(path)
    meta = read_metadata(path)
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a broken file
        raise ArtifactError(f"{path}: TorchScript could not load the model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}). Fix: re-export the model with "
                            f"this torch ({torch.__version__})") from exc
    if verify_hash:
        expected = meta.content_hash
        actual = content_hash(module, meta)
        if expected != actual:
            raise ArtifactError(f"{path}: content hash mismatch (metadata {expected[:19]}..., file "
                                f"{actual[:19]}...): weights, code or metadata changed after export. Fix: "
                                "re-export the model")
    return Artifact(path=path, module=module, metadata=meta)


def copy_with_role_fields(model: str | os.PathLike | Artifact, output: str | os.PathLike, fields: dict[str, Any],
                          role: str | None = None) -> Path:
    """Copy of artifact ``model`` (a path or a loaded :class:`Artifact`; same weights) with
    ``fields`` merged into ``role_fields``, re-hashed; ``role``: the role the source must have.
    Why: engine settings (contact bounds, a corrector's passes) are chosen after training and
    belong in the artifact, not in every call."""
    art = model if isinstance(model, Artifact) else load_artifact(model)
    if role is not None and art.metadata.role != role:
        raise ArtifactError(f"{art.path} has role '{art.metadata.role}', but these settings belong to a '{role}' "
                            f"artifact. Fix: pass a '{role}' model")
    d = art.metadata.to_dict()
    d["role_fields"] = {**d["role_fields"], **fields}
    d.pop("content_hash", None)
    return export_artifact(art.module, ArtifactMetadata(**d), output)
