"""The Helm chart, with a real helm 3 binary and real schemas: Kubernetes' (kubernetes-validate, offline)
and KubeRay's own CRD schema for the RayCluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helm.conftest import CHART
from tests.people import detached

K8S_VERSION = "1.30.0"
CRDS = Path(__file__).parent / "crds"
EVERYTHING = CHART / "ci" / "everything-values.yaml"


def _crd_schema(file: str, version: str = "v1") -> dict:
    crd = yaml.safe_load((CRDS / file).read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def _validate(doc: dict) -> None:
    import kubernetes_validate

    if doc["apiVersion"] == "ray.io/v1":
        crd = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
               "RayCronJob": "ray.io_raycronjobs.yaml"}[doc["kind"]]
        jsonschema.validate(doc, _crd_schema(crd))
    elif doc["apiVersion"].startswith("monitoring.coreos.com"):
        assert doc["kind"] == "ServiceMonitor" and doc["spec"]["endpoints"]  # no offline schema for this CRD
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values", [[], ["-f", str(EVERYTHING)]], ids=["defaults", "gpu-external-db-everything"])
def test_lint_template_and_every_manifest_validates(helm: str, render, values: list[str]) -> None:
    lint = subprocess.run([helm, "lint", str(CHART), *values], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    code, docs, err = render(*values)
    assert code == 0, err
    for doc in docs:
        _validate(doc)
    kinds = {d["kind"] for d in docs}
    assert {"Job", "ConfigMap", "RayCluster", "CronJob", "Role", "RoleBinding", "ServiceAccount", "Deployment",
            "Service", "NetworkPolicy"} <= kinds  # the API and the NetworkPolicy are on by default
    runs = [d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] for d in docs
            if d["kind"] == "CronJob" and d["metadata"]["name"].endswith(("-pipeline-trading", "-pipeline-language"))]
    assert sorted(a[:3] for a in runs) == [["pipelines", "run", "language"], ["pipelines", "run", "trading"]]
    if values:
        assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
                "ServiceMonitor", "Secret"} <= kinds


def _pods(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "Job"):
            out.append((d["metadata"]["name"], spec["template"]["spec"]))
        elif d["kind"] == "CronJob":
            out.append((d["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]))
        elif d["kind"] == "RayCluster":
            out.append((d["metadata"]["name"] + "-head", spec["headGroupSpec"]["template"]["spec"]))
            out += [(d["metadata"]["name"] + "-" + g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return out


def test_security_defaults_and_gpu_requests(render) -> None:
    code, docs, err = render("-f", str(EVERYTHING))
    assert code == 0, err
    for name, pod in _pods(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert c["image"] == "registry.example/convergence:0.1.0", name
    gpu = {name: c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for name, pod in _pods(docs)
           for c in pod["containers"]}
    assert gpu["cvg-convergence-ray-gpu"] == 2 and gpu["cvg-convergence-serve-trading"] == 1
    serve = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-serve-trading"))
    container = serve["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:4] == ["serve", "trading", "--host", "0.0.0.0"]  # reachable from the Service
    assert {"name": "BENTOML_HOME", "value": "/tmp/bentoml"} in container["env"]  # writable with a read-only root
    migrate = next(d for d in docs if d["kind"] == "Job")
    assert "pre-upgrade" in migrate["metadata"]["annotations"]["helm.sh/hook"]
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]
    env = {e["name"]: e for e in migrate["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CVG_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "convergence-db"
    # least privilege: one Role, bound only to the trigger; only that pod gets an API token
    role = next(d for d in docs if d["kind"] == "Role")
    assert {r["apiGroups"][0]: r["resources"] for r in role["rules"]} == {"batch": ["jobs"], "ray.io": ["rayjobs"]}
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert [s["name"] for s in binding["subjects"]] == ["cvg-convergence-trigger"]
    tokens = {name for name, pod in _pods(docs) if pod.get("automountServiceAccountToken")}
    assert tokens == {"cvg-convergence-drift-es-trading-student"}  # retraining creates Jobs


def test_secret_values_are_not_in_the_defaults(render) -> None:
    code, docs, err = render()
    assert code == 0, err
    assert not [d for d in docs if d["kind"] == "Secret"]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    # (CVG_K8S_SECRET and CVG_K8S_KEYS_SECRET only name Secrets; they hold nothing secret)
    assert not any("url" in k.lower() or "secret" in k.lower() for k in configmap["data"] if not k.startswith("CVG_K8S_"))


@pytest.mark.parametrize("values,message", [
    ({"serving": {"trading": {"enabled": True, "replicas": -1}}}, "serving.trading.replicas: Must be greater than or equal to 0"),
    ({"rayCluster": {"gpuWorkers": {"enabled": True, "gpus": 1.5}}}, "rayCluster.gpuWorkers.gpus: Invalid type. Expected: integer"),
    ({"database": {"embedded": False}}, "database.existingSecret: String length must be greater than or equal to 1"),
    ({"database": {"embedded": False, "existingSecret": "db"}},
     "secrets.existingSecret: String length must be greater than or equal to 1"),  # pods share no home then
    ({"drift": {"window": "an hour"}}, "drift.window"),
    ({"auth": {"oidc": {"issuer": "login.example.com"}}}, "auth.oidc.issuer: Does not match pattern"),
    ({"auth": {"oidc": {"issuer": "https://login.example.com", "audience": ""}}}, "auth.oidc.audience"),
    ({"networkPolicy": {"enabled": "yes"}}, "networkPolicy.enabled: Invalid type. Expected: boolean"),
    ({"ledger": {"s3": {"url": "https://bucket"}}}, "ledger.s3.url: Does not match pattern"),
])
def test_invalid_values_fail_with_the_schema_message(render, tmp_path: Path, values: dict, message: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(values))
    code, _, err = render("-f", str(file))
    assert code != 0 and message in err, err


def test_what_the_trigger_would_submit_validates() -> None:
    """The Job, RayJob and RayCronJob `cvg pipelines trigger|schedule --kubernetes` (and retraining) build."""
    from convergence.pipelines import job_manifest, rayjob_manifest

    trigger = {"kind": "drift", "alert_ids": [1]}
    ops = detached("ops")
    job = job_manifest(family="trading", requested_by=ops, trigger=trigger)
    rayjob = rayjob_manifest(family="trading", requested_by=ops, trigger=trigger, overrides={"eval": {"folds": 2}})
    cron = rayjob_manifest(family="trading", requested_by=ops, schedule="0 6 * * 1-5")
    for manifest in (job, rayjob, cron):
        _validate(manifest)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "convergence-pipelines"
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": "convergence-ray"}
    assert rayjob["spec"]["entrypoint"].startswith("cvg pipelines run trading --json")
    assert "--as" not in rayjob["spec"]["entrypoint"] and '"requested_by"' in rayjob["spec"]["entrypoint"]
    assert cron["spec"]["schedule"] == "0 6 * * 1-5" and cron["spec"]["jobTemplate"]["entrypoint"]


def _doc(docs: list[dict], kind: str, suffix: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def test_the_api_is_deployed_authenticated_and_fenced_by_default(render) -> None:
    code, docs, err = render()
    assert code == 0, err
    api = _doc(docs, "Deployment", "-api")["spec"]["template"]["spec"]
    assert api["containers"][0]["args"][:4] == ["api", "--host", "0.0.0.0", "--port"]
    assert api["automountServiceAccountToken"] is False and api["serviceAccountName"].endswith("-api")
    assert api["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert _doc(docs, "Service", "-api")["spec"]["ports"][0]["targetPort"] == "http"
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert "CVG_ACTOR" not in config  # nobody acts as a typed name in a cluster
    assert config["CVG_SERVE_AUTH"] == "required" and config["CVG_API_MAX_RUNS"] == "0"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"] if "ports" in r] == [8000]


def test_oidc_settings_and_workload_keys_come_from_values(render) -> None:
    code, docs, err = render("-f", str(EVERYTHING))
    assert code == 0, err
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert (config["CVG_OIDC_ISSUER"], config["CVG_OIDC_AUDIENCE"], config["CVG_OIDC_ROLES_CLAIM"],
            config["CVG_OIDC_CLIENT_ID"]) == ("https://login.example.com/realms/quant", "urn:convergence:api",
                                              "groups", "cvg-cli")
    assert config["CVG_K8S_KEYS_SECRET"] == "convergence-keys"

    def key_of(pod: dict) -> str | None:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        ref = env.get("CVG_API_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
        return ref.get("key") if ref.get("name") == "convergence-keys" else None

    keys = {name.rsplit("-", 1)[-1] if "pipeline" not in name else "pipeline": key_of(pod)
            for name, pod in _pods(docs)}
    assert keys["pipeline"] == "pipelines" and keys["webhooks"] == "deliverer" and keys["api"] is None
    assert key_of(_doc(docs, "CronJob", "-drift-es-trading-student")["spec"]["jobTemplate"]["spec"]["template"]
                  ["spec"]) == "monitor"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    api_rule = next(r for r in policy["spec"]["ingress"] if r.get("ports", [{}])[0].get("port") == 8000)
    assert api_rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "quant"}}}]


def test_checkpoints_are_scheduled_signed_only_where_they_are_made_and_published_outside(render) -> None:
    code, docs, err = render("-f", str(EVERYTHING))
    assert code == 0, err
    cron = _doc(docs, "CronJob", "-ledger-checkpoint")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["audit", "checkpoint", "--if-due", "--json"]

    def signing_key(spec: dict) -> dict | None:
        env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
        return env.get("CVG_LEDGER_KEY", {}).get("valueFrom", {}).get("secretKeyRef")

    assert signing_key(pod) == {"name": "convergence-ledger-key", "key": "ledger.key"}
    assert signing_key(_doc(docs, "Deployment", "-api")["spec"]["template"]["spec"]) is not None
    others = [name for name, spec in _pods(docs) if signing_key(spec) and not name.endswith(("-api", "-checkpoint"))]
    assert others == []  # pipelines, serving, the deliverer never hold the ledger's key
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert (config["CVG_LEDGER_ANCHOR_S3"], config["CVG_LEDGER_ANCHOR_DIR"], config["CVG_LEDGER_CHECKPOINT_EVENTS"]) == (
        "s3://ledger-checkpoints/prod", "/var/lib/convergence/worm", "5000")
    code, docs, err = render()
    assert code == 0 and not [d for d in docs if d["metadata"]["name"].endswith("-ledger-checkpoint")]


def test_the_secret_key_reaches_only_what_seals_or_opens_webhook_secrets(render) -> None:
    code, docs, err = render("-f", str(EVERYTHING))
    assert code == 0, err

    def secret_key(spec: dict) -> dict | None:
        env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
        return env.get("CVG_SECRET_KEY", {}).get("valueFrom", {}).get("secretKeyRef")

    holders = sorted(name.removeprefix("cvg-convergence-") for name, spec in _pods(docs) if secret_key(spec))
    # what seals (the API, migration 0010) or opens (delivering: the deliverer, its sweep, drift checks' alerts)
    assert holders == ["api", "drift-es-trading-student", "migrate", "webhooks", "webhooks-sweep"], holders
    assert secret_key(_doc(docs, "Deployment", "-api")["spec"]["template"]["spec"]) == {
        "name": "convergence-secret-key", "key": "secret.key"}
    code, docs, err = render()
    assert code == 0 and not [n for n, spec in _pods(docs) if secret_key(spec)]  # no Secret named: none mounted
