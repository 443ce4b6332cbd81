"""``cvg demo``: the main job, the whole story on one machine with the embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer


def demo(
    workdir: Annotated[str | None, typer.Option("--workdir", help="Where to write the demo's files "
                                                "(default: CVG_HOME/demo).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller models and data (about half the time); "
                                        "every step still runs.")] = False,
) -> None:
    """Run the main job: migrate; train a teacher and distill a student on real E-mini ticks with Ray;
    validate and approve as two different people (a self-approval is refused); promote; check drift and
    deliver signed alerts; retrain and roll the new student out as a shadow, a canary whose guard rolls it back,
    and a canary that is promoted; train and distill a language model on the State of the Union addresses and
    approve it the same way; show budgets; checkpoint and verify the audit trail, export it and
    re-verify it offline; then summarise where to look."""
    from convergence.platform.cli._story import run_story
    from convergence.platform.errors import PolicyViolation

    result = run_story(workdir=workdir, quick=quick)
    if not result["ok"]:
        raise PolicyViolation("the demo did not complete: see above")
