"""Read models for the console: the public surface, read as ``views.inventory(...)``, ``views.moment(...)``.

What a person browsing the record sees: every model at a glance, one version's whole record, what was live at
an instant, and an event with what a browser needs to check its inclusion against a signed checkpoint itself.
"""

from convergence.governance._views import (
    browser_proof,
    inventory,
    model_names,
    moment,
    open_drift_alerts,
    recent_events,
    version_view,
)

__all__ = [
    "browser_proof",
    "inventory",
    "model_names",
    "moment",
    "open_drift_alerts",
    "recent_events",
    "version_view",
]
