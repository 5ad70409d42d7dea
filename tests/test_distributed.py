"""Scale-out on a local Ray: the bench stage's shards on two actors, each with its own vLLM
engine, give the verdicts of the single-process run, checkpointed and resumable the same way."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from misalign import config as config_mod
from misalign.benchmark import benchmark
from misalign.distributed import RayExecutor, executor
from misalign.errors import ConfigError
from misalign.inference.pool import EnginePool

FIXTURE = Path(__file__).parent / "data" / "savacu_fixture.csv"


def settings(run_dir, *extra):
    return config_mod.load(None, [f'run.dir="{run_dir}"', f'bench.dataset="{FIXTURE}"', 'bench.models=["tiny"]',
                                  "bench.runs=1", "bench.bootstrap=10", "run.shard_rows=3", "bench.no_opinion=0.0",
                                  *extra])


def verdicts(run_dir):
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    return sorted(rows, key=lambda r: (r["item"], r["response"], r["question"], r["run"]))


def test_bench_on_ray_actors_matches_the_local_run_and_resumes(tmp_path, session_pool):
    import ray
    benchmark(settings(tmp_path / "local"), session_pool)
    config = settings(tmp_path / "ray", 'run.executor="ray"', "ray.workers=2", "ray.local_cpus=2")
    workers = executor(config)
    assert isinstance(workers, RayExecutor) and len(workers.actors) == 2
    try:
        pool = EnginePool(config, config.run.dir)
        meta = benchmark(config, pool, executor=workers)
        assert meta["profile"][0]["shards_run"] == 4                    # 10 items in shards of 3
        again = benchmark(config, pool, executor=workers)
        assert again["profile"][0]["shards_run"] == 0 and again["profile"][0]["shards_reused"] == 4
    finally:
        workers.close()
        ray.shutdown()
    manifest = json.loads((tmp_path / "ray" / "bench" / "stages" / "bench-tiny" / "manifest.json").read_text())
    assert sorted(s["index"] for s in manifest["passes"][0]["shards"]) == [0, 1, 2, 3] and manifest["complete"]
    local, spread = verdicts(tmp_path / "local"), verdicts(tmp_path / "ray")
    assert [r["item"] for r in local] == [r["item"] for r in spread]
    for a, b in zip(local, spread):        # the same stand-in weights (same seed), greedy read-out
        assert a["p_misaligned"] == pytest.approx(b["p_misaligned"], abs=2e-3)
        if abs(a["p_misaligned"] - 0.5) > 2e-3:
            assert a["flagged"] == b["flagged"]


def test_unknown_executor_is_refused_by_the_config_and_by_executor(tmp_path):
    with pytest.raises(ConfigError, match='run.executor must be "local" or "ray"'):
        settings(tmp_path, 'run.executor="spark"')
    config = settings(tmp_path)
    config.run.executor = "spark"              # past the loader (a config built in code): executor() says so too
    with pytest.raises(ConfigError, match='run.executor must be "local" or "ray", got \'spark\''):
        executor(config)
