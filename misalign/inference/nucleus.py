"""Nucleus (top-p) sampling on vLLM's CPU backend without sorting the vocabulary.

vLLM's CPU sampler applies top-p by sorting every sequence's whole vocabulary at every step: for
SmolLM2's 49,152 tokens and 64 sequences that is ~130-140 ms a step on 2 cores, more than the
model's forward pass, and top_p = 0.95 nearly halved decoding (benchmarks/bench_nucleus.py).  This logits processor keeps the same nucleus (to rounding, and to which of tokens
tied at its edge), the fewest most likely tokens whose probabilities reach p, found among the
CANDIDATES most likely ones with the row's log-sum-exp; only a row whose nucleus is wider than
that is sorted whole.  vLLM applies argmax-invariant processors after the temperature and before
its own top-k/top-p, where top-p belongs, so the engine asks vLLM for top_p = 1 and hands p to
this processor instead (CPUs only: on GPUs vLLM's kernels need no sort).  Imported by the engine
only: it imports vLLM.
"""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

ARG = "misalign_nucleus_p"      # SamplingParams.extra_args key carrying a request's p
CANDIDATES = 256                # covers the nucleus of nearly every step; the mask costs ~1/9 of vLLM's sort


def outside_nucleus(logits: torch.Tensor, p: torch.Tensor, candidates: int = CANDIDATES) -> torch.Tensor:
    """True where a token of each row of `logits` lies outside the row's nucleus of mass p: the
    fewest most likely tokens whose probabilities sum to at least p (vLLM's rule, which always
    keeps the most likely token).  Counted by position, as vLLM's sort does: of tokens tied at
    the nucleus' edge (common in bfloat16) only as many as it needs are kept."""
    k = min(candidates, logits.shape[-1])
    top = logits.topk(k, dim=-1)
    mass = (top.values - logits.logsumexp(dim=-1, keepdim=True)).exp().cumsum(dim=-1)
    before = (mass < p.unsqueeze(1)).sum(dim=-1, keepdim=True)      # tokens before the mass reaches p
    beyond = torch.arange(k) > before                               # by rank: past the token that reaches p
    outside = torch.ones_like(logits, dtype=torch.bool).scatter_(1, top.indices, beyond)
    wide = before.squeeze(1) >= k
    if k < logits.shape[-1] and wide.any():                         # the nucleus runs past the candidates
        outside[wide] = outside_nucleus(logits[wide], p[wide], logits.shape[-1])
    return outside


class NucleusProcessor(LogitsProcessor):
    """Masks what lies outside each request's nucleus, for requests whose extra_args carry ARG."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.p_by_row: dict[int, float] = {}

    @classmethod
    def validate_params(cls, params) -> None:
        p = (params.extra_args or {}).get(ARG)
        if p is not None and not 0 < p <= 1:
            raise ValueError(f"{ARG} must be in (0, 1], got {p}")

    def is_argmax_invariant(self) -> bool:
        return True                     # the most likely token is always kept

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.p_by_row, batch_update, lambda params, _prompt, _output:
                             (params.extra_args or {}).get(ARG))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.p_by_row:
            return logits
        rows = torch.tensor(list(self.p_by_row), dtype=torch.long)
        p = torch.tensor(list(self.p_by_row.values()), dtype=torch.float32)
        chosen = logits[rows]
        logits[rows] = chosen.masked_fill_(outside_nucleus(chosen.float(), p), float("-inf"))
        return logits
