import os
import tempfile
from pathlib import Path

# No test reaches the Hub: models named by a Hub id are read from a cache laid out on disk
# (tests/test_hub.py), set before anything imports huggingface_hub (it reads these at import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="misalign-hf-home-")
# the answer cache of this session's runs: empty at start, never the developer's own
os.environ["MISALIGN_FAST_ANSWER_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="misalign-answers-"), "answers.sqlite")

import pytest  # noqa: E402
from hypothesis import settings

from misalign.inference.base import EMBEDDER, Engine, Pool
from misalign.stats import TOKEN_FIELDS, EngineUsage

# Property tests: 50 examples each by default (CI, `make test`); `pytest --hypothesis-profile=thorough`
# gives each the 300 it had before the suite was trimmed.
settings.register_profile("ci", max_examples=50)
settings.register_profile("thorough", max_examples=300)


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MISALIGN_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(name):
    """A file of ../shared/data; external data, so tests that need it skip without it."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (it lives in ../shared, beside a developer checkout)")
    return path


@pytest.fixture(scope="session")
def taxonomy_reference():
    return shared_file("taxonomy_reference.json")


# ---------------------------------------------------------------------------------- engines
# One engine of each kind per test session: vLLM takes 15-60 s to start on CPU.

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from misalign.inference.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    from misalign.inference import EngineConfig, VLLMEngine
    engine = VLLMEngine(EngineConfig(model=str(tiny_model), max_model_len=4096, max_num_seqs=32))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def minilm_engine():
    from misalign.inference.embedding_model import embedding_engine
    engine = embedding_engine()
    yield engine
    engine.close()


class Recording:
    """A real engine that also keeps the requests it was given."""

    def __init__(self, engine):
        self.engine, self.requests = engine, []

    def generate(self, prompts, sampling=None, seeds=None):
        self.requests += list(prompts)
        return self.engine.generate(prompts, sampling, seeds)

    def label_probs(self, prompts, choices):
        self.requests += list(prompts)
        return self.engine.label_probs(prompts, choices)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class SessionPool(Pool):
    """The engine pool's interface (misalign.inference.base.Pool) over this session's engines,
    so that pipeline code runs on real engines without starting them again: "tiny" is the
    stand-in, the embedder MiniLM."""

    def __init__(self, engines: dict[str, Engine], embedder: Engine | None):
        self.engines, self._embedder = engines, embedder

    def get(self, name: str) -> Engine:
        return self.engines[name]

    def embedder(self) -> Engine:
        return self._embedder

    def at_pass(self, stage: str, pass_name: str) -> None:
        pass

    def usage(self, names) -> EngineUsage:
        running = [self._embedder if n == EMBEDDER else self.engines.get(n) for n in dict.fromkeys(names)]
        stats = [e.stats() for e in running if e is not None]
        return EngineUsage(**{key: sum(getattr(s, key) for s in stats) for key in TOKEN_FIELDS})

    def identity(self, name: str) -> dict:
        from misalign.identity import local_model
        engine = self._embedder if name == EMBEDDER else self.engines[name]
        return local_model(engine.config.model)

    def is_stand_in(self, name: str) -> bool:
        return name == "tiny"

    def is_bundled(self, name: str) -> bool:
        return name == "smollm2"

    def describe(self, name: str) -> str:
        return "tiny (random-weight stand-in)" if self.is_stand_in(name) else name

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def session_pool(tiny_engine, minilm_engine):
    return SessionPool({"tiny": tiny_engine}, minilm_engine)


@pytest.fixture(scope="session")
def smollm2_engine():
    """The real SmolLM2-135M-Instruct of the embedded default (converted by set-up)."""
    from misalign.inference import EngineConfig, VLLMEngine
    from misalign.inference.smollm2 import prepare
    engine = VLLMEngine(EngineConfig(model=str(prepare()), max_model_len=4096, max_num_seqs=32))
    yield engine
    engine.close()


def schema_errors(schema: str, document: dict) -> list[str]:
    """Where `document` breaks the JSON Schema misalign ships as misalign/schemas/SCHEMA.schema.json
    (its references to the other shipped schemas resolved), as "path: message" lines."""
    import json
    from importlib import resources

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    folder = resources.files("misalign") / "schemas"
    shipped = {f.name: json.loads(f.read_text()) for f in folder.iterdir() if f.name.endswith(".schema.json")}
    registry = Registry().with_resources([(s["$id"], Resource.from_contents(s)) for s in shipped.values()])
    validator = Draft202012Validator(shipped[f"{schema}.schema.json"], registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
