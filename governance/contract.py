"""The model contract: what a registered version of each family *is*, owned in one place.

Per family (``contract.trading``, ``contract.language``): the architecture, the safe artifact format with
one loader and one error type (``UnsafeArtifact``), prediction or generation, and the monitoring signature
(``signature``: which logged values the reference profile watches, and how they are encoded). Pipelines
write artifacts and reference profiles through it, serving loads, answers and logs through it, drift reads
the log through it. It lives beside the registry because pipelines and serving talk only through the
registry; it imports no training code, Ray or KFP (torch, onnxruntime and tokenizers load on first use).
"""

from __future__ import annotations

from convergence.governance import _contract_language as language
from convergence.governance import _contract_trading as trading
from convergence.governance._contract_io import Signature, format_of

__all__ = ["Signature", "format_of", "language", "trading"]
