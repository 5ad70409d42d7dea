import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from misalign._simhash import scan_lanes
from misalign.dedup import HammingIndex, components, plan_blocks
from reference import brute_pairs

U64 = st.integers(0, 2**64 - 1)
LANES = [w for w in (1, 4, 8) if w <= scan_lanes()]     # each scan this CPU runs


def pairs_of(fps, tau, plan=None, lanes=0):
    index = HammingIndex(tau, plan or plan_blocks(tau, len(fps)), lanes=lanes)
    index.add(np.array(fps, dtype=np.uint64))
    i, j, d = index.pairs()
    return list(zip(i.tolist(), j.tolist(), d.tolist()))


def random_plan(tau, rng):
    """Any valid layout: 3..8 blocks of 1..24 bits tiling 64, radii adding up past tau."""
    m = int(rng.integers(3, 9))
    while True:
        cuts = np.sort(rng.choice(np.arange(1, 64), size=m - 1, replace=False))
        widths = np.diff([0, *cuts, 64]).tolist()
        if max(widths) <= 24:
            break
    radii = rng.integers(0, 4, size=m).tolist()
    while sum(r + 1 for r in radii) <= tau:
        radii[int(rng.integers(0, m))] += 1
    shifts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(shifts, widths, radii))


def near(base, k, rng):
    """`base` with exactly k distinct bits flipped."""
    bits = rng.choice(64, size=k, replace=False)
    return int(base) ^ int(sum(1 << int(b) for b in bits))


@settings(deadline=None)
@given(st.lists(U64, max_size=60), st.integers(0, 16), st.sampled_from(LANES))
def test_random_fingerprints_match_brute_force(fps, tau, lanes):
    assert pairs_of(fps, tau, lanes=lanes) == brute_pairs(fps, tau)


@settings(deadline=None)
@given(st.data(), st.integers(0, 16), st.integers(0, 2**32))
def test_adversarial_fingerprints_match_brute_force(data, tau, seed):
    """Many identical fingerprints and many at distance exactly tau and tau + 1, on any plan."""
    rng = np.random.default_rng(seed)
    base = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
    fps = [base] * data.draw(st.integers(0, 6))
    fps += [near(base, tau, rng) for _ in range(data.draw(st.integers(0, 12)))]
    fps += [near(base, min(tau + 1, 64), rng) for _ in range(data.draw(st.integers(0, 12)))]
    fps += [near(base, int(k), rng) for k in rng.integers(0, 2 * tau + 3, size=data.draw(st.integers(0, 10)))]
    rng.shuffle(fps)
    plan = random_plan(tau, rng)
    assert pairs_of(fps, tau, plan, lanes=LANES[seed % len(LANES)]) == brute_pairs(fps, tau)


def test_larger_random_set_with_planted_neighbours():
    rng = np.random.default_rng(5)
    fps = rng.integers(0, 2**64, size=3000, dtype=np.uint64)
    fps[1000:1100] = [near(fps[k], int(rng.integers(0, 13)), rng) for k in range(100)]
    for tau in (0, 3, 10, 12):
        assert pairs_of(fps, tau) == brute_pairs(fps, tau)


@pytest.mark.parametrize("lanes", [1, 4, 8])
def test_buckets_larger_than_one_scan_are_joined_whole(lanes):
    """Near-copies of three fingerprints fill buckets of hundreds, which the scan takes 32 at a
    time: every pair within tau is still found once, and none twice, with each width of scan."""
    if lanes > scan_lanes():
        pytest.skip(f"this CPU compares at most {scan_lanes()} fingerprints at a time")
    rng = np.random.default_rng(11)
    sources = rng.integers(0, 2**64, size=3, dtype=np.uint64)
    fps = [near(sources[k % 3], int(rng.integers(0, 4)), rng) for k in range(700)]
    fps += rng.integers(0, 2**64, size=300, dtype=np.uint64).tolist()
    for tau in (3, 10):
        expected = brute_pairs(fps, tau)
        assert pairs_of(fps, tau, lanes=lanes) == expected
        index = HammingIndex(tau, plan_blocks(tau, len(fps)), lanes=lanes)
        index.add(np.array(fps, dtype=np.uint64))
        i, j, _ = np.array(expected).T
        assert index.components(2).tolist() == components(len(fps), i, j).tolist()


def test_the_widest_scan_is_the_default_and_a_wider_one_is_refused():
    assert HammingIndex(10, plan_blocks(10)).lanes == scan_lanes() in (1, 4, 8)
    assert HammingIndex(10, plan_blocks(10), lanes=1).lanes == 1
    for lanes in (2, 16, *[w for w in (4, 8) if w > scan_lanes()]):
        with pytest.raises(ValueError, match="lanes must be"):
            HammingIndex(10, plan_blocks(10), lanes=lanes)


@settings(deadline=None)
@given(st.lists(U64, max_size=40), st.lists(U64, max_size=20), st.integers(0, 14))
def test_query_finds_the_nearest_within_tau(stored, queries, tau):
    index = HammingIndex(tau, plan_blocks(tau, 1000))
    index.add(np.array(stored, dtype=np.uint64))
    ids, dists = index.query(np.array(queries, dtype=np.uint64))
    for q, got, dist in zip(queries, ids.tolist(), dists.tolist()):
        d = [bin(q ^ s).count("1") for s in stored]
        within = [(dd, k) for k, dd in enumerate(d) if dd <= tau]
        assert (got, dist) == ((min(within)[1], min(within)[0]) if within else (-1, -1))


@settings(deadline=None)
@given(st.lists(U64, max_size=50), st.integers(0, 14))
def test_add_unique_is_sequential_insert_and_query(fps, tau):
    index = HammingIndex(tau, plan_blocks(tau, 1000))
    added, _ = index.add_unique(np.array(fps, dtype=np.uint64))
    kept = []
    expected = []
    for fp in fps:
        new = all(bin(fp ^ k).count("1") > tau for k in kept)
        expected.append(new)
        if new:
            kept.append(fp)
    assert added.tolist() == expected
    assert index.fingerprints().tolist() == kept


def test_plan_blocks_are_exact_and_tile_64_bits():
    for tau in range(0, 21):
        plan = plan_blocks(tau)
        assert sum(w for _, w, _ in plan) == 64
        assert sum(r + 1 for _, _, r in plan) > tau


def test_invalid_plans_are_refused():
    with pytest.raises(ValueError, match="cannot see every pair"):
        HammingIndex(10, [(0, 16, 0), (16, 16, 0), (32, 16, 0), (48, 16, 0)])
    with pytest.raises(ValueError, match="tile the 64 bits"):
        HammingIndex(3, [(0, 16, 0), (16, 16, 0), (32, 16, 0), (48, 15, 0)])
    with pytest.raises(ValueError, match="tau"):
        HammingIndex(64, plan_blocks(10))
