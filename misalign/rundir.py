"""Run directories: where a run may write, and one process at a time.

A run directory is created fresh or recognised by its marker, RUN_DIR/.misalign-run; anything
else (a file, a directory that holds files and is not a run directory) is refused before
anything is written, so that `--run-dir .` in a project folder cannot overwrite its README.
The marker is also the lock: a POSIX record lock (`lockf`), held while a command writes, and the
holder's PID for the message a second process prints.  The kernel drops the lock when its
process ends, however it ends, so a marker left by a dead process is simply taken over; and
unlike `flock`, the lock is not inherited by the engine processes vLLM forks.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from misalign.errors import MisalignError, OutputError

MARKER = ".misalign-run"
# what run directories written before the marker hold: they are recognised too
EARLIER_MARKS = (".lock", "run.json", "config.resolved.toml", "bench/meta.json", "stages")


class RunDirBusy(MisalignError):
    """Another process is writing the run directory."""


def is_run_dir(path: Path) -> bool:
    return any((path / mark).exists() for mark in (MARKER, *EARLIER_MARKS))


def check(run_dir: str | Path) -> None:
    """OutputError unless RUN_DIR is absent, empty, or a run directory."""
    path = Path(run_dir)
    if str(run_dir) == "":
        raise OutputError("the run directory is '': name one (--run-dir runs/NAME)")
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist: create that "
                          "directory, or name another run directory (--run-dir)")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is not a directory: name a run directory (--run-dir), new or made by a run")
    if path.is_dir() and any(path.iterdir()) and not is_run_dir(path):
        raise OutputError(f"{path} holds files and is not a misalign-fast run directory (no {MARKER}): name a "
                          "new or empty directory (--run-dir); nothing was written")


@contextmanager
def hold(run_dir: str | Path) -> Iterator[Path]:
    """Hold RUN_DIR (checked, and created if absent) for this process; RunDirBusy naming the
    holder's PID if another process holds it.  A directory created here and left empty is
    removed again, so a command refused before it wrote anything leaves nothing behind."""
    check(run_dir)
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / MARKER
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirBusy(f"{run_dir} is in use by another misalign-fast (process {holder(run_dir) or 'unknown'}): "
                         "wait for it to finish, or give this run another directory (--run-dir)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield run_dir
    finally:
        os.close(fd)                      # releases the lock
        if created and [p.name for p in run_dir.iterdir()] == [MARKER]:
            marker.unlink()
            run_dir.rmdir()


def holder(run_dir: str | Path) -> int | None:
    """The PID written by the process that holds (or last held) RUN_DIR's lock."""
    try:
        return int((Path(run_dir) / MARKER).read_text().strip())
    except (OSError, ValueError):
        return None
