"""Files people name with -o: written through an exclusive temporary file, never through a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from convergence.platform.errors import InvalidInput
from convergence.platform.files import atomic_output


def test_a_new_file_appears_whole_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with atomic_output(target, mode=0o600) as fh:
        fh.write(b"one\n")
        assert not target.exists()  # nothing under the real name until the block ends
    assert target.read_bytes() == b"one\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError), atomic_output(target) as fh:
        fh.write(b"half")
        1 / 0  # noqa: B018
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.jsonl"]


def test_a_symlink_at_the_target_is_refused_and_what_it_points_at_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out").symlink_to(victim)
    with pytest.raises(InvalidInput, match="is a symbolic link"), atomic_output(tmp_path / "out"):
        pass
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling link"])
def test_targets_that_are_not_regular_files_are_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInput, match="name a regular file"), atomic_output(target):
        pass
    assert not (tmp_path / "nowhere").exists()


def test_a_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"), atomic_output(tmp_path / "no" / "out"):
        pass
