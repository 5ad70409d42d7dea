"""Scale-out on Ray (`run.executor = "ray"`, or `--executor ray`): the shards of every row-wise stage
(classify, respond, reject, and each model under test) go to a pool of Ray actors.

Each actor holds its own EnginePool, so its own copy of every model it is asked to run (with
`ray.gpus_per_worker` GPUs: 1 for a model that fits one GPU, the tensor-parallel size
otherwise), and keeps it across stages while its memory plan lets it: a model starts at most
once per pass and actor, never once per shard.  Each actor plans for the device it sees as if
it were alone there (several actors sharing a GPU through a fractional `gpus_per_worker` are not
planned for); the driver's plan is printed as a note only.
The driver keeps writing each shard and the manifest as results come back, in whatever order,
so checkpoints and resume are exactly those of a single machine.  Global stages (expand, dedup,
split) run on the driver.  On a multi-node cluster the run directory must be on storage every
node sees (the actors read models from it and the driver writes to it).

We use Ray core actors rather than `ray.data.llm`: our stages already own their prompts and
read answer probabilities (which ray.data.llm's processors do not expose), and the driver must
see each shard finish to checkpoint it.  Single-machine runs never import Ray.
"""
from __future__ import annotations

import os
import socket

from misalign.config import Config, ray_head
from misalign.errors import ConfigError
from misalign.pipeline import run_shard


class _Worker:
    """One Ray actor: a private engine pool and the stages it has been given, by name."""

    def __init__(self, config: Config):
        import os
        from misalign.inference.pool import EnginePool
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.pool = EnginePool(config, config.run.dir)
        self.stages: dict = {}

    def prepare(self, stage) -> bool:
        """Keep a copy of `stage` bound to this actor's engines (its state, e.g. a trained
        probe, then lives here across shards)."""
        self.stages[stage.name] = stage.bind(self.pool)
        return True

    def run(self, name: str, pass_no: int, index: int, part):
        return run_shard(self.stages[name], index, part, pass_no)

    def close(self) -> bool:
        self.pool.close()
        return True


class RayExecutor:
    def __init__(self, config: Config):
        try:
            import ray
        except ImportError:
            raise ConfigError("run.executor = \"ray\" needs Ray: pip install 'misalign-fast[ray]'") from None
        settings = config.ray
        if not ray.is_initialized():
            check_head(settings.address)
            try:
                ray.init(address=settings.address or None, include_dashboard=False,
                         log_to_driver=settings.worker_logs, num_cpus=settings.local_cpus or None)
            except ConnectionError as exc:        # "auto" with no cluster running, a head that went away
                raise ConfigError(f"ray.address = {settings.address!r}: {str(exc).splitlines()[0]}") from None
        workers = settings.workers or max(int(ray.cluster_resources().get("GPU", 0) // max(settings.gpus_per_worker,
                                                                                          1e-9)), 1)
        gpus = settings.gpus_per_worker if ray.cluster_resources().get("GPU", 0) else 0
        _prebuild_stand_in(config)
        actor = ray.remote(_Worker).options(num_cpus=settings.cpus_per_worker, num_gpus=gpus)
        self.actors = [actor.remote(config) for _ in range(workers)]
        self.ray = ray

    def map(self, stage, pass_no: int, shards):
        """Yield (index, output, stats) for every (index, table) shard through pass `pass_no`
        of `stage`, as each finishes."""
        from ray.util import ActorPool
        self.ray.get([a.prepare.remote(stage) for a in self.actors])
        pool = ActorPool(self.actors)
        yield from pool.map_unordered(lambda actor, shard: actor.run.remote(stage.name, pass_no, *shard), shards)

    def close(self) -> None:
        self.ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


def check_head(address: str, timeout: float = 5.0) -> None:
    """A cluster's head must answer at `address` (or RAY_ADDRESS where it is empty) before a run
    waits on it: Ray itself retries for minutes, printing warnings, and never says it gave up."""
    address = address or os.environ.get("RAY_ADDRESS", "")
    head = ray_head(address)
    if head is None:                    # "", "auto", "local": Ray finds (or starts) its own
        return
    try:
        socket.create_connection(head, timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"ray.address = {address!r}: nothing answers at {head[0]}:{head[1]} "
                          f"({exc.strerror or type(exc).__name__}); start the cluster (ray start --head) "
                          "or fix the address") from None


def _prebuild_stand_in(config: Config) -> None:
    """Build the tiny stand-in once, on the driver, before actors race to build it."""
    from misalign.inference.pool import EnginePool
    pool = EnginePool(config, config.run.dir)
    if "tiny" in config.models and pool.is_stand_in("tiny"):
        pool.resolve_path("tiny", config.models["tiny"])


def executor(config: Config):
    """The executor `run.executor` names: None for "local" (shards run in this process)."""
    if config.run.executor == "local":
        return None
    if config.run.executor == "ray":
        return RayExecutor(config)
    raise ConfigError(f"run.executor must be \"local\" or \"ray\", got {config.run.executor!r}")
