"""Pipeline Jobs for Kubernetes. No API server can run here: the manifest is checked against the official
client's V1Job model, and submission goes to `RecordingBatchApi`, a recorded fake named as such."""

from __future__ import annotations

import json
import shlex

import pytest

from convergence.pipelines import job_manifest, submit_job
from convergence.platform.errors import InvalidInput, Unavailable
from tests.people import detached, person


class RecordingBatchApi:
    """FAKE BatchV1Api (no Kubernetes API server can run here): records create_namespaced_job calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_namespaced_job(self, namespace: str, body: dict) -> object:
        from kubernetes.client import V1Job, V1ObjectMeta

        self.calls.append((namespace, body))
        return V1Job(metadata=V1ObjectMeta(name=body["metadata"]["name"], namespace=namespace))


class RecordingCustomObjectsApi:
    """FAKE CustomObjectsApi (no API server here): records create_namespaced_custom_object calls."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def create_namespaced_custom_object(self, **kwargs: object) -> dict:
        self.calls.append(kwargs)
        return dict(kwargs["body"])  # type: ignore[arg-type]


class FakeApisApi:
    """FAKE ApisApi: answers API discovery as a cluster with (or without) KubeRay's ray.io group would."""

    def __init__(self, kuberay: bool) -> None:
        self.kuberay = kuberay

    def get_api_versions(self) -> object:
        from kubernetes.client import V1APIGroup, V1APIGroupList, V1GroupVersionForDiscovery

        names = ["apps", "batch"] + (["ray.io"] if self.kuberay else [])
        gv = [V1GroupVersionForDiscovery(group_version=f"{n}/v1", version="v1") for n in names]
        return V1APIGroupList(groups=[V1APIGroup(name=n, versions=[g]) for n, g in zip(names, gv)])


def fake_cluster(kuberay: bool) -> dict:
    return {"apis": FakeApisApi(kuberay), "batch": RecordingBatchApi(), "custom": RecordingCustomObjectsApi()}


def _as_v1job(manifest: dict):  # type: ignore[no-untyped-def]
    """Deserialize through the official client: unknown or mistyped fields do not survive this."""
    from kubernetes.client import ApiClient

    class _Response:
        data = json.dumps(manifest)

    return ApiClient().deserialize(_Response(), "V1Job")


def test_manifest_is_a_valid_locked_down_job(monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_IMAGE", "registry.example/convergence:1.2.3")
    monkeypatch.setenv("CVG_K8S_NAMESPACE", "quant")
    get_settings.cache_clear()
    trigger = {"kind": "drift", "alert_ids": [4, 5], "model": "es-trading-student"}
    manifest = job_manifest(family="trading", requested_by=detached("monitor", 7), overrides={"eval": {"folds": 2}},
                            trigger=trigger)
    get_settings.cache_clear()
    job = _as_v1job(manifest)
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert job.metadata.namespace == "quant" and job.spec.backoff_limit == 0
    assert pod.service_account_name == "convergence-pipelines" and pod.restart_policy == "Never"
    assert pod.security_context.run_as_non_root and container.security_context.read_only_root_filesystem
    assert container.security_context.capabilities.drop == ["ALL"]
    assert container.image == "registry.example/convergence:1.2.3"
    # the pod acts as its service account (CVG_API_KEY from the Secret); who asked is recorded, never acted as
    assert container.command[:5] == ["cvg", "pipelines", "run", "trading", "--json"] and "--as" not in container.command
    assert json.loads(container.command[container.command.index("--trigger") + 1]) == {
        **trigger, "requested_by": {"id": 7, "name": "monitor"}}
    assert json.loads(container.command[container.command.index("--set") + 1]) == {"eval": {"folds": 2}}
    assert [e.config_map_ref.name if e.config_map_ref else e.secret_ref.name for e in container.env_from] == [
        "convergence-config", "convergence-secrets"]
    assert job.metadata.labels["convergence.dev/trigger"] == "drift"


def test_submission_goes_through_the_client_call() -> None:
    fake = RecordingBatchApi()
    manifest = job_manifest(family="trading", requested_by=detached("ops"))
    result = submit_job(manifest, api=fake)
    assert fake.calls == [("convergence", manifest)] and result == {"job": manifest["metadata"]["name"],
                                                                   "namespace": "convergence"}


def test_without_a_cluster_the_error_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Unavailable, match="no Kubernetes configuration"):
        submit_job(job_manifest(family="trading", requested_by=detached("ops")))
    with pytest.raises(InvalidInput, match="unknown pipeline family"):
        job_manifest(family="crypto", requested_by=detached("ops"))


def test_drift_retraining_on_kubernetes_submits_the_same_job(db_url: str, model_file, evidence_file) -> None:
    from convergence import governance as gov
    from convergence.pipelines import retrain_after_alerts
    from convergence.platform.db import session_scope

    with session_scope() as s:
        mv = gov.register_model(session=s, principal=person("quant"), name="es-trading-student", artifact=model_file,
                                family="trading", role="student", params={"config": {"eval": {"folds": 3}}})
        gov.validate(session=s, version_id=mv.id, principal=person("val"), evidence=evidence_file)
        gov.approve(session=s, version_id=mv.id, principal=person("boss"), reason="ok")
        gov.promote(session=s, version_id=mv.id, principal=person("ops"))
    for kuberay in (False, True):
        fakes = fake_cluster(kuberay)
        result = retrain_after_alerts(name="es-trading-student", alert_ids=[7], principal=person("monitor"), kubernetes=True,
                                      api=fakes)
        if kuberay:
            [call] = fakes["custom"].calls
            assert (call["group"], call["plural"], result["kind"]) == ("ray.io", "rayjobs", "RayJob")
            command = shlex.split(call["body"]["spec"]["entrypoint"])
        else:
            [(namespace, body)] = fakes["batch"].calls
            assert result["kind"] == "Job" and result["job"] == body["metadata"]["name"]
            command = body["spec"]["template"]["spec"]["containers"][0]["command"]
        assert json.loads(command[command.index("--trigger") + 1])["alert_ids"] == [7]
        assert json.loads(command[command.index("--set") + 1])["eval"]["folds"] == 3  # the production config reused
    with session_scope(write=False) as s:
        assert gov.query_events(session=s, action="drift.retrain_requested")[0].payload_obj["where"] == "kubernetes"


def test_scheduled_runs_are_raycronjobs_where_kuberay_is() -> None:
    from convergence.pipelines import schedule_run

    fakes = fake_cluster(kuberay=True)
    result = schedule_run(family="trading", requested_by=detached("ops"), cron="0 6 * * 1-5", apis=fakes["apis"], custom=fakes["custom"])
    [call] = fakes["custom"].calls
    assert (call["plural"], call["body"]["kind"], result["schedule"]) == ("raycronjobs", "RayCronJob", "0 6 * * 1-5")
    without = fake_cluster(kuberay=False)
    with pytest.raises(Unavailable, match="KubeRay is not installed"):
        schedule_run(family="trading", requested_by=detached("ops"), cron="0 6 * * *", apis=without["apis"], custom=without["custom"])
