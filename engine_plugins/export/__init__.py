"""Artifacts: one TorchScript file with versioned JSON metadata inside (DESIGN.md, 'The contract')."""

from engine_plugins.export.artifact import Artifact, ArtifactError, export_artifact, load_artifact
from engine_plugins.export.metadata import SCHEMA_VERSION, ArtifactMetadata, MetadataError

__all__ = [
    "Artifact",
    "ArtifactError",
    "ArtifactMetadata",
    "MetadataError",
    "SCHEMA_VERSION",
    "export_artifact",
    "load_artifact",
]
