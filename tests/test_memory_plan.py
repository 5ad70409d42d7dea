"""The memory plan and schedule, without an engine: model sizes from safetensors headers and from
config.json shapes, what fits on which card, which pass starts and releases which engine, and
the paper configs planned for 80 GB and 141 GB cards from the models' shapes."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from misalign.cli import main
from misalign.config import load
from misalign.memory_plan import (GIB, SHAPES, Device, PlanError, plan_memory, safetensors_size, schedule,
                                  shape_parameters)
from misalign.run import plan as plan_run

ROOT = Path(__file__).resolve().parents[1]
H100, H200 = 79.6 * GIB, 140.4 * GIB


def shape(name):
    return json.loads((SHAPES / name / "config.json").read_text())


@pytest.mark.parametrize("name, billions", [("Llama-3.1-8B-Instruct", 8.03), ("Mistral-7B-Instruct-v0.3", 7.25),
                                            ("Qwen2.5-7B-Instruct", 7.62), ("gemma-2-9b-it", 9.24),
                                            ("Qwen2.5-32B-Instruct", 32.76), ("Mixtral-8x22B-Instruct-v0.1", 140.6)])
def test_parameters_from_a_shape_match_the_published_sizes(name, billions):
    assert shape_parameters(shape(name)) / 1e9 == pytest.approx(billions, rel=0.01)


def test_weights_from_safetensors_headers_without_loading_them(tmp_path):
    from safetensors.numpy import save_file
    import numpy as np
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(10, np.float16)}, str(tmp_path / "model.safetensors"))
    assert safetensors_size(tmp_path) == (22, 3 * 4 * 4 + 10 * 2)
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 16)
    assert safetensors_size(tmp_path) is None             # unreadable: the plan falls back on the shape


def config_with(tmp_path, models: dict, **run):
    """A config whose models are shape folders (model name -> shape name)."""
    lines = ["[run]", *(f"{k} = {v}" for k, v in run.items()),
             "[classify]", 'method = "llm"', f'model = "{list(models)[0]}"',
             "[expand]", f'model = "{list(models)[1]}"', "[reject]", f'judge = "{list(models)[1]}"',
             "[respond]", f"models = {json.dumps(list(models)[2:])}", "[bench]", f'models = ["{list(models)[0]}"]']
    for name, shape_name in models.items():
        lines += [f"[models.{name}]", f'path = "{SHAPES / shape_name}"', 'dtype = "bfloat16"', "max_model_len = 4096"]
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines))
    return load(path)


FOUR = {"mistral": "Mistral-7B-Instruct-v0.3", "llama": "Llama-3.1-8B-Instruct", "qwen": "Qwen2.5-7B-Instruct",
        "gemma": "gemma-2-9b-it"}


def test_an_80gb_card_holds_some_models_and_the_schedule_releases_before_it_starts(tmp_path):
    config = config_with(tmp_path, FOUR)
    planned = plan_run(config, device=Device("gpu", int(H100)))
    plan = planned.plan
    assert not plan.problems and plan.slots >= 2
    assert plan.models["llama"].weights / GIB == pytest.approx(8.03e9 * 2 / GIB, rel=0.01)
    assert plan.models["llama"].source.startswith("config.json shape")
    assert sum(m.share for m in plan.models.values()) > plan.device.budget    # not all at once...
    for step in planned.steps:                           # ...so each start fits beside what stays
        assert step.action in ("start", "resident", "none")
    starts = planned.engine_starts()
    passes = {m: sum(s.model == m for s in planned.steps) for m in FOUR}
    assert all(1 <= starts[m] <= passes[m] for m in FOUR)


def test_a_141gb_card_keeps_every_model_resident_and_shares_the_spare_memory(tmp_path):
    planned = plan_run(config_with(tmp_path, FOUR), device=Device("gpu", int(H200)))
    assert planned.engine_starts() == {m: 1 for m in FOUR}
    assert sum(m.share for m in planned.plan.models.values()) == pytest.approx(0.9)


def test_resident_models_one_starts_a_model_for_each_pass_that_follows_another(tmp_path):
    planned = plan_run(config_with(tmp_path, FOUR, resident_models=1), device=Device("gpu", int(H200)))
    models = [s.model for s in planned.steps if s.action != "none"]
    changes = 1 + sum(a != b for a, b in zip(models, models[1:]))
    assert sum(planned.engine_starts().values()) == changes
    assert all(len(s.releases) <= 1 for s in planned.steps)


def test_the_engine_needed_again_last_is_released_first():
    """Two slots, a judge and two generators in turn: 5 starts, where releasing the least
    recently used would start an engine for every one of the 7 passes."""
    from misalign.memory_plan import MemoryPlan, ModelMemory
    plan = MemoryPlan(Device("gpu", 100 * GIB), {n: ModelMemory(n, 0, 0, 1, 1, "test", share=0.4) for n in "JAB"})
    passes = [("reject", f"p{i}", m) for i, m in enumerate("JABJABJ")]
    assert plan.slots == 2
    assert schedule(plan, passes).engine_starts() == {"J": 2, "A": 2, "B": 1}


def test_a_model_too_large_for_the_card_is_one_line_that_says_what_to_do(tmp_path):
    plan = plan_memory(config_with(tmp_path, FOUR), Device("gpu", 16 * GIB), list(FOUR))
    with pytest.raises(PlanError, match=r"model 'mistral': needs .* GiB .* set its tensor_parallel_size .*"
                                        r"max_model_len, or run on Ray"):
        plan.require()


def test_the_old_paper_config_cannot_start_llama_on_an_80gb_card(tmp_path):
    """0.17 of an 80 GB card is less than Llama-3.1-8B's bf16 weights (the bug of issue #10)."""
    config = config_with(tmp_path, FOUR)
    config.models["llama"].gpu_memory_utilization = 0.17
    plan = plan_memory(config, Device("gpu", int(H100)), list(FOUR))
    assert [name for name, _ in plan.problems] == ["llama"]
    assert "gpu_memory_utilization = 0.17 gives it 13.5 GiB, less than" in plan.problems[0][1]


