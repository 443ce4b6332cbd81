"""The user-code boundary, in-process and across a real Ray task."""

from __future__ import annotations

import pytest

from convergence.pipelines._boundary import bounded, step_boundary
from convergence.pipelines._runner import ray_get_all
from convergence.platform.errors import InvalidInput, StepFailed


def test_our_errors_pass_and_foreign_ones_are_wrapped() -> None:
    with pytest.raises(InvalidInput), step_boundary("features"):
        raise InvalidInput("bad")
    with pytest.raises(StepFailed, match="step 'features' failed: ZeroDivisionError") as info, step_boundary("features"):
        1 / 0  # noqa: B018
    assert info.value.step == "features" and isinstance(info.value.__cause__, ZeroDivisionError)


@bounded("remote_step")
def _explode(kind: str) -> None:
    if kind == "ours":
        raise InvalidInput("a precise message")
    raise KeyError("missing_column")


@pytest.mark.ray
def test_errors_come_back_from_ray_tasks_as_ours(ray_session) -> None:
    remote = ray_session.remote(num_cpus=1)(_explode)
    with pytest.raises(InvalidInput, match="a precise message"):
        ray_get_all([remote.remote("ours")], "remote_step")
    with pytest.raises(StepFailed, match="step 'remote_step' failed: KeyError") as info:
        ray_get_all([remote.remote("foreign")], "remote_step")
    assert "Traceback" not in str(info.value)
