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


from misalign.config import Config
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
            ray.init(address=settings.address or None, include_dashboard=False, log_to_driver=settings.worker_logs,
                     num_cpus=settings.local_cpus or None)
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
