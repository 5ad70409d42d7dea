"""A model's identity (what checkpoint keys and the answer cache are keyed by) sees its weights'
values, not only their shape: a checkpoint retrained or remade in place is another model."""
import os
import sqlite3

from misalign import config as config_mod
from misalign.identity import local_model, weights_digest
from misalign.inference.pool import EnginePool


def model_dir(path, weights: bytes):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_weights_of_one_shape_with_other_values_are_another_model(tmp_path):
    folder = model_dir(tmp_path / "m", b"\x00" * 4096)
    before = local_model(folder)
    status = os.stat(folder / "model.safetensors")
    model_dir(folder, b"\x00" * 4095 + b"\x01")          # same size, same header, other values
    os.utime(folder / "model.safetensors", ns=(status.st_atime_ns, status.st_mtime_ns))    # as cp -p would
    after = local_model(folder)
    assert before["config.json"] == after["config.json"]
    assert before["model.safetensors"] != after["model.safetensors"]


def test_a_weight_digest_is_remembered_by_the_files_status_and_read_again_when_it_changes(tmp_path):
    memo = tmp_path / "cache" / "file_digests.sqlite"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = weights_digest(weights, memo)
    assert weights_digest(weights, memo) == first == weights_digest(weights)
    with sqlite3.connect(memo) as db:
        assert db.execute("SELECT count(*) FROM digests").fetchone() == (1,)
        # the memo is what answers while the status holds: a planted digest is returned as is
        db.execute("UPDATE digests SET sha256 = 'planted'")
    assert weights_digest(weights, memo) == "planted"
    status = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))      # the change time still moves
    assert weights_digest(weights, memo) == weights_digest(weights) != first


def test_an_unwritable_memo_still_gives_the_digest(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x" * 10)
    (tmp_path / "file").write_text("not a directory")
    assert weights_digest(weights, tmp_path / "file" / "memo.sqlite") == weights_digest(weights)


def test_the_stand_in_follows_the_runs_seed_in_one_run_directory(tmp_path, monkeypatch):
    """run.seed draws the stand-in's weights: a new seed in the same run directory is a new model
    (it was built once per directory and kept, so the old seed's answers were reused)."""
    monkeypatch.setenv("MISALIGN_FAST_CACHE", str(tmp_path / "cache"))
    identities = []
    for seed in (0, 1, 0):
        config = config_mod.load(None, [f'run.dir="{tmp_path / "run"}"', f"run.seed={seed}"])
        identities.append(EnginePool(config, tmp_path / "run").identity("tiny"))
    assert identities[0] == identities[2] != identities[1]
    assert identities[0]["model.safetensors"] != identities[1]["model.safetensors"]
    assert identities[0]["engine"].startswith("vllm")        # a vLLM upgrade is another model's answers
