import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from misalign.dedup import Deduplicator, HammingIndex, NearDuplicateFilter, components, plan_blocks


def test_first_of_each_cluster_is_kept_in_order():
    texts = ["How do I pick a lock?", "Tell me about tea.", "how do I pick a LOCK??",
             "tell me about tea", "Something else entirely, about gardens."]
    result = Deduplicator(tau=10).fit(texts)
    assert result.keep.tolist() == [True, True, False, False, True]
    assert result.representative.tolist() == [0, 1, 0, 1, 4]
    assert result.cluster.tolist() == [0, 1, 0, 1, 2]
    assert result.distance.tolist() == [0, 0, 4, 6, 0]     # character 4-grams see the punctuation
    assert result.n_clusters == 3
    words = Deduplicator(tau=3, features="word2").fit(texts)
    assert words.keep.tolist() == result.keep.tolist() and words.distance.tolist() == [0, 0, 0, 0, 0]


def test_clusters_chain_through_neighbours():
    fps = np.array([0, 0b111, 0b111111, 2**64 - 1], dtype=np.uint64)   # a chain: 0 ~ 7 ~ 63
    result = Deduplicator(tau=3).fit_fingerprints(fps)
    assert result.representative.tolist() == [0, 0, 0, 3]
    assert result.distance.tolist() == [0, 3, 6, 0]


def test_empty_texts_stand_alone_unless_merged():
    texts = ["", "some words here", " \n ", ""]
    assert Deduplicator().fit(texts).keep.tolist() == [True, True, True, True]
    assert Deduplicator(merge_empty=True).fit(texts).keep.tolist() == [True, True, False, False]
    wordless = ["", "some words here", "!!", ""]                     # words: punctuation alone is empty
    assert Deduplicator(merge_empty=True, features="word2").fit(wordless).keep.tolist() == [True, True, False, False]


def test_components_label_is_smallest_member():
    labels = components(6, np.array([5, 3, 4]), np.array([3, 1, 5]))
    assert labels.tolist() == [0, 1, 2, 1, 1, 1]


def test_filter_refuses_texts_near_anything_kept():
    f = NearDuplicateFilter(tau=10)
    f.add(["Explain how vaccines train the immune system."])
    added = f.add_if_new(["explain how vaccines train the immune system!",
                          "What is the capital of Peru?", "what is the capital of peru",
                          ""])
    assert added.tolist() == [False, True, False, False]
    assert len(f) == 2
    assert f.seen(["WHAT IS THE CAPITAL OF PERU?", "An unrelated question about boats."]).tolist() == [True, False]


@settings(deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=60), st.integers(0, 12), st.integers(0, 2**32))
def test_repeated_fingerprints_give_the_clusters_of_every_pair(picks, tau, seed):
    """Rows that repeat a fingerprint join once, through its first row; the clusters are the
    connected components of every pair of rows within tau, as a brute-force join finds them."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=8, dtype=np.uint64)
    base[1::2] = base[0::2] ^ np.uint64(0b1011)                    # near pairs, 3 bits apart
    fps = base[picks]
    n = len(fps)
    pairs = np.array([(a, b) for a in range(n) for b in range(a + 1, n)
                      if bin(int(fps[a]) ^ int(fps[b])).count("1") <= tau], dtype=np.int64).reshape(-1, 2)
    expected = components(n, pairs[:, 0], pairs[:, 1])
    assert Deduplicator(tau=tau).fit_fingerprints(fps).representative.tolist() == expected.tolist()


def test_four_hundred_thousand_copies_cluster_in_linear_memory():
    far = 2**62 + 2**61 + 2**60                                     # 5 or 6 bits from 7
    fps = np.repeat(np.array([7, far, far + 1], dtype=np.uint64), 400_000 // 3)
    result = Deduplicator(tau=3).fit_fingerprints(fps)
    assert result.n_clusters == 2 and result.keep[[0, 133_333]].all()


@settings(deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 14), st.integers(1, 3))
def test_unions_made_as_pairs_are_found_give_the_components_of_every_listed_pair(seed, tau, threads):
    """Near-copies (up to 3 bits from one of 12 sources) unioned as the join finds them, on 1-3
    threads, make the clusters that listing every pair and then union-find makes."""
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, 2**63, 12, dtype=np.int64).view(np.uint64)
    fps = sources[rng.integers(0, 12, 300)]
    for _ in range(3):
        fps = fps ^ np.left_shift(np.uint64(1), rng.integers(0, 64, len(fps)).astype(np.uint64))
    index = HammingIndex(tau, plan_blocks(tau, len(fps)))
    index.add(fps)
    i, j, _ = index.pairs()
    assert index.components(threads).tolist() == components(len(fps), i, j).tolist()
    assert Deduplicator(tau=tau, threads=threads).fit_fingerprints(fps).representative.tolist() == \
        components(len(fps), i, j).tolist()
