"""Operations on the audit trail and on identity: query, verify, checkpoint and export the ledger; who am
I; principals, role grants (four eyes), service accounts and their API keys."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from convergence.platform.api._base import OperationsBase, plain, times
from convergence.platform.api._spec import Id, Limit, Name, Ref, Role, Text, When, op


class TrustOps(OperationsBase):
    # --- the audit trail ----------------------------------------------------------------------

    @op("GET", "/audit/events", tag="audit")
    def query_audit(self, subject: Ref | None = None, actor: Name | None = None, action: Name | None = None,
                    since: When | None = None, until: When | None = None, limit: Limit = 1000,
                    newest_first: bool = False) -> list[dict[str, Any]]:
        """Audit events by subject (TYPE:ID), actor, action (a prefix ending in *) and time range."""
        from convergence import governance as gov

        subj = gov.Subject.parse(subject) if subject else None
        since_t, until_t = times(since, until)
        with self.reading("audit.read") as session:
            events = gov.query_events(session=session, subject=subj, actor=actor, action=action, since=since_t,
                                      until=until_t, limit=limit, newest_first=newest_first)
            return [e.to_dict() for e in events]

    @op("GET", "/audit/verify", tag="audit")
    def verify_audit(self, from_checkpoint: Id | None = None, checkpoint: Text | None = None,
                     key: Name | None = None) -> dict[str, Any]:
        """Recompute the chain and its Merkle tree; check the database's checkpoints, the newest one in every
        anchor and ``checkpoint`` (a signed note's text) with ``key`` (default: this ledger's verifier key).
        ``ok`` false names the first bad seq and the kind of damage."""
        from convergence import governance as gov

        given = [("the given checkpoint", checkpoint)] if checkpoint else []
        with self.reading("audit.read") as session:
            return plain(gov.ledger.verify_ledger(session=session, notes=given, key=key,
                                                  from_checkpoint=from_checkpoint).to_dict())

    @op("POST", "/audit/checkpoints", tag="audit", status=201)
    def checkpoint_audit(self, if_due: bool = False) -> dict[str, Any]:
        """Sign the Merkle tree of every committed event, publish it to the anchors and record it; with
        ``if_due``, only when enough events or time passed (``made`` says whether one was made)."""
        from convergence import governance as gov

        with self.writing() as session:
            if not if_due:
                return {"made": True, **gov.ledger.to_dict(gov.ledger.checkpoint(session=session,
                                                                                  principal=self.principal))}
            made = gov.ledger.checkpoint_if_due(session=session, principal=self.principal)
            last = made or gov.ledger.latest(session=session)
            return {"made": made is not None, **(gov.ledger.to_dict(last) if last else {})}

    @op("POST", "/audit/key-rotations", tag="audit", status=201)
    def rotate_ledger_key(self, new_key_file: Text) -> dict[str, Any]:
        """Hand checkpoint signing to the key in ``new_key_file`` (a path where the ledger runs, e.g. a mounted
        Secret): a statement signed by the old key is published and recorded; then switch CVG_LEDGER_KEY_FILE."""
        from convergence import governance as gov

        with self.writing() as session:
            return gov.ledger.rotate_key(session=session, principal=self.principal, new_key_file=Path(new_key_file))

    @op("GET", "/audit/checkpoints/latest", tag="audit")
    def latest_checkpoint(self) -> dict[str, Any]:
        """The newest signed checkpoint: its note, tree size, root and where it was published."""
        from convergence import governance as gov
        from convergence.platform.errors import NotFound

        with self.reading("audit.read") as session:
            cp = gov.ledger.latest(session=session, signed=True)
            if cp is None:
                raise NotFound("no signed checkpoint yet", hint="run `cvg audit checkpoint`")
            return gov.ledger.to_dict(cp)

    @op("GET", "/audit/pubkey", tag="audit")
    def ledger_pubkey(self) -> dict[str, Any]:
        """The verifier key of the ledger's checkpoints (C2SP note form) and where checkpoints are published."""
        from convergence import governance as gov

        with self.reading("audit.read"):
            return {"key": gov.ledger.verifier_key(), "anchors": gov.ledger.anchor_locations()}

    @op("GET", "/audit/proofs/inclusion", tag="audit")
    def prove_inclusion(self, seq: Id, size: Id | None = None) -> dict[str, Any]:
        """An RFC 6962 inclusion proof of event ``seq`` against the latest signed checkpoint (or the one of
        ``size`` events), with the event and the note: `python auditor.py inclusion FILE --key KEY` checks it."""
        from convergence import governance as gov

        with self.reading("audit.read") as session:
            return gov.ledger.prove(session=session, seq=seq, size=size)

    @op("GET", "/audit/proofs/consistency", tag="audit")
    def prove_consistency(self, old: Id, new: Id | None = None) -> dict[str, Any]:
        """An RFC 6962 consistency proof between the signed checkpoints of ``old`` and ``new`` events (default:
        the latest): the newer tree extends the older one, nothing before it changed."""
        from convergence import governance as gov

        with self.reading("audit.read") as session:
            return gov.ledger.prove_consistency(session=session, old_size=old, new_size=new)

    @op("GET", "/audit/export", tag="audit", kind="stream")
    def export_audit(self, format: Literal["jsonl", "csv", "parquet"] = "jsonl", since: When | None = None,
                     until: When | None = None) -> Iterator[bytes]:
        """The events with their chain fields, streamed; `python governance/auditor.py FILE` re-verifies it."""
        from convergence import governance as gov
        from convergence.platform.settings import get_settings

        since_t, until_t = times(since, until)
        home = get_settings().home
        home.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=home, prefix=".export-", suffix=f".{format}")
        os.close(fd)
        try:
            with self.reading("audit.read") as session:
                gov.export_events(session=session, out=Path(name), fmt=format, since=since_t, until=until_t)
        except BaseException:
            os.unlink(name)
            raise
        return _chunks(Path(name))

    # --- who is who ---------------------------------------------------------------------------

    @op("GET", "/whoami", tag="principals")
    def whoami(self) -> dict[str, Any]:
        """The authenticated principal: id, name, issuer and subject, roles, how it authenticated."""
        from convergence.governance import identity

        return {**self.principal.to_dict(), "rules": identity.RULES}

    @op("GET", "/principals", tag="principals")
    def list_principals(self) -> list[dict[str, Any]]:
        """Every principal with its active roles and pending grants."""
        from convergence.governance import identity

        with self.reading("principal.read") as session:
            return identity.list_principals(session=session, principal=self.principal)

    @op("GET", "/principals/{ref}", tag="principals")
    def show_principal(self, ref: Ref) -> dict[str, Any]:
        """One principal: #ID, sa:NAME, os:NAME, oidc:SUBJECT or a display name."""
        from convergence.governance import identity

        with self.reading("principal.read") as session:
            return identity.principal_to_dict(session, identity.resolve_ref(session=session, ref=ref))

    @op("POST", "/service-accounts", tag="principals", status=201)
    def create_service_account(self, name: Name, description: Text | None = None) -> dict[str, Any]:
        """A machine identity that acts with API keys; grant it roles like anyone else."""
        from convergence.governance import identity

        with self.writing() as session:
            row = identity.create_service_account(session=session, principal=self.principal, name=name,
                                                  description=description)
            return identity.principal_to_dict(session, row)

    @op("POST", "/service-accounts/{name}/keys", tag="principals", status=201)
    def create_api_key(self, name: Name, expires: When | None = None, description: Text | None = None) -> dict[str, Any]:
        """A new API key for a service account; ``key`` is shown in this answer only, never again. It works once
        a second admin approves it (``POST /api-keys/{key_id}/approve``)."""
        from convergence.governance import identity
        from convergence.platform.timeparse import parse_future

        expires_at = parse_future(expires, option="--expires") if expires else None
        with self.writing() as session:
            row, key = identity.create_api_key(session=session, principal=self.principal, account=name,
                                               expires_at=expires_at, description=description)
            return {"key_id": row.key_id, "key": key, "account": name,
                    "expires_at": row.expires_at.isoformat() if row.expires_at else None}

    @op("POST", "/api-keys/{key_id}/approve", tag="principals")
    def approve_api_key(self, key_id: Name, reason: Text | None = None) -> dict[str, Any]:
        """A second admin (not the requester, not the account) lets a key work."""
        from convergence.governance import identity

        with self.writing() as session:
            row = identity.approve_api_key(session=session, principal=self.principal, key_id=key_id, reason=reason)
            return {"key_id": row.key_id, "approved_at": row.approved_at.isoformat() if row.approved_at else None}

    @op("GET", "/api-keys", tag="principals")
    def list_api_keys(self) -> list[dict[str, Any]]:
        """Every API key's id, account, state and last use (never a secret)."""
        from convergence.governance import identity

        with self.reading("principal.read") as session:
            return identity.list_api_keys(session=session, principal=self.principal)

    @op("POST", "/api-keys/{key_id}/revoke", tag="principals")
    def revoke_api_key(self, key_id: Name, reason: Text | None = None) -> dict[str, Any]:
        """Revoke a key at once (every process stops accepting it within CVG_AUTH_CACHE_S)."""
        from convergence.governance import identity

        with self.writing() as session:
            row = identity.revoke_api_key(session=session, principal=self.principal, key_id=key_id, reason=reason)
            return {"key_id": row.key_id, "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}

    @op("POST", "/grants", tag="principals", status=201)
    def request_grant(self, principal: Ref, role: Role, reason: Text | None = None) -> dict[str, Any]:
        """Ask for a role for someone (not yourself); a second admin must approve it."""
        from convergence.governance import identity

        return self._granting(identity.request_grant, grantee=principal, role=role, reason=reason)

    @op("POST", "/grants/{grant_id}/approve", tag="principals")
    def approve_grant(self, grant_id: Id, reason: Text | None = None) -> dict[str, Any]:
        """A second admin (not the requester, not the grantee) makes a requested role active."""
        return self._decide(grant_id, True, reason)

    @op("POST", "/grants/{grant_id}/reject", tag="principals")
    def reject_grant(self, grant_id: Id, reason: Text | None = None) -> dict[str, Any]:
        """Refuse a requested role."""
        return self._decide(grant_id, False, reason)

    def _decide(self, grant_id: int, approve: bool, reason: str | None) -> dict[str, Any]:
        from convergence.governance import identity

        return self._granting(identity.decide_grant, grant_id=grant_id, approve=approve, reason=reason)

    def _granting(self, service: Any, **kwargs: Any) -> dict[str, Any]:
        """Call a grant service as this principal, in one write transaction; the grant as data."""
        from convergence.governance import identity

        with self.writing() as session:
            grant = service(session=session, principal=self.principal, **kwargs)
            return identity.grant_to_dict(grant, session=session)

    @op("POST", "/grants/revoke", tag="principals")
    def revoke_role(self, principal: Ref, role: Role, reason: Text | None = None) -> dict[str, Any]:
        """Take a role away now (one admin suffices)."""
        from convergence.governance import identity

        return self._granting(identity.revoke_grant, grantee=principal, role=role, reason=reason)

    @op("GET", "/grants", tag="principals")
    def list_grants(self, status: Literal["pending", "active", "rejected", "revoked"] | None = None
                    ) -> list[dict[str, Any]]:
        """Role grants, oldest first; pending ones await a second admin."""
        from convergence.governance import identity

        with self.reading("principal.read") as session:
            return identity.list_grants(session=session, principal=self.principal, status=status)

    # --- retention ----------------------------------------------------------------------------

    @op("GET", "/retention", tag="retention")
    def retention_policies(self) -> list[dict[str, Any]]:
        """How long each record class is kept, its legal minimum, and whether the policy was set or is a default."""
        from convergence import governance as gov

        with self.reading("retention.read") as session:
            return gov.retention.policies(session=session, principal=self.principal)

    @op("PUT", "/retention/{record_class}", tag="retention")
    def set_retention(self, record_class: Literal["prediction_log", "drift_reports", "usage", "artifacts"],
                      days: Annotated[int, Field(ge=1, le=36_500)], reason: Text) -> dict[str, Any]:
        """Keep RECORD_CLASS for DAYS (the admin role); refused below its legal minimum; audited."""
        from convergence import governance as gov

        with self.writing() as session:
            return gov.retention.set_policy(session=session, principal=self.principal, record_class=record_class,
                                            days=days, reason=reason)

    @op("POST", "/retention/apply", tag="retention")
    def apply_retention(self, dry_run: bool = False) -> dict[str, Any]:
        """Delete what is older than its policy (admin or operator), audited as retention.applied; ``dry_run``
        only counts. Audit events are never a retention class."""
        from convergence import governance as gov

        if dry_run:
            with self.reading("retention.read") as session:
                return gov.retention.apply(session=session, principal=self.principal, dry_run=True)
        with self.writing() as session:
            return gov.retention.apply(session=session, principal=self.principal)


def _chunks(path: Path, size: int = 1 << 16) -> Iterator[bytes]:
    """The file's bytes in chunks; the temporary file is removed when the stream ends (or is abandoned)."""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(size):
                yield chunk
    finally:
        path.unlink(missing_ok=True)
