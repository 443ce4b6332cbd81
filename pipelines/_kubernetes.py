"""Pipeline runs on Kubernetes: KubeRay RayJobs (RayCronJobs when scheduled) where KubeRay is
installed, else batch/v1 Jobs (CronJobs) running the CLI; submitted with the official client.

Every variant runs ``cvg pipelines run FAMILY`` in the project's image with the settings the Helm
chart provides (a ConfigMap and a Secret mapped to ``CVG_`` variables), as a non-root user. The pod acts
as the chart's pipelines service account (its API key is in the Secret); who asked for the run is
recorded in its trigger, never passed as a name the pod would act as. The manifests are pure data, so they are validated offline against the Kubernetes and KubeRay schemas.
Submission loads the in-cluster configuration, else the kubeconfig; without either, one clear line.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shlex
from typing import TYPE_CHECKING, Any

from convergence.platform.errors import InvalidInput, Unavailable
from convergence.platform.settings import get_settings

if TYPE_CHECKING:
    from convergence.governance import Principal


def _requested(requested_by: Principal, trigger: dict[str, Any] | None) -> dict[str, Any]:
    return {"kind": "manual", **(trigger or {}), "requested_by": {"id": requested_by.id, "name": requested_by.name}}


def job_manifest(*, family: str, requested_by: Principal, overrides: dict[str, Any] | None = None,
                 trigger: dict[str, Any] | None = None, image: str | None = None) -> dict[str, Any]:
    """A batch/v1 Job that runs one pipeline; pure data, so it can be checked without an API server."""
    if family not in ("trading", "language"):
        raise InvalidInput(f"unknown pipeline family {family!r}")
    settings = get_settings()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    name = f"cvg-{family}-{stamp}-{secrets.token_hex(2)}"
    trigger = _requested(requested_by, trigger)
    command = _command(family, overrides, trigger)
    labels = {"app.kubernetes.io/name": "convergence", "app.kubernetes.io/component": "pipeline",
              "convergence.dev/family": family,
              "convergence.dev/trigger": (trigger or {}).get("kind", "manual")}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.k8s_namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # the run record says what failed; a blind retry would train twice
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.k8s_service_account,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "pipeline",
                        "image": image or settings.image,
                        "command": command,
                        "envFrom": [{"configMapRef": {"name": settings.k8s_config_map}},
                                    {"secretRef": {"name": settings.k8s_secret}}],
                        "env": [{"name": "CVG_HOME", "value": "/var/lib/convergence"}, *_key_env(settings)],
                        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "home", "mountPath": "/var/lib/convergence"},
                                         {"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _key_env(settings: Any) -> list[dict[str, Any]]:
    """The pipelines service account's API key, from the chart's keys Secret when it names one."""
    if not settings.k8s_keys_secret:
        return []
    return [{"name": "CVG_API_KEY", "valueFrom": {"secretKeyRef": {"name": settings.k8s_keys_secret,
                                                                   "key": "pipelines", "optional": True}}}]


def _command(family: str, overrides: dict[str, Any] | None, trigger: dict[str, Any] | None) -> list[str]:
    command = ["cvg", "pipelines", "run", family, "--json"]
    if overrides:
        command += ["--set", json.dumps(overrides, sort_keys=True)]
    if trigger:
        command += ["--trigger", json.dumps(trigger, sort_keys=True)]
    return command


def rayjob_spec(*, family: str, requested_by: Principal, overrides: dict[str, Any] | None = None,
                trigger: dict[str, Any] | None = None, image: str | None = None) -> dict[str, Any]:
    """A RayJob spec that runs the pipeline as the entrypoint on the chart's RayCluster."""
    settings = get_settings()
    return {
        "entrypoint": shlex.join(_command(family, overrides, _requested(requested_by, trigger))),
        "clusterSelector": {"ray.io/cluster": settings.k8s_ray_cluster},
        "ttlSecondsAfterFinished": 86400,
        "submitterPodTemplate": {"spec": {
            "restartPolicy": "Never",
            "serviceAccountName": settings.k8s_service_account,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "containers": [{"name": "ray-job-submitter", "image": image or settings.image,
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
        }},
    }


def rayjob_manifest(*, family: str, requested_by: Principal, overrides: dict[str, Any] | None = None,
                    trigger: dict[str, Any] | None = None, schedule: str | None = None,
                    image: str | None = None) -> dict[str, Any]:
    """A ray.io/v1 RayJob, or with ``schedule`` a RayCronJob whose template is that RayJob."""
    if family not in ("trading", "language"):
        raise InvalidInput(f"unknown pipeline family {family!r}")
    settings = get_settings()
    spec = rayjob_spec(family=family, requested_by=requested_by, overrides=overrides, trigger=trigger, image=image)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    labels = {"app.kubernetes.io/name": "convergence", "app.kubernetes.io/component": "pipeline",
              "convergence.dev/family": family, "convergence.dev/trigger": (trigger or {}).get("kind", "manual")}
    if schedule:
        return {"apiVersion": "ray.io/v1", "kind": "RayCronJob",
                "metadata": {"name": f"cvg-{family}-schedule", "namespace": settings.k8s_namespace, "labels": labels},
                "spec": {"schedule": schedule, "jobTemplate": spec}}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": f"cvg-{family}-{stamp}-{secrets.token_hex(2)}", "namespace": settings.k8s_namespace,
                         "labels": labels},
            "spec": spec}


