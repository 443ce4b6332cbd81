"""Pipeline runs as Kubernetes Jobs: the manifest, and its submission with the official client.

The Job runs ``cvg pipelines run FAMILY`` in the project's image with the settings the Helm chart
provides (a ConfigMap and a Secret mapped to ``CVG_`` variables), as a non-root user with a
read-only root filesystem. Submission loads the in-cluster configuration, else the kubeconfig;
without either, it fails with one clear line.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from convergence.platform.errors import InvalidInput, Unavailable
from convergence.platform.settings import get_settings


def job_manifest(*, family: str, actor: str, overrides: dict[str, Any] | None = None,
                 trigger: dict[str, Any] | None = None, image: str | None = None) -> dict[str, Any]:
    """A batch/v1 Job that runs one pipeline; pure data, so it can be checked without an API server."""
    if family not in ("trading", "language"):
        raise InvalidInput(f"unknown pipeline family {family!r}")
    settings = get_settings()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    name = f"cvg-{family}-{stamp}-{secrets.token_hex(2)}"
    command = ["cvg", "pipelines", "run", family, "--as", actor, "--json"]
    if overrides:
        command += ["--set", json.dumps(overrides, sort_keys=True)]
    if trigger:
        command += ["--trigger", json.dumps(trigger, sort_keys=True)]
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
                        "env": [{"name": "CVG_HOME", "value": "/var/lib/convergence"}],
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


def submit_job(manifest: dict[str, Any], *, api: Any = None) -> dict[str, Any]:
    """Create the Job; ``api`` is a BatchV1Api (built from in-cluster config or kubeconfig when omitted)."""
    if api is None:
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
        api = client.BatchV1Api()
    namespace = manifest["metadata"]["namespace"]
    try:
        created = api.create_namespaced_job(namespace=namespace, body=manifest)
    except Exception as exc:  # ApiException, urllib3 transport errors: all mean "the cluster said no"
        raise Unavailable(f"Kubernetes refused or could not take Job {manifest['metadata']['name']} in {namespace}: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    meta = getattr(created, "metadata", None)
    return {"job": getattr(meta, "name", manifest["metadata"]["name"]), "namespace": namespace}