def test_tensor_parallel_over_more_gpus_than_the_box_has_is_refused(tmp_path):
    config = config_with(tmp_path, FOUR)
    config.models["gemma"].tensor_parallel_size = 2
    plan = plan_memory(config, Device("gpu", int(H100), cards=1), list(FOUR))
    assert plan.problems == [("gemma", "tensor_parallel_size = 2, but this box has 1 GPU")]
    assert not plan_memory(config, Device("gpu", int(H100), cards=2), list(FOUR)).problems


def test_on_cpu_an_engine_needs_its_weights_kv_space_and_process(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    plan = plan_memory(config_with(tmp_path, FOUR), Device("cpu", 64 * GIB), list(FOUR))
    llama = plan.models["llama"]
    assert llama.need == llama.weights + 3 * GIB and plan.gpu_share("llama") is None
    assert plan.slots == 2                               # 0.7 of 64 GiB holds two 8B models in bf16


def plan_cli(*args):
    return CliRunner().invoke(main, ["plan", *map(str, args)])      # shapes: the bundled ones


def test_paper_gpu_keeps_roles_apart_and_fits_an_80gb_card_from_the_shapes():
    config = load(ROOT / "configs" / "paper-gpu.toml")
    roles = config.roles()
    makers = {name for name, r in roles.items() if {"expander", "generator", "judge"} & set(r)}
    assert roles["mistral"][0] == "classifier" and roles["llama"] == ["expander", "judge"]
    assert not makers & set(config.bench.models) and not config.role_warnings()
    assert not set(config.respond.models) & {"mistral", "llama"}
    result = plan_cli(ROOT / "configs" / "paper-gpu.toml", "--gpu-memory", 79.6)
    assert result.exit_code == 0, result.output
    assert "1 x GPU (79.6 GiB each)" in result.output and "releases" in result.output
    h200 = plan_cli(ROOT / "configs" / "paper-gpu.toml", "--gpu-memory", 140.4)
    assert ("engine starts at most: mistral 2, llama 2, qwen 1, gemma 2, phi 2, ministral 1, llama32 1, "
            "MiniLM embedder 1") in h200.output


def test_paper_exact_needs_eight_gpus_for_mixtral():
    exact = ROOT / "configs" / "paper-exact.toml"
    assert plan_cli(exact, "--gpus", 8, "--gpu-memory", 79.6).exit_code == 0
    result = plan_cli(exact, "--gpus", 4, "--gpu-memory", 140.4)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: plan: model 'mixtral': tensor_parallel_size = 8, but this box has 4 GPUs")


def test_mistrals_consolidated_file_is_not_counted_beside_its_shards(tmp_path):
    from safetensors.numpy import save_file
    import numpy as np
    for name in ("model-00001-of-00001.safetensors", "consolidated.safetensors"):
        save_file({"w": np.zeros(100, np.float16)}, str(tmp_path / name))
    assert safetensors_size(tmp_path) == (100, 200)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "consolidated.safetensors"}}))
    assert safetensors_size(tmp_path) == (100, 200)        # the index names the files


def test_the_embedder_keeps_its_need_and_a_cap_spreads_the_card_over_the_engines_it_allows(tmp_path):
    config = config_with(tmp_path, FOUR, resident_models=2)
    plan = plan_memory(config, Device("gpu", int(H200)), list(FOUR), embedder=True)
    embedder = plan.models["MiniLM embedder"]
    assert embedder.share == pytest.approx(embedder.need / H200)
    largest = sorted((m.share for n, m in plan.models.items() if n in FOUR), reverse=True)[:2]
    assert sum(largest) == pytest.approx(plan.llm_budget)   # the two allowed at once fill the card


def test_on_ray_the_drivers_plan_is_a_note_not_a_stop():
    result = plan_cli(ROOT / "configs" / "paper-exact.toml", "--gpus", 4, "--gpu-memory", 140.4, "--executor", "ray")
    assert result.exit_code == 0, result.output
    assert ("note: on this machine model 'mixtral' tensor_parallel_size = 8, but this box has 4 GPUs; each Ray "
            "worker plans its own") in result.output