def _clients() -> Any:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            config.load_kube_config()
        except (ConfigException, OSError) as exc:
            raise Unavailable(f"no Kubernetes configuration: not in a cluster and no usable kubeconfig ({exc})",
                              hint="run inside the cluster, or set KUBECONFIG") from None
    return client


def kuberay_installed(apis: Any) -> bool:
    """Whether the API server serves the ray.io group (KubeRay's CRDs are installed)."""
    try:
        return any(group.name == "ray.io" for group in apis.get_api_versions().groups)
    except Exception as exc:
        raise Unavailable(f"cannot reach the Kubernetes API to look for KubeRay: {type(exc).__name__}") from exc


def _create_ray(custom: Any, manifest: dict[str, Any], plural: str) -> dict[str, Any]:
    """Create a ray.io/v1 object (RayJob, RayCronJob) with the CustomObjectsApi."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        custom.create_namespaced_custom_object(group="ray.io", version="v1", namespace=namespace, plural=plural,
                                               body=manifest)
    except Exception as exc:  # ApiException or transport errors: all mean "the cluster said no"
        raise Unavailable(f"Kubernetes refused {manifest['kind']} {name} in {namespace}: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    return {"kind": manifest["kind"], "job": name, "namespace": namespace}


def trigger_run(*, family: str, requested_by: Principal, overrides: dict[str, Any] | None = None,
                trigger: dict[str, Any] | None = None, apis: Any = None, batch: Any = None,
                custom: Any = None) -> dict[str, Any]:
    """Start a run on Kubernetes: a RayJob where KubeRay is installed, else a batch/v1 Job.

    ``apis``, ``batch`` and ``custom`` are the client's ApisApi, BatchV1Api and CustomObjectsApi (built from
    the cluster configuration when omitted)."""
    if apis is None:
        client = _clients()
        apis, batch, custom = client.ApisApi(), client.BatchV1Api(), client.CustomObjectsApi()
    if kuberay_installed(apis):
        return _create_ray(custom, rayjob_manifest(family=family, requested_by=requested_by, overrides=overrides,
                                                   trigger=trigger), "rayjobs")
    result = submit_job(job_manifest(family=family, requested_by=requested_by, overrides=overrides, trigger=trigger),
                        api=batch)
    return {"kind": "Job", **result}


def schedule_run(*, family: str, requested_by: Principal, cron: str, overrides: dict[str, Any] | None = None,
                 apis: Any = None, custom: Any = None) -> dict[str, Any]:
    """Create a KubeRay RayCronJob for recurring runs (without KubeRay, the chart's CronJobs do this)."""
    if apis is None:
        client = _clients()
        apis, custom = client.ApisApi(), client.CustomObjectsApi()
    if not kuberay_installed(apis):
        raise Unavailable("KubeRay is not installed in this cluster, so there is no RayCronJob",
                          hint="enable the chart's pipelines.schedules CronJobs instead")
    manifest = rayjob_manifest(family=family, requested_by=requested_by, overrides=overrides, schedule=cron)
    return {**_create_ray(custom, manifest, "raycronjobs"), "schedule": cron}


def submit_job(manifest: dict[str, Any], *, api: Any = None) -> dict[str, Any]:
    """Create the Job; ``api`` is a BatchV1Api (built from in-cluster config or kubeconfig when omitted)."""
    if api is None:
        api = _clients().BatchV1Api()
    namespace = manifest["metadata"]["namespace"]
    try:
        created = api.create_namespaced_job(namespace=namespace, body=manifest)
    except Exception as exc:  # ApiException, urllib3 transport errors: all mean "the cluster said no"
        raise Unavailable(f"Kubernetes refused or could not take Job {manifest['metadata']['name']} in {namespace}: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    meta = getattr(created, "metadata", None)
    return {"job": getattr(meta, "name", manifest["metadata"]["name"]), "namespace": namespace}
