"""``Operations``: every operation of the control plane, for one principal; and how the CLI gets one."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from convergence.platform.api._registry_ops import RegistryOps
from convergence.platform.api._runtime_ops import RuntimeOps
from convergence.platform.api._spec import OpSpec, operations_of
from convergence.platform.api._trust_ops import TrustOps


class Operations(RegistryOps, TrustOps, RuntimeOps):
    """What a principal can do. Rules live in the services these methods call; reads are checked against
    the same permission table before they run."""

    @classmethod
    def specs(cls) -> list[OpSpec]:
        return operations_of(cls)


def local_operations(*, as_name: str | None = None, progress: Callable[[str, str, str], None] | None = None,
                     ray_address: str | None = None) -> Operations:
    """The CLI's operations without the API: on the database directly, as the OS account, a sandbox name,
    CVG_API_KEY or a token (``Authenticator.local``); pipelines run in the foreground."""
    from convergence.platform.api._jobs import InlineJobs

    request_id = f"cli-{uuid.uuid4().hex[:16]}"

    def who() -> Any:
        from convergence.governance.identity import Authenticator

        return Authenticator().local(as_name=as_name, request_id=request_id)

    return Operations(who=who, jobs=InlineJobs(progress, ray_address=ray_address))
