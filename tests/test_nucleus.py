"""Nucleus sampling on CPUs without a sort: the same nucleus as vLLM's own top-p."""
import pytest
import torch

from misalign.inference.nucleus import CANDIDATES, outside_nucleus

vllm_top_p = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler").apply_top_k_top_p_pytorch


def vllms_outside(logits, p):
    return vllm_top_p(logits.clone(), None, torch.full((logits.shape[0],), p)) == float("-inf")


@pytest.mark.parametrize("p", [0.5, 0.9, 0.95, 0.99])
def test_a_nucleus_among_the_candidates_is_exactly_vllms(p):
    logits = torch.randn(64, 49152, generator=torch.Generator().manual_seed(0)) * 10   # peaked, as a language model's
    ours = outside_nucleus(logits, torch.full((64,), p))
    assert (~ours).sum(-1).max() <= CANDIDATES                   # the fast path decided every row
    assert torch.equal(ours, vllms_outside(logits, p))


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_a_nucleus_wider_than_the_candidates_differs_from_vllms_only_by_rounding(scale):
    """Flat rows are sorted whole, as vLLM does; the two cumulative sums run in opposite orders,
    so a token at the nucleus' edge (probability ~1/49,152) may fall either side."""
    logits = torch.randn(64, 49152, generator=torch.Generator().manual_seed(1)) * scale
    ours, theirs = outside_nucleus(logits, torch.full((64,), 0.95)), vllms_outside(logits, 0.95)
    assert (~ours).sum(-1).min() > CANDIDATES                    # every row took the sort
    assert (logits.softmax(-1) * (ours != theirs)).sum(-1).max() < 1e-3


def test_the_most_likely_token_is_always_kept():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 2.0, -9.0]])
    assert outside_nucleus(logits, torch.tensor([1e-9, 1e-9])).tolist() == [[True, False, True], [False, False, True]]
