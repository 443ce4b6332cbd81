"""``cvg demo``: the main job, the whole story on one machine with the embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer


def demo(
    workdir: Annotated[str | None, typer.Option("--workdir", help="Where to write the demo's files "
                                                "(default: CVG_HOME/demo).")] = None,
) -> None:
    """Run the main job: migrate, register, validate and approve as two people, promote, roll back,
    checkpoint and verify the audit trail, export it and re-verify it offline; then summarise."""
    from convergence.platform.cli._story import run_story

    run_story(workdir=workdir)
