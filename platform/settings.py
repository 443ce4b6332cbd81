"""Settings: one pydantic-settings class, environment prefix ``CVG_``, read through ``get_settings()``.

Read when first needed and cached, never at import time; tests change the environment and call
``get_settings.cache_clear()``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


def _default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("convergence", appauthor=False))


class Settings(BaseSettings):
    """Everything configurable, with the embedded defaults a laptop needs."""

    model_config = SettingsConfigDict(env_prefix="CVG_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data directory (SQLite file, artifacts).")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in home.")
    artifact_store: str | None = Field(default=None, description="Artifact store URL; default: file:// in home.")
    actor: str | None = Field(default=None, description="Sandbox databases only: the name to act as when --as is "
                              "not given.")
    api_url: str | None = Field(default=None, description="Control-plane API (http://host:8000): every cvg command "
                                "becomes its client. Unset: cvg works on the database directly.")
    api_key: str | None = Field(default=None, description="A service account's API key (cvg_…), for the API or, "
                                "without CVG_API_URL, checked against the database.")
    token: str | None = Field(default=None, description="An OIDC access token (a JWT from CVG_OIDC_ISSUER).")
    api_timeout_s: float = Field(default=60.0, gt=0, description="How long the CLI waits for the API.")
    api_max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest JSON body the API accepts.")
    api_max_upload_bytes: int = Field(default=2 << 30, ge=1024, description="Largest artifact or evidence upload.")
    api_max_runs: int = Field(default=1, ge=0, description="Pipeline runs the API server runs at once (0: none; "
                              "use Kubernetes triggers).")
    auth_cache_s: float = Field(default=2.0, ge=0, description="How long a checked API key and a principal's "
                                "roles are reused before the database is asked again (revocation delay).")
    oidc_issuer: str | None = Field(default=None, description="OpenID Provider whose access tokens are accepted "
                                    "(discovery at ISSUER/.well-known/openid-configuration).")
    oidc_audience: str | None = Field(default=None, description="The aud a token must carry (this API's identifier).")
    oidc_roles_claim: str | None = Field(default=None, description="Claim listing roles or groups, e.g. groups; "
                                         "dots reach nested claims (realm_access.roles).")
    oidc_role_prefix: str = Field(default="", description="Prefix of role values in the claim (e.g. cvg-).")
    oidc_name_claim: str = Field(default="preferred_username", description="Claim used as the display name.")
    oidc_client_id: str | None = Field(default=None, description="Public client for `cvg login` (device flow).")
    oidc_leeway_s: float = Field(default=30.0, ge=0, le=300, description="Clock skew allowed on exp and nbf.")
    oidc_jwks_refresh_s: float = Field(default=10.0, ge=0, description="Least time between JWKS refetches "
                                       "caused by unknown key ids.")
    console_client_id: str | None = Field(default=None, description="Public OIDC client the console (/ui) signs "
                                          "people in with: authorization code with PKCE, redirect URI "
                                          "CONSOLE_URL/ui/callback. Unset: the console takes API keys only.")
    console_url: str | None = Field(default=None, description="The console's external base URL (https://cvg.example) "
                                    "when a proxy sits in front of `cvg api`; default: the URL it was reached at.")
    console_session_s: float = Field(default=8 * 3600, ge=60, le=7 * 86400, description="How long a console "
                                     "session signed in with an API key lasts (an OIDC one ends with its token).")
    console_verify_s: float = Field(default=60.0, ge=0, le=86400, description="How long the console's ledger page "
                                    "reuses a full verification of the chain (each reads every event).")
    debug: bool = Field(default=False, description="Show the traceback behind an error instead of one line.")
    helm: str | None = Field(default=None, description="The helm binary `cvg doctor` checks (default: on PATH).")
    serve_model: str | None = Field(default=None, description="Which model name a serving replica loads "
                                    "(`cvg serve` sets it; default: the family's model in production).")
    serve_version: int | None = Field(default=None, ge=1, description="The exact version a replica loads "
                                      "(`cvg serve` pins it, so every worker serves the same one).")
    serve_auth: str = Field(default="off", pattern="^(off|required)$", description="required: /predict and "
                            "/generate need an API key or token.")
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)
    pool_size: int = Field(default=5, ge=1)
    check_schema: bool = Field(default=True, description="Refuse to work against a database not at head.")
    ray_address: str | None = Field(default=None, description="ray://host:10001 for a cluster; default: local Ray.")
    heartbeat_interval_s: float = Field(default=10.0, gt=0, description="How often a running pipeline says it is alive.")
    progress_interval_s: float = Field(default=15.0, gt=0, description="How often a long pipeline step says how "
                                       "long it has been running (on the terminal, and in an API job's progress).")
    stale_after_s: float = Field(default=120.0, gt=0, description="A running pipeline silent this long is dead.")
    corpus_dir: Path | None = Field(default=None, description="Where the language corpora are unpacked "
                                    "(sotu/, reuters/); default: share/convergence-data in the Python prefix.")
    serve_max_batch_rows: int = Field(default=512, ge=1, description="Most feature rows in one forward pass.")
    serve_max_generate_batch: int = Field(default=16, ge=1, description="Most prompts generated together.")
    serve_generate_wait_ms: float = Field(default=10.0, ge=0, description="How long a generation batch gathers "
                                          "concurrent prompts before it starts.")
    serve_max_rows: int = Field(default=1024, ge=1, description="Most rows in one /predict request.")
    serve_max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body (413 above).")
    serve_gil_switch_ms: float = Field(default=0.5, gt=0, le=100, description="How often a serving replica's "
                                       "background threads must hand the GIL to a waiting request (Python's "
                                       "default is 5 ms; shorter cuts the tail they cause).")
    serve_onnx_threads: int = Field(default=1, ge=1, le=256, description="onnxruntime intra-op threads per "
                                    "replica for a compiled trading graph (batching, not threads, gives throughput).")
    serve_why: str | None = Field(default=None, max_length=2000, description="Why `cvg serve` chose the version it "
                                  "pins (shown by /info); set by `cvg serve`.")
    serve_max_prompt_chars: int = Field(default=32_768, ge=1, description="Longest /generate prompt in characters "
                                        "(422 above); tokenized on the event loop, and only its end fits the context.")
    serve_kill_poll_s: float = Field(default=0.25, gt=0, le=1.0, description="How often replicas read the kill switches "
                                     "and rollouts (a rollback reaches every replica within this).")
    serve_follow_rollouts: bool = Field(default=True, description="Whether a replica serves its model's shadow or "
                                        "canary beside it (`cvg serve --version N` sets false: exactly that version).")
    serve_rollout_report_s: float = Field(default=1.0, gt=0, le=60, description="How often a replica records what it "
                                          "measured of a shadow or canary (what promotion counts).")
    serve_log_sample: float = Field(default=1.0, ge=0, le=1, description="Share of predictions written to the log.")
    serve_usage_interval_s: float = Field(default=60.0, gt=0, description="How often a replica records its "
                                          "compute and energy with its prediction count.")
    serve_log_flush_s: float = Field(default=0.5, gt=0, description="Prediction-log batch interval.")
    image: str = Field(default="convergence:0.1.0", description="Container image Kubeflow components run.")
    watts_per_core: float = Field(default=10.0, gt=0, description="Estimated watts per busy CPU core (no RAPL).")
    carbon_g_per_kwh: float = Field(default=400.0, ge=0, description="Grid carbon intensity, gCO2e per kWh.")
    metering: bool = Field(default=True, description="Meter energy and compute of pipeline steps.")
    drift_critical_share: float = Field(default=0.5, gt=0, le=1, description="Drifting share of columns that is critical.")
    drift_cooldown_s: float = Field(default=3600.0, ge=0, description="Same model and column within this: one alert, counted.")
    k8s_namespace: str = Field(default="convergence", description="Namespace pipeline Jobs are created in.")
    k8s_service_account: str = Field(default="convergence-pipelines", description="ServiceAccount of pipeline Jobs.")
    k8s_config_map: str = Field(default="convergence-config", description="ConfigMap with the CVG_ settings.")
    k8s_secret: str = Field(default="convergence-secrets", description="Secret with the database URL and signing secrets.")
    k8s_ray_cluster: str = Field(default="convergence-ray", description="The chart's RayCluster that RayJobs run on.")
    k8s_keys_secret: str = Field(default="", description="Secret with the service accounts' API keys (key "
                                 "pipelines is what triggered Jobs act with).")
    secret_key: SecretStr | None = Field(default=None, description="Key that seals webhook secrets at rest (any "
                                         "long random string, from a secret store); default: a key file in home.")
    webhook_allow_networks: str | None = Field(default=None, description="Networks webhooks (and checkpoint URLs) "
                                               "may reach although internal, comma-separated CIDRs, e.g. "
                                               "127.0.0.0/8,::1/128; default: public addresses only.")
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay; doubles per attempt, with jitter.")
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_lease_s: float = Field(default=30.0, gt=0, description="A claimed delivery is retried after this if its deliverer died.")
    ledger_key: SecretStr | None = Field(default=None, description="The ledger's signing key (PRIVATE+KEY+NAME+…, "
                                         "as `cvg audit keygen` writes it), e.g. from a Kubernetes Secret.")
    ledger_key_file: Path | None = Field(default=None, description="File holding the signing key; default: "
                                         "HOME/ledger.key, created on first use when CVG_LEDGER_KEY is unset.")
    ledger_witness_key_file: Path | None = Field(default=None, description="A second key (compliance's) that "
                                                 "cosigns every checkpoint.")
    ledger_anchor_dir: Path | None = Field(default=None, description="Append-only directory checkpoints are "
                                           "published to (one file each); default: HOME/checkpoints.")
    ledger_anchor_s3: str | None = Field(default=None, description="s3://BUCKET/PREFIX with Object Lock: each "
                                         "checkpoint is also written there in compliance mode.")
    ledger_anchor_s3_endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL "
                                                  "(default: AWS).")
    retention_minimum_days: dict[str, int] = Field(
        default={"prediction_log": 183, "drift_reports": 183, "usage": 183, "artifacts": 183},
        description="The legal minimum, in days, below which no retention policy may be set, per record class "
                    "(JSON). Six months for each by default (EU AI Act Art. 19: logs of a high-risk system at least "
                    "six months); raise them to what your regulators require.")
    ledger_anchor_retention_days: int = Field(default=2557, ge=1, le=36_500, description="Object Lock retention "
                                              "of published checkpoints (default 7 years).")
    ledger_checkpoint_events: int = Field(default=10_000, ge=1, description="Checkpoint when this many events "
                                          "arrived since the last one (the deliverer and the CronJob check).")
    ledger_checkpoint_s: float = Field(default=3600.0, gt=0, description="...or when the last checkpoint is this "
                                       "old and new events arrived.")

    @field_validator("home", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        return Path(os.path.expanduser(str(value))) if value not in (None, "") else _default_home()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'convergence.db'}"

    @property
    def resolved_artifact_store(self) -> str:
        return self.artifact_store or (self.home / "artifacts").as_uri()


@functools.cache
def get_settings() -> Settings:
    return Settings()
