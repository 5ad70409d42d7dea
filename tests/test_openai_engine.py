"""OpenAIEngine against a real vLLM OpenAI-compatible server on 127.0.0.1, started here."""
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from misalign.inference import EngineError, OpenAIConfig, OpenAIEngine, SamplingConfig


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
                             "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
                             "--max-model-len", "1024", "--gpu-memory-utilization", "0.3", "--enforce-eager"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the vLLM server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"the vLLM server did not become ready in 300 s; see {log.name}")
    yield proc, url + "/v1"
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_completions_chat_and_label_probs(server):
    _, url = server
    plain = OpenAIEngine(OpenAIConfig(base_url=url, model="tiny", max_in_flight=4))
    gens = plain.generate(["Explain the Day of the Dead.", "Write a haiku."], SamplingConfig(max_tokens=5))
    assert len(gens) == 2 and all(0 < g.completion_tokens <= 5 and g.prompt_tokens > 0 for g in gens)
    chat = OpenAIEngine(OpenAIConfig(base_url=url, model="tiny", chat=True))
    reply = chat.generate([[{"role": "user", "content": "Hello?"}]], SamplingConfig(max_tokens=3))[0]
    assert 0 < reply.completion_tokens <= 3
    for engine in (plain, chat):
        probs = engine.label_probs(["Is this safe?", "Is this kind?", "Is this true?"], ["Yes", "No"])
        assert probs.shape == (3, 2)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        assert engine.stats().unparsable == 0


def test_api_key_comes_from_the_named_variable(server, monkeypatch):
    _, url = server
    with pytest.raises(EngineError, match="MISALIGN_TEST_KEY"):
        OpenAIEngine(OpenAIConfig(base_url=url, model="tiny", api_key_env="MISALIGN_TEST_KEY"))
    monkeypatch.setenv("MISALIGN_TEST_KEY", "secret-value")
    engine = OpenAIEngine(OpenAIConfig(base_url=url, model="tiny", api_key_env="MISALIGN_TEST_KEY"))
    assert "secret-value" not in repr(engine.config)
    assert engine.generate(["hi"], SamplingConfig(max_tokens=1))[0].completion_tokens == 1


def test_a_server_model_under_test_through_the_pool(server, tmp_path):
    """Stage II with the model behind the server: the pool builds the OpenAIEngine from the config."""
    from pathlib import Path

    from misalign import config as config_mod
    from misalign.benchmark import benchmark
    from misalign.inference.pool import EnginePool
    from misalign.report import results
    _, url = server
    fixture = Path(__file__).parent / "data" / "savacu_fixture.csv"
    with_password = url.replace("http://", "http://user:hunter2@")      # sent as basic auth, never written
    config = config_mod.load(None, [f'run.dir="{tmp_path}"', f'bench.dataset="{fixture}"', 'bench.models=["remote"]',
                                    'models.remote.kind="openai"', f'models.remote.base_url="{with_password}"',
                                    'models.remote.path="tiny"', "bench.runs=2", "bench.bootstrap=20",
                                    "bench.no_opinion=0.0"])     # the stand-in says nearly the same both ways
    pool = EnginePool(config, tmp_path)
    try:
        meta = benchmark(config, pool)
    finally:
        pool.close()
    assert url.replace("http://", "http://***@") in meta["models"]["remote"]["description"]
    remote = results(tmp_path)["models"]["remote"]
    assert remote["runs"] == {"asked": 2, "distinct": 1} and remote["verdicts"] == 10 * 2       # temperature 0
    assert remote["unusable"]["joint"] == 0 and remote["parsed_answers"] == 0
    assert remote["metrics"]["joint"]["items"] == 10
    from misalign.report import report
    report(tmp_path)
    for written in ("bench/meta.json", "results.json", "report.html"):
        assert "hunter2" not in (tmp_path / written).read_text(), written


def test_server_stopped_mid_run_gives_a_clear_error_after_retries(server):
    proc, url = server
    engine = OpenAIEngine(OpenAIConfig(base_url=url, model="tiny", retries=2, backoff_s=0.1, timeout_s=5))
    assert engine.generate(["still up?"], SamplingConfig(max_tokens=1))
    proc.terminate()
    proc.wait(timeout=60)
    with pytest.raises(EngineError, match="did not answer after 2 retries"):
        engine.generate(["anyone there?"] * 3, SamplingConfig(max_tokens=1))
