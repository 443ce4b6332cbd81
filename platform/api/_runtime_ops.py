"""Operations on what runs: kill switches, budgets and usage, drift checks, webhooks, pipeline runs and
Kubernetes triggers."""

from __future__ import annotations

from typing import Any, Literal

from convergence.platform.api._base import OperationsBase, plain, times
from convergence.platform.api._spec import (
    Family,
    Id,
    JsonObject,
    Limit,
    Name,
    Number,
    Text,
    When,
    op,
)
from convergence.platform.errors import ConvergenceError

Metric = Literal["cpu_hours", "gpu_hours", "kwh", "gco2e"]


class RuntimeOps(OperationsBase):
    # --- kill switches ------------------------------------------------------------------------

    @op("POST", "/kill-switches/{name}/kill", tag="serving")
    def kill(self, name: Name, reason: Text, safe_output: bool = False) -> dict[str, Any]:
        """Stop NAME on every replica within a second: 503 with the reason, or (safe_output) the value its
        approver fixed. Needs the risk role."""
        from convergence import governance as gov

        with self.writing() as session:
            switch = gov.kill(session=session, principal=self.principal, name=name, reason=reason,
                              safe_output=safe_output)
            return gov.switch_to_dict(switch)

    @op("POST", "/kill-switches/{name}/resume", tag="serving")
    def resume(self, name: Name, reason: Text = "resumed") -> dict[str, Any]:
        """Let NAME serve again. Needs the risk role."""
        from convergence import governance as gov

        with self.writing() as session:
            return gov.switch_to_dict(gov.resume(session=session, principal=self.principal, name=name, reason=reason))

    @op("GET", "/kill-switches", tag="serving")
    def kill_switches(self) -> list[dict[str, Any]]:
        """Every kill switch ever set: which models are stopped, why, by whom."""
        from convergence import governance as gov

        with self.reading("serving.read") as session:
            return [gov.switch_to_dict(k) for k in gov.list_switches(session=session)]

    # --- budgets ------------------------------------------------------------------------------

    @op("POST", "/budgets", tag="budgets")
    def set_budget(self, metric: Metric, period: Name, hard: Number, soft: Number | None = None,
                   project: Name = "default", family: Literal["trading", "language", "*"] = "*",
                   reason: Text | None = None) -> dict[str, Any]:
        """Create or lower a budget (applies now), or request a raise (someone else must approve it)."""
        from convergence import governance as gov

        with self.writing() as session:
            budget, change = gov.set_budget(session=session, principal=self.principal, project=project,
                                            metric=metric, period=period, hard=hard, soft=soft, family=family,
                                            reason=reason)
            return {"budget_id": budget.id, "hard": budget.hard_limit, "soft": budget.soft_limit,
                    "pending_change_id": change.id if change else None}

    @op("POST", "/budget-changes/{change_id}/approve", tag="budgets")
    def approve_budget_change(self, change_id: Id, reason: Text | None = None) -> dict[str, Any]:
        """Apply a requested raise (not by its requester)."""
        return self._decide_change(change_id, True, reason)

    @op("POST", "/budget-changes/{change_id}/reject", tag="budgets")
    def reject_budget_change(self, change_id: Id, reason: Text | None = None) -> dict[str, Any]:
        """Refuse a requested raise (not by its requester)."""
        return self._decide_change(change_id, False, reason)

    def _decide_change(self, change_id: int, approve: bool, reason: str | None) -> dict[str, Any]:
        from convergence import governance as gov

        with self.writing() as session:
            change = gov.decide_change(session=session, principal=self.principal, change_id=change_id,
                                       approve=approve, reason=reason)
            return {"change_id": change.id, "status": change.status, "budget_id": change.budget_id,
                    "decided_by": change.decided_by}

    @op("GET", "/budgets", tag="budgets")
    def show_budgets(self, project: Name | None = None) -> dict[str, Any]:
        """Every budget with used vs limit and pending raises, and the budget alerts."""
        from convergence import governance as gov

        with self.reading("budget.read") as session:
            rows = gov.budget_status(session=session, project=project)
            alerts = [{"id": a.id, "message": a.message, "count": a.count, "first_seen": a.first_seen.isoformat()}
                      for a in gov.list_alerts(session=session, kind="budget.soft_limit")]
            return plain({"budgets": rows, "alerts": alerts})

    @op("GET", "/usage", tag="budgets")
    def usage_report(self, project: Name | None = None, since: When | None = None, until: When | None = None,
                     by: Literal["run", "step", "model", "family"] = "run") -> list[dict[str, Any]]:
        """Compute and energy used, summed by run, step, model version or family."""
        from convergence import governance as gov
        since_t, until_t = times(since, until)
        with self.reading("budget.read") as session:
            return plain(gov.usage_report(session=session, project=project, since=since_t, until=until_t, by=by))

    # --- drift --------------------------------------------------------------------------------

    @op("POST", "/drift/checks", tag="drift", status=201)
    def check_drift(self, name: Name, window: When = "1h", since: When | None = None, until: When = "now",
                    evidently: bool = True, deliver: bool = True, retrain: bool = False,
                    kubernetes: bool = False) -> dict[str, Any]:
        """Compare the production version's recent predictions with its reference profile; alerts are
        deduplicated and delivered as signed webhooks; ``retrain`` starts a run when a new alert is raised."""
        from convergence import governance as gov
        from convergence.platform.timeparse import parse_time

        end = parse_time(until, option="--until")
        start = parse_time(since, option="--since") if since else parse_time(window, now=end, option="--window")
        with self.writing() as session:
            report, alerts = gov.check_drift(session=session, principal=self.principal, name=name, since=start,
                                             until=end, evidently=evidently)
            data = gov.report_to_dict(report)
            data["new_alerts"] = [{"id": a.id, "severity": a.severity, "message": a.message} for a in alerts]
        if deliver:
            data["webhooks"] = gov.deliver_until_idle(deadline_s=10)
        if retrain and alerts:
            try:  # the report and its alerts are committed: a retraining that cannot start says so beside them
                data["retraining"] = self.jobs.retrain(name=name, alert_ids=[a["id"] for a in data["new_alerts"]],
                                                       principal=self.principal, kubernetes=kubernetes)
            except ConvergenceError as exc:
                data["retraining"] = exc.to_dict()
        return plain(data)

    @op("GET", "/drift/reports/{report_id}", tag="drift")
    def show_drift(self, report_id: Id) -> dict[str, Any]:
        """One drift report with every column's statistics."""
        from convergence import governance as gov

        with self.reading("drift.read") as session:
            return plain(gov.report_to_dict(gov.get_report(session=session, report_id=report_id)))

    @op("GET", "/model-names/{name}/drift", tag="drift")
    def drift_history(self, name: Name, limit: Limit = 50) -> list[dict[str, Any]]:
        """Past drift checks of every version of NAME, newest first."""
        from convergence import governance as gov

        with self.reading("drift.read") as session:
            return plain([gov.report_to_dict(r) for r in gov.drift_history(session=session, name=name, limit=limit)])

    # --- webhooks -----------------------------------------------------------------------------

    @op("POST", "/webhooks/subscriptions", tag="webhooks", status=201)
    def subscribe(self, url: Text, events: list[Name] = ["drift.alert"],  # noqa: B006 - validated copy
                  format: Literal["generic", "slack"] = "generic", secret: Text | None = None) -> dict[str, Any]:
        """Subscribe a receiver; deliveries are signed with the secret, which this answer shows once."""
        from convergence import governance as gov

        with self.writing() as session:
            sub = gov.subscribe(session=session, principal=self.principal, url=url, events=list(events), fmt=format,
                                secret=secret)
            return {"id": sub.id, "url": sub.url, "events": sub.event_types, "format": sub.format,
                    "secret": sub.plain_secret}

    @op("GET", "/webhooks/subscriptions", tag="webhooks")
    def list_subscriptions(self, include_inactive: bool = False) -> list[dict[str, Any]]:
        """Subscriptions (never their secrets)."""
        from convergence import governance as gov

        with self.reading("webhook.read") as session:
            return gov.list_subscriptions(session=session, include_inactive=include_inactive)

    @op("DELETE", "/webhooks/subscriptions/{subscription_id}", tag="webhooks")
    def unsubscribe(self, subscription_id: Id) -> dict[str, Any]:
        """Stop delivering to a receiver; its pending deliveries are dead-lettered."""
        from convergence import governance as gov

        with self.writing() as session:
            sub = gov.unsubscribe(session=session, principal=self.principal, subscription_id=subscription_id)
            return {"id": sub.id, "url": sub.url, "active": sub.active}

    @op("POST", "/webhooks/reseal", tag="webhooks")
    def reseal_secrets(self) -> dict[str, Any]:
        """Seal with the current key every secret still plain or sealed with a key it replaced (never shown)."""
        from convergence import governance as gov

        with self.writing() as session:
            return gov.reseal_secrets(session=session, principal=self.principal)

    @op("GET", "/webhooks/deliveries", tag="webhooks")
    def list_deliveries(self, failed: bool = False, limit: Limit = 100) -> list[dict[str, Any]]:
        """Recent deliveries with status, attempts and the last error."""
        from convergence import governance as gov

        with self.reading("webhook.read") as session:
            return [gov.delivery_to_dict(d) for d in gov.list_deliveries(session=session, failed=failed, limit=limit)]

    @op("POST", "/webhooks/deliver", tag="webhooks")
    def deliver_webhooks(self) -> dict[str, int]:
        """Deliver what is due now (the Helm chart's worker does this continuously)."""
        from convergence import governance as gov

        self.check("webhook.deliver")
        return gov.deliver_until_idle(deadline_s=10)

    @op("POST", "/webhooks/deliveries/{delivery_id}/redeliver", tag="webhooks")
    def redeliver(self, delivery_id: Id) -> dict[str, Any]:
        """Queue a dead-lettered (or delivered) delivery again, with the same event id, and deliver."""
        from convergence import governance as gov

        with self.writing() as session:
            gov.redeliver(session=session, principal=self.principal, delivery_id=delivery_id)
        return {"delivery_id": delivery_id, **gov.deliver_until_idle(deadline_s=10)}

    @op("POST", "/webhooks/test", tag="webhooks")
    def test_webhook(self, url: Text, secret: Text) -> dict[str, Any]:
        """Send one signed test event now; ``ok`` says whether the receiver answered 2xx."""
        from convergence import governance as gov

        self.check("webhook.manage")
        return gov.send_test(url, secret)

    # --- pipelines ----------------------------------------------------------------------------

    @op("POST", "/pipelines/{family}/runs", tag="pipelines", status=202)
    def run_pipeline(self, family: Family, overrides: JsonObject | None = None, project: Name = "default",
                     trigger: JsonObject | None = None) -> dict[str, Any]:
        """Run a pipeline (registers candidates when its gates pass). The API answers at once with a job
        to follow; the CLI without the API runs it in the foreground."""
        from convergence import governance as gov
        from convergence.pipelines import load_config

        cfg = load_config(None, overrides, family)  # a bad override is refused before anything starts
        with self.reading("pipeline.run") as session:  # refused here, before a job starts, as start_run would
            gov.check_trigger(session=session, principal=self.principal, trigger=trigger)
        return plain(self.jobs.run(family=family, cfg=cfg, principal=self.principal, project=project,
                                   trigger=trigger))

    @op("GET", "/pipelines/jobs/{job_id}", tag="pipelines")
    def pipeline_job(self, job_id: Id) -> dict[str, Any]:
        """A pipeline job started through the API: status, progress, and its summary when done."""
        self.check("pipeline.read")
        return plain(self.jobs.get(job_id))

    @op("POST", "/pipelines/{family}/trigger", tag="pipelines")
    def trigger_pipeline(self, family: Family, overrides: JsonObject | None = None, dry_run: bool = False,
                         rayjob: bool = True) -> dict[str, Any]:
        """Start a run on Kubernetes: a KubeRay RayJob where KubeRay is installed, else a batch/v1 Job
        (``dry_run``: the manifest, nothing submitted)."""
        from convergence import pipelines
        from convergence.pipelines import load_config

        load_config(None, overrides, family)
        self.check("pipeline.trigger")
        if dry_run:
            build = pipelines.rayjob_manifest if rayjob else pipelines.job_manifest
            return build(family=family, requested_by=self.principal, overrides=overrides)
        return self.jobs.trigger(family=family, principal=self.principal, overrides=overrides)
