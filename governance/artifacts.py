"""Safe model artifacts: the public surface, read as ``artifacts.read_header(...)``, ``artifacts.check_artifact(...)``.

A model file is a safetensors file whose header names a convergence format and carries the architecture
as JSON (``_safeartifact``); registration refuses anything else, and every loader checks the same header.
"""

from convergence.governance._safeartifact import (
    DTYPE_BYTES,
    FORMATS,
    ArtifactHeader,
    check_artifact,
    read_header,
)

__all__ = [
    "DTYPE_BYTES",
    "FORMATS",
    "ArtifactHeader",
    "check_artifact",
    "read_header",
]
