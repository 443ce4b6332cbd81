"""The control-plane API and the one set of operations behind it and behind the CLI.

``Operations`` is what a principal can do, each method opening a session, calling a governance (or
pipelines) service and returning plain data; it holds no rules of its own. ``create_app`` serves those
methods over HTTP (FastAPI, OpenAPI 3.1) with authentication; ``RemoteOperations`` is the same interface
over HTTP, which the CLI uses when ``CVG_API_URL`` is set, so both modes print the same and exit the same.
"""

from typing import Any

from convergence.platform.api._jobs import BackgroundJobs, InlineJobs
from convergence.platform.api.client import RemoteOperations
from convergence.platform.api.operations import Operations, local_operations

__all__ = ["BackgroundJobs", "InlineJobs", "Operations", "RemoteOperations", "create_app", "local_operations"]


def __getattr__(name: str) -> Any:
    """``create_app`` loads FastAPI: only `cvg api` (and tests) pay for it, not every local command."""
    if name == "create_app":
        from convergence.platform.api._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
