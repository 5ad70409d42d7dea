"""A tiny Llama-architecture causal LM built locally: the stand-in for tests and the CPU demo.

Random weights, so its outputs are noise; everything that prints them says it is a stand-in.
Byte-level BPE tokenizer trained on the prompts given (any text still tokenizes), a chat
template, head size 32 (vLLM's CPU attention rejects 16).  Same seed, same files.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

STAND_IN_NOTE = "random-weight stand-in model built by `misalign-fast models make-tiny`; its outputs mean nothing"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def bundled_prompts() -> list[str]:
    """The sample prompts shipped in the package (misalign/data/sample_prompts.jsonl)."""
    text = resources.files("misalign").joinpath("data/sample_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def make_tiny_model(out_dir, corpus: list[str] | None = None, seed: int = 0, vocab_size: int = 1024,
                    hidden_size: int = 64, layers: int = 2, max_position: int = 4096) -> Path:
    """Build and save the tiny model in `out_dir`; return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = corpus or bundled_prompts()

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|bos|>", eos_token="<|eos|>",
                                        pad_token="<|pad|>", model_max_length=max_position)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=hidden_size // 32,
                         num_key_value_heads=hidden_size // 32, head_dim=32,
                         max_position_embeddings=max_position, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "STAND_IN.txt").write_text(STAND_IN_NOTE + "\n")
    return out
