"""The audit pack: the public surface, read as ``pack.build_pack(...)``, ``pack.classify(...)``.

One signed, self-verifying zip per model version (model card, lineage, evidence, drift, usage, ledger events
with inclusion proofs, a signed manifest), and the model-risk fields it carries.
"""

from convergence.governance._pack import FORMAT, TIERS, build_pack, classification, classify

__all__ = [
    "FORMAT",
    "TIERS",
    "build_pack",
    "classification",
    "classify",
]
