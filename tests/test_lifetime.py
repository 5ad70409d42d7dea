"""Engine processes die with the process that started them, even when it is killed with SIGKILL
(which no handler sees): vLLM's engine core runs as a child process on a GPU, and here, with
VLLM_ENABLE_V1_MULTIPROCESSING=1, on this CPU too, so the GPU's process layout is what is tested."""
import os
import signal
import subprocess
import sys

import psutil

OWNER = """
import os, sys, time
from misalign.inference import EngineConfig, VLLMEngine
from misalign.inference.tiny import make_tiny_model
engine = VLLMEngine(EngineConfig(model=str(make_tiny_model(sys.argv[1])), max_model_len=256, max_num_seqs=4))
print(os.getpid(), flush=True)
time.sleep(600)
"""


def test_engine_processes_exit_when_their_owner_is_killed_with_sigkill(tmp_path):
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "tiny")], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    try:
        assert owner.stdout.readline().strip() == str(owner.pid), "the engine did not start"
        children = psutil.Process(owner.pid).children(recursive=True)
        assert children, "vLLM's engine core should run in a process of its own here"
        os.kill(owner.pid, signal.SIGKILL)                 # the owner alone: its children are on their own
        owner.wait()
        gone, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, f"engine processes outlived their owner: {[p.name() for p in alive]}"
    finally:
        try:
            os.killpg(owner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
