"""The verifiable ledger: the public surface, read as ``ledger.checkpoint(...)``, ``ledger.prove(...)``.

On top of the hash chain (``governance.append`` / ``verify``): an RFC 6962 Merkle tree over the events,
signed checkpoints (C2SP notes, Ed25519) published outside the database, inclusion and consistency proofs,
and verification of the database against published checkpoints. The standalone ``auditor.py`` checks all of
it with the public key alone.
"""

from convergence.governance._anchors import (
    Anchor,
    DirectoryAnchor,
    S3Anchor,
    configured,
    fetch,
)
from convergence.governance._checkpoints import (
    anchor_locations,
    checkpoint,
    checkpoint_if_due,
    checkpoint_text,
    due,
    latest,
    prove,
    prove_consistency,
    rotate_key,
    signer,
    to_dict,
    verifier_key,
    verify_ledger,
    witness,
)
from convergence.governance._ledger import Published
from convergence.governance._merkle import compact_range, consistency, inclusion, root
from convergence.governance._notes import (
    Ed25519NoteSigner,
    NoteSigner,
    cosign,
    generate_key,
    read_key_file,
    sign_note,
    write_key_file,
)

__all__ = [  # noqa: RUF022 - grouped by concept, not sorted
    # checkpoints: make, find, describe
    "checkpoint", "checkpoint_if_due", "due", "latest", "to_dict", "checkpoint_text",
    # keys: the ledger's signer, a witness, what auditors hold
    "signer", "witness", "rotate_key", "verifier_key", "generate_key", "read_key_file", "write_key_file", "sign_note", "cosign",
    "NoteSigner", "Ed25519NoteSigner",
    # anchors outside the database
    "Anchor", "DirectoryAnchor", "S3Anchor", "configured", "fetch", "anchor_locations",
    # the Merkle tree and its proofs
    "root", "inclusion", "consistency", "compact_range", "prove", "prove_consistency",
    # verification against published checkpoints
    "verify_ledger", "Published",
]
