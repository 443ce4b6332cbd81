"""Operations on the model registry: artifacts, datasets, versions, their stages, lineage and history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from convergence.platform.api._base import OperationsBase, plain
from convergence.platform.api._spec import (
    Family,
    Id,
    JsonObject,
    Limit,
    ModelRole,
    Name,
    Number,
    Ref,
    Sha256,
    Stage,
    Text,
    When,
    op,
)


class RegistryOps(OperationsBase):
    @op("POST", "/artifacts", tag="models", kind="upload", status=201)
    def upload_artifact(self, source: Path) -> dict[str, Any]:
        """Store a file (a model or validation evidence) by its SHA-256; register or validate with that hash."""
        from convergence import governance as gov

        with self.writing() as session:
            gov.identity.require(session=session, principal=self.principal, permission="artifact.upload")
        stored = gov.get_artifact_store().put(Path(source))
        return {"sha256": stored.sha256, "size": stored.size}

    @op("POST", "/datasets", tag="models", status=201)
    def register_dataset(self, sha256: Sha256, name: Name | None = None, rows: Id | None = None,
                         columns: list[Name] | None = None, uri: Text | None = None,
                         project: Name = "default") -> dict[str, Any]:
        """Record a dataset by its SHA-256 (the same content twice is one dataset)."""
        from convergence import governance as gov

        schema = {"format": "csv", "columns": columns} if columns is not None else None
        with self.writing() as session:
            ds = gov.register_dataset(session=session, principal=self.principal, sha256=sha256, name=name, rows=rows,
                                      schema=schema, uri=uri, project=project)
            return {"id": ds.id, "name": ds.name, "sha256": ds.sha256, "rows": ds.rows}

    @op("POST", "/models", tag="models", status=201)
    def register_model(self, name: Name, artifact_sha256: Sha256, family: Family,
                       role: ModelRole, dataset_id: Id | None = None, metrics: JsonObject | None = None,
                       params: JsonObject | None = None, parent_id: Id | None = None,
                       description: Text | None = None, project: Name = "default") -> dict[str, Any]:
        """Register an uploaded artifact as a new candidate version (you become its registrant)."""
        from convergence import governance as gov

        stored = gov.get_artifact_store().locate(artifact_sha256)
        with self.writing() as session:
            mv = gov.register_model(session=session, principal=self.principal, name=name, artifact=stored,
                                    family=family, role=role, dataset=dataset_id, metrics=metrics, params=params,
                                    parent_id=parent_id, description=description, project=project)
            return plain(gov.model_to_dict(mv))

    @op("GET", "/models", tag="models")
    def list_models(self, name: Name | None = None, stage: Stage | None = None, family: Family | None = None,
                    limit: Limit = 200) -> list[dict[str, Any]]:
        """Model versions, newest first."""
        from convergence import governance as gov

        with self.reading("model.read") as session:
            rows = gov.list_models(session=session, name=name, stage=stage, family=family, limit=limit)
            return plain([gov.model_to_dict(mv) for mv in rows])

    @op("GET", "/models/{version_id}", tag="models")
    def show_model(self, version_id: Id) -> dict[str, Any]:
        """Everything the registry knows about one version."""
        from convergence import governance as gov

        with self.reading("model.read") as session:
            return plain(gov.model_to_dict(gov.get_model(session=session, version_id=version_id)))

    @op("POST", "/models/{version_id}/validate", tag="models")
    def validate_model(self, version_id: Id, evidence_sha256: Sha256, reason: Text | None = None) -> dict[str, Any]:
        """Record independent validation with uploaded evidence (never by the registrant)."""
        from convergence import governance as gov

        evidence = gov.get_artifact_store().locate(evidence_sha256)
        with self.writing() as session:
            mv = gov.validate(session=session, principal=self.principal, version_id=version_id, evidence=evidence,
                              reason=reason)
            return plain(gov.model_to_dict(mv))

    @op("POST", "/models/{version_id}/approve", tag="models")
    def approve_model(self, version_id: Id, reason: Text, safe_output: Number | None = None) -> dict[str, Any]:
        """Approve a validated version (neither its registrant nor its validator), fixing what it answers
        while killed (safe_output; none: 503)."""
        from convergence import governance as gov

        with self.writing() as session:
            mv = gov.approve(session=session, principal=self.principal, version_id=version_id, reason=reason,
                             safe_output=safe_output)
            return plain(gov.model_to_dict(mv))

    @op("POST", "/models/{version_id}/convert", tag="models", status=201)
    def convert_model(self, version_id: Id) -> dict[str, Any]:
        """Register a first-wave pickled artifact again as a safe one: a new candidate version of the same name
        and lineage, which needs validation and approval like any other (you become its registrant)."""
        from convergence.pipelines import convert_legacy

        return plain(convert_legacy(principal=self.principal, version_id=version_id))

    @op("POST", "/models/{version_id}/compile", tag="models", status=201)
    def compile_model(self, version_id: Id) -> dict[str, Any]:
        """Compile an eager trading version to onnxruntime graphs (float, and static INT8 for a student), checked
        against it on its holdout and timed; those whose gate passes are registered as its children (candidates
        that need validation and approval; you become their registrant), the rest are named with why."""
        from convergence.pipelines import compile_model

        return plain(compile_model(principal=self.principal, version_id=version_id,
                                   local_files=self.jobs.local))

    @op("POST", "/models/{version_id}/reject", tag="models")
    def reject_model(self, version_id: Id, reason: Text) -> dict[str, Any]:
        """Reject a version before production (final)."""
        from convergence import governance as gov

        with self.writing() as session:
            return plain(gov.model_to_dict(gov.reject(session=session, principal=self.principal,
                                                      version_id=version_id, reason=reason)))

    @op("POST", "/models/{version_id}/promote", tag="models")
    def promote_model(self, version_id: Id, reason: Text | None = None) -> dict[str, Any]:
        """Put an approved version into production; the previous one is retired (not by the registrant)."""
        from convergence import governance as gov

        with self.writing() as session:
            return plain(gov.model_to_dict(gov.promote(session=session, principal=self.principal,
                                                       version_id=version_id, reason=reason)))

    @op("POST", "/models/{version_id}/deploy", tag="models")
    def deploy_model(self, version_id: Id, mode: Literal["shadow", "canary", "promote"], percent: Number | None = None,
                     guards: JsonObject | None = None, min_requests: Id = 500,
                     reason: Text | None = None) -> dict[str, Any]:
        """Serve an approved version beside production as a shadow (scored, never answered) or a canary (PERCENT of
        requests answered) with guards that roll it back; promote finishes it once the guards held for
        min_requests answers (the operator role, not its registrant)."""
        from convergence import governance as gov

        if mode == "promote" and (guards is not None or percent is not None):
            from convergence.platform.errors import InvalidInput

            raise InvalidInput("guards and percent are set when the shadow or canary starts, not at promote")
        with self.writing() as session:
            if mode == "promote":
                d = gov.rollout.promote(session=session, principal=self.principal, version_id=version_id,
                                        reason=reason)
            else:
                d = gov.rollout.deploy(session=session, principal=self.principal, version_id=version_id, mode=mode,
                                       percent=percent, guards=guards, min_requests=min_requests, reason=reason)
            return plain(gov.rollout.to_dict(d))

    @op("GET", "/model-names/{name}/rollout", tag="models")
    def model_rollout(self, name: Name) -> dict[str, Any]:
        """NAME's running shadow or canary: its guards, what the replicas measured, and whether it may be promoted."""
        from convergence import governance as gov

        with self.reading("model.read") as session:
            return plain(gov.rollout.current(session=session, name=name))

    @op("POST", "/model-names/{name}/rollback", tag="models")
    def rollback_model(self, name: Name, reason: Text | None = None,
                       target: Literal["auto", "rollout", "production"] = "auto") -> dict[str, Any]:
        """Roll NAME back. rollout: end its shadow or canary (production answers alone again). production: retire
        its production version and restore the one it replaced. auto: the rollout if one runs, else production
        (asks, right after a rollout ended: a guard may have ended the one you meant)."""
        from convergence import governance as gov

        with self.writing() as session:
            done = gov.rollout.rollback(session=session, principal=self.principal, name=name, reason=reason,
                                        target=target)
            if done is None:
                from convergence.platform.errors import NotFound

                raise NotFound(f"{name} has no active shadow or canary",
                               hint="`cvg models rollback NAME --production` rolls production back")
            if isinstance(done, gov.Deployment):
                return plain({"rolled_back": "rollout", **gov.rollout.to_dict(done)})
            return plain({"rolled_back": "production", **gov.model_to_dict(done)})

    @op("GET", "/models/{version_id}/lineage", tag="models")
    def model_lineage(self, version_id: Id) -> dict[str, Any]:
        """Dataset, run and code, parent teacher, approvals and deployments, recursively."""
        from convergence import governance as gov

        with self.reading("model.read") as session:
            return plain(gov.lineage(session=session, version_id=version_id))

    @op("GET", "/model-names/{name}/history", tag="models")
    def model_history(self, name: Name) -> list[dict[str, Any]]:
        """Every stage change of every version of NAME: who, when, why."""
        from convergence import governance as gov

        with self.reading("model.read") as session:
            return plain(gov.history(session=session, name=name))

    @op("GET", "/model-names/{name}/at", tag="models")
    def model_at(self, name: Name, time: When) -> dict[str, Any]:
        """Which version of NAME was in production at a given time."""
        from convergence import governance as gov
        from convergence.platform.timeparse import parse_time

        when = parse_time(time, option="time")
        with self.reading("model.read") as session:
            mv = gov.in_production_at(session=session, name=name, at=when)
            d = gov.rollout.active_at(session=session, name=name, at=when)
            split = [{"version_id": mv.id, "route": "production",
                      "share": 100.0 - (d.percent if d is not None and d.mode == "canary" else 0.0)}]
            if d is not None:
                split.append({"version_id": d.version_id, "route": d.mode, "deployment_id": d.id,
                              "share": d.percent if d.mode == "canary" else 0.0})
            return plain({"time": when.isoformat(), **gov.model_to_dict(mv), "split": split})

    @op("PUT", "/model-names/{name}/classification", tag="models")
    def classify_model(self, name: Name, tier: Literal["high", "medium", "low"], owner: Ref, validator: Ref,
                       next_review: Name, reason: Text) -> dict[str, Any]:
        """NAME's materiality tier, owner, validator and next review date (the risk or admin role; audited)."""
        from convergence import governance as gov

        with self.writing() as session:
            return gov.pack.classify(session=session, principal=self.principal, name=name, tier=tier, owner=owner,
                                     validator=validator, next_review=next_review, reason=reason)

    @op("GET", "/models/{version_id}/pack", tag="models", kind="stream")
    def model_pack(self, version_id: Id) -> Iterator[bytes]:
        """The version's audit pack, a zip: model card, lineage with principals, evidence, drift, usage, every
        ledger event with its inclusion proof, and a signed manifest. `python governance/auditor.py pack FILE
        --pubkey KEY` verifies it offline. Takes a signed checkpoint first when the newest events need one."""
        import os
        import tempfile

        from convergence import governance as gov
        from convergence.platform.api._trust_ops import _chunks
        from convergence.platform.settings import get_settings

        home = get_settings().home
        home.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=home, prefix=".pack-", suffix=".zip")
        os.close(fd)
        try:
            gov.pack.build_pack(principal=self.principal, version_id=version_id, out=Path(name))
        except BaseException:
            os.unlink(name)
            raise
        return _chunks(Path(name))

    @op("GET", "/pipelines/runs", tag="pipelines")
    def list_runs(self, limit: Limit = 20) -> list[dict[str, Any]]:
        """Recent pipeline runs: status, code version, dataset, trigger."""
        from convergence import governance as gov

        with self.reading("pipeline.read") as session:
            return plain([gov.run_to_dict(r) for r in gov.list_runs(session=session, limit=limit)])
