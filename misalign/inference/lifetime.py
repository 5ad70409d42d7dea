"""Engine processes die with the misalign-fast process that started them.

On a GPU vLLM runs its engine core in a child process (and its workers in the core's children).
SIGINT, SIGTERM and SIGHUP reach the CLI's handlers, which close the engines; SIGKILL cannot be
handled, and the engine core would keep running under PID 1, holding the GPU's memory.  vLLM
calls every "vllm.general_plugins" entry point in each process it starts (the engine core as it
is made, each worker); `die_with_parent`, registered in pyproject.toml, asks the kernel to send
that process SIGTERM when its parent dies (Linux's PR_SET_PDEATHSIG), and vLLM's own SIGTERM
handling then shuts it down.  It acts only in processes started under an engine of ours
(OWNER_ENV names the process that started the engine), never in that process itself, nor in a
vLLM a user runs on their own.  VLLM_PLUGINS, if a user sets it, must name it ("misalign-fast").
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

OWNER_ENV = "MISALIGN_ENGINE_OWNER"
PR_SET_PDEATHSIG = 1


def mark_owner() -> None:
    """Called in the process about to start an engine: the processes it starts inherit its pid."""
    os.environ[OWNER_ENV] = str(os.getpid())


def die_with_parent() -> None:
    owner = os.environ.get(OWNER_ENV)
    if not owner or str(os.getpid()) == owner or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return                                    # not allowed here (a sandbox): nothing more to do
    parent = multiprocessing.parent_process()     # the parent may have died before the request
    if parent is not None and parent.pid != os.getppid():
        os.kill(os.getpid(), signal.SIGTERM)
