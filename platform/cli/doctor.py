"""``cvg doctor``: which parts of convergence are usable here, each with a fix."""

from __future__ import annotations

from convergence.platform.cli._common import JsonOpt, console, print_json, print_table
from convergence.platform.errors import Unavailable


def doctor(json_out: JsonOpt = False) -> None:
    """Check the database (reachable, at head), artifact store, Ray, torch, GPU and helm; suggest fixes.

    Exits 6 when a required part (database, artifact store) is unusable, 0 otherwise.
    """
    from convergence.platform.doctor import run_checks

    checks = run_checks()
    if json_out:
        print_json([c.to_dict() for c in checks])
    else:
        print_table("cvg doctor", ("part", "status", "detail", "fix"),
                    ((c.name + (" (required)" if c.required else ""), "ok" if c.ok else "MISSING" if not c.required
                      else "FAILED", c.detail, c.fix or "") for c in checks))
    broken = [c.name for c in checks if c.required and not c.ok]
    if broken:
        if not json_out:
            console(stderr=True).print("required parts are not usable: " + ", ".join(broken))
        raise Unavailable(f"required parts are not usable: {', '.join(broken)}")
