"""One process per run directory: a lock held for as long as a command writes there.

The lock is a POSIX record lock (`lockf`) on RUN_DIR/.lock, which also holds the holder's PID
for the message a second process prints.  The kernel drops the lock when its process ends,
however it ends, so a lock file left by a dead process is simply taken over; and unlike
`flock`, the lock is not inherited by the engine processes vLLM forks.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from misalign.errors import MisalignError

LOCK = ".lock"


class RunDirBusy(MisalignError):
    """Another process is writing the run directory."""


@contextmanager
def hold(run_dir: str | Path) -> Iterator[Path]:
    """Hold RUN_DIR (created if absent) for this process; RunDirBusy naming the holder's PID
    if another process holds it.  A directory created here and left empty is removed again, so a
    command refused before it wrote anything leaves nothing behind."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
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
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:
            lock.unlink()
            run_dir.rmdir()


def holder(run_dir: str | Path) -> int | None:
    """The PID written by the process that holds (or last held) RUN_DIR's lock."""
    try:
        return int((Path(run_dir) / LOCK).read_text().strip())
    except (OSError, ValueError):
        return None
