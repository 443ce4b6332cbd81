"""The README's "Using cvg" block cannot drift from the CLI: in a fresh shell, after the documented activation
(`source .venv/bin/activate`), every command it names answers `--help` with each option it shows, and every
command it prints without a placeholder runs as printed and exits 0 on a sandbox like the demo's."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# printed without a placeholder, but not run here: a server, a device login, one-time set-up, a network call
NOT_RUN = {"cvg api", "cvg login", "cvg db upgrade", "cvg webhooks deliver --loop", "cvg audit checkpoint",
           "cvg db downgrade", "cvg pipelines submit"}


def _block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using `cvg`", 1)[1].split("\n## ", 1)[0]
    code = section.split("```bash", 1)[1].split("```", 1)[0]
    lines, joined = [], ""
    for raw in code.splitlines():
        line = raw.split("  #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        joined = f"{joined} {line.strip()}" if joined else line
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip()
            continue
        if joined.startswith("cvg "):
            lines.append(joined)
        joined = ""
    return lines


def _alternatives(line: str) -> list[str]:
    """``cvg db upgrade | current`` → ``cvg db upgrade``, ``cvg db current``: split on " | " outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(line):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth == 0 and line.startswith(" | ", i):
            parts.append(line[start:i])
            start = i + 3
    parts.append(line[start:])
    first = parts[0].split()
    words = [w for w in first[1:] if re.fullmatch(r"[a-z][a-z0-9-]*", w)]
    path = ["cvg", *words[:2]] if len(first) > 1 else ["cvg"]
    group = path[:-1] if len(path) > 1 else path
    return [parts[0].strip(), *(" ".join([*group, p.strip()]) for p in parts[1:])]


def _command(alternative: str) -> tuple[str, list[str], bool]:
    """(the command path, the options shown, whether it is printed without a placeholder)."""
    words = alternative.split()
    path = ["cvg"]
    for w in words[1:]:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", w) or len(path) == 3:
            break
        path.append(w)
    options = sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-o)(?![\w-])", alternative)))
    concrete = not re.search(r"[\[…]|\.\.\.|\b[A-Z][A-Z_]+\b|\|", alternative.replace(" | ", " "))
    return " ".join(path), options, concrete


COMMANDS = [_command(alt) for line in _block() for alt in _alternatives(line)]


def test_the_block_is_read_whole() -> None:
    paths = {path for path, _, _ in COMMANDS}
    assert len(COMMANDS) >= 60 and {"cvg db upgrade", "cvg db check", "cvg models compile", "cvg audit export",
                                    "cvg serve status", "cvg webhooks subscriptions", "cvg whoami"} <= paths


@pytest.fixture(scope="module")
def fresh_shell(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Runs a script in `bash` with an environment a new terminal would have, after the README's activation,
    with CVG_HOME at a new sandbox database (made the way the README says)."""
    home = tmp_path_factory.mktemp("readme")
    activate = ROOT / ".venv" / "bin" / "activate"
    assert activate.is_file() or Path(sys.prefix, "bin", "activate").is_file()
    activate = activate if activate.is_file() else Path(sys.prefix, "bin", "activate")

    def run(script: str) -> str:
        env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "CVG_HOME": str(home / "cvg"),
               "LANG": "C.UTF-8", "TERM": "dumb", "COLUMNS": "200"}
        done = subprocess.run(["bash", "-c", f"source {shlex.quote(str(activate))}\ncd {shlex.quote(str(home))}\n"
                               + script], env=env, capture_output=True, text=True, timeout=600)
        return done.stdout + done.stderr

    # the state the demo leaves: a sandbox whose first admins are service accounts, where the OS account is an
    # auditor, with a signed checkpoint (the README's commands are read as that account, as the demo says)
    setup = run("cvg db upgrade --sandbox >/dev/null && cvg principals bootstrap --admin sa:ada --admin sa:sam "
                "--grant os:$(whoami)=auditor --as setup >/dev/null && cvg audit checkpoint --as ada >/dev/null "
                "&& echo READY")
    assert "READY" in setup, setup[-2000:]
    return run


def _each(commands: list[str]) -> str:
    """One script running every command, each followed by a marker line with its exit code."""
    return "\n".join(f"{c} >/tmp/readme-out.$$ 2>&1; echo \"@@ $? {c}\"; cat /tmp/readme-out.$$ | head -c 20000"
                     for c in commands)


def test_every_command_and_option_the_readme_shows_exists(fresh_shell) -> None:  # type: ignore[no-untyped-def]
    wanted: dict[str, set[str]] = {}
    for path, options, _ in COMMANDS:
        wanted.setdefault(path, set()).update(options)
    # one process for every --help (the same entry point `cvg` runs; ~70 interpreter starts would cost a minute)
    script = ("from typer.testing import CliRunner\nfrom convergence.platform.cli import app\n"
              "import sys\nfor path in sys.argv[1:]:\n"
              "    r = CliRunner().invoke(app, path.split()[1:] + ['--help'], prog_name='cvg', "
              "env={'COLUMNS': '250', 'TERM': 'dumb'})\n"
              "    print(f'@@ {r.exit_code} {path} --help')\n    print(r.output)\n")
    out = fresh_shell(f"python - {' '.join(shlex.quote(p) for p in wanted)} <<'PY'\n{script}PY")
    found = re.findall(r"@@ (\d+) (cvg(?: [^\n]*?)?) --help\n(.*?)(?=\n@@ |\Z)", out, re.S)
    chunks = {cmd: (code, text) for code, cmd, text in found}
    missing = []
    for path, options in wanted.items():
        code, text = chunks.get(path, ("?", ""))
        if code != "0":
            missing.append(f"{path}: --help exited {code}")
            continue
        missing += [f"{path} {o}" for o in options if o not in text and o != "--help"]
    assert not missing, missing


def test_every_command_printed_without_a_placeholder_runs_as_printed(fresh_shell) -> None:  # type: ignore[no-untyped-def]
    runnable = sorted({alt for line in _block() for alt in _alternatives(line)
                       if _command(alt)[2] and not any(alt.startswith(n) for n in NOT_RUN)})
    assert len(runnable) >= 12, runnable
    out = fresh_shell(_each(runnable))
    codes = dict((cmd, code) for code, cmd in re.findall(r"@@ (\d+) (cvg [^\n]*)", out))
    failed = {cmd: code for cmd, code in codes.items() if code != "0"}
    assert set(codes) == set(runnable) and not failed, (failed, out[-3000:])
