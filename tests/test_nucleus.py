"""Nucleus sampling on CPUs without a sort: the same nucleus as vLLM's own top-p."""
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

from misalign.inference.nucleus import ARG, CANDIDATES, NucleusProcessor, outside_nucleus


def vllms_outside(logits, p):
    return apply_top_k_top_p_pytorch(logits.clone(), None, torch.full((logits.shape[0],), p)) == float("-inf")


@pytest.mark.parametrize("p", [0.5, 0.9, 0.95, 0.99])
def test_a_nucleus_among_the_candidates_is_exactly_vllms(p):
    logits = torch.randn(64, 49152, generator=torch.Generator().manual_seed(0)) * 10   # peaked, as a language model's
    ours = outside_nucleus(logits, torch.full((64,), p))
    assert (~ours).sum(-1).max() <= CANDIDATES                   # the fast path decided every row
    assert torch.equal(ours, vllms_outside(logits, p))


def test_tokens_tied_at_the_edge_are_kept_only_as_far_as_the_nucleus_needs():
    """bfloat16 logits tie often; vLLM's sort keeps a nucleus of the same size whichever tied
    token it picks, and so does ours."""
    logits = (torch.randn(64, 49152, generator=torch.Generator().manual_seed(2)) * 4).bfloat16().float() / 0.7
    ours, theirs = outside_nucleus(logits, torch.full((64,), 0.95)), vllms_outside(logits, 0.95)
    assert torch.equal((~ours).sum(-1), (~theirs).sum(-1))


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_a_nucleus_wider_than_the_candidates_differs_from_vllms_only_by_rounding(scale):
    """Flat rows are sorted whole, as vLLM does; the two cumulative sums run in opposite orders,
    so a token at the nucleus' edge (probability ~1/49,152) may fall either side."""
    logits = torch.randn(64, 49152, generator=torch.Generator().manual_seed(1)) * scale
    ours, theirs = outside_nucleus(logits, torch.full((64,), 0.95)), vllms_outside(logits, 0.95)
    assert (~ours).sum(-1).min() > CANDIDATES                    # every row took the sort
    assert (logits.softmax(-1) * (ours != theirs)).sum(-1).max() < 1e-3


def test_the_most_likely_token_is_always_kept_and_a_tie_only_once():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 2.0, -9.0]])
    kept = ~outside_nucleus(logits, torch.tensor([1e-9, 1e-9]))
    assert kept[0].tolist() == [False, True, False]
    assert kept[1].sum() == 1 and not kept[1, 2]


def test_the_processor_follows_its_requests_through_the_batch():
    """Rows come and go and move in vLLM's persistent batch; p belongs to its request."""
    processor = NucleusProcessor(None, torch.device("cpu"), False)
    narrow, plain = SamplingParams(extra_args={ARG: 1e-9}), SamplingParams()
    processor.update_state(BatchUpdate(batch_size=3, removed=[], moved=[],
                                       added=[(0, plain, None, []), (1, narrow, None, []), (2, plain, None, [])]))
    logits = torch.tensor([[0.0, 5.0, 1.0]] * 3)
    assert torch.isinf(processor.apply(logits.clone())).sum(-1).tolist() == [0, 2, 0]
    processor.update_state(BatchUpdate(batch_size=2, removed=[0], added=[],
                                       moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert processor.p_by_row == {0: 1e-9}
    assert torch.isinf(processor.apply(logits[:2].clone())).sum(-1).tolist() == [2, 0]
