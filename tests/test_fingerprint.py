import os

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings, strategies as st

from misalign import _simhash
from misalign.dedup import fingerprint
from misalign.dedup import parse_features
from reference import char_simhash, simhash

TEXTS = [
    "How do I pick a lock?",
    "Ünïcödé façade, ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ letters",
    "Straße STRASSE strasse",
    "emoji 🙂 between words, and 中文字符 too",
    "one",
    "",
    "!!! ... ???",
    "  leading and trailing separators  \n\t",
    "x" * 300 + " long word shingle over the 240-byte hash threshold " + "y" * 1200,
    " ".join(f"w{i % 50}, and" for i in range(400)),    # over 127 shingles: the counters spill
    "Tabs\tand\x1c separators,\u2028 line\u00a0breaks \r\n  and   runs",
    "Café “quoted” — it’s 20°, naïve",                   # characters normalisation leaves alone
    "µ-law, ß, ﬁ and e\u0301 (combining), \uac00\u11a8 jamo",   # ones it changes or composes
    "Hi!",
    "x" * 2100,                                          # over 127 x 16 character shingles
]


@pytest.mark.parametrize("length", [*range(0, 260), 511, 512, 1023, 1024, 1025, 2047, 2100])
def test_xxh3_matches_reference(length):
    data = os.urandom(length)
    for seed in (0, 1, 2**64 - 1, 0x9E3779B97F4A7C15):
        assert _simhash.xxh3_64(data, seed) == xxhash.xxh3_64_intdigest(data, seed)


@pytest.mark.parametrize("ngram", [1, 2, 3, 5])
def test_word_fingerprint_matches_python_reference(ngram):
    got = fingerprint(TEXTS, f"word{ngram}", seed=7)
    assert got.dtype == np.uint64
    assert got.tolist() == [simhash(t, ngram, 7) for t in TEXTS]


def char_fingerprint(texts, n, seed=0, vector=True):
    return _simhash.fingerprint(texts, n=n, chars=True, seed=seed, vector=vector)[0].tolist()


# Both bit counters: four abreast (AVX2, where the CPU has it) and the portable one.
COUNTERS = pytest.mark.parametrize("vector", [True, False], ids=["vector", "portable"])


@COUNTERS
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_char_fingerprint_matches_python_reference(n, vector):
    for seed in (0, 7, 2**64 - 1):
        assert char_fingerprint(TEXTS, n, seed, vector) == [char_simhash(t, n, seed) for t in TEXTS]
    assert fingerprint(TEXTS, f"char{n}").tolist() == char_fingerprint(TEXTS, n)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_vector_counter_is_used_where_the_cpu_has_avx2():
    """Where it is not, the "vector" cases above and below run the portable counter twice."""
    assert _simhash.counts_four_abreast() == ("avx2" in open("/proc/cpuinfo").read().split())


# Characters where normalisation is context-sensitive: combining marks (which reorder and
# compose with the letter before them), Hangul jamo, compatibility forms, case-folding ones,
# beside ASCII and characters that normalisation leaves alone.
TRICKY = list("aeEo AZ.\t\n") + ["\u0301", "\u0308", "\u0327", "\u0338", "\u0323", "\u1100", "\u1161",
                                "\u11a8", "\uac00", "\u0b47", "\u0b3e", "é", "’", "—", "°", "µ", "ß", "ﬁ",
                                "…", "，", "Ａ", "\u00a0", "\u3000", "İ", "Σ", "ς", "\U0001d15e", "🙂"]


@settings(deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(TRICKY), max_size=40), max_size=8), st.integers(1, 8))
def test_char_fingerprint_normalises_only_what_it_must(texts, n):
    """Text is normalised stretch by stretch (around the characters that are not inert): the
    same as normalising it whole."""
    assert fingerprint(texts, f"char{n}", seed=5).tolist() == [char_simhash(t, n, 5) for t in texts]


@COUNTERS
def test_char_majority_is_exact_at_every_length(vector):
    """Every length from 1 to 300 characters (each remainder of 16 and of 32, each threshold),
    and around each spill: the portable counter's byte lanes (every 127 x 16 shingles), the
    four-abreast counter's planes (every 31 x 32) and its chunks of 512 hashes."""
    rng = np.random.default_rng(3)
    texts = ["".join(rng.choice(list("ab c"), size=k)) for k in range(1, 301)]
    lengths = (511, 512, 513, 991, 992, 993, 1023, 1024, 1025, 1983, 1984, 1985, 2031, 2032, 2033, 4100)
    texts += ["".join(rng.choice(list("abcd"), size=k)) for k in lengths]
    texts += ["a" * k for k in (992, 993, 3000)]              # every count at its maximum
    assert char_fingerprint(texts, 1, vector=vector) == [char_simhash(t, 1) for t in texts]


@COUNTERS
@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_char_majority_is_exact_on_long_mixed_texts(n, vector):
    """Longer than a chunk of hashes (512) and a spill (992): ASCII, non-ASCII characters read
    in place (é, astral ones) and ones normalisation changes, so that hashes of both kinds
    cross the boundaries."""
    rng = np.random.default_rng(n)
    alphabet = list("abc d") + ["é", "ß", "🙂", "中", "ﬁ"]
    texts = ["".join(rng.choice(alphabet, size=k)) for k in (511 + n, 993 + n, 1100, 2100)]
    texts += ["".join(rng.choice(list("abcd"), size=k)) for k in (512 + n - 1, 992 + n - 1, 1985 + n - 1)]
    assert char_fingerprint(texts, n, 9, vector) == [char_simhash(t, n, 9) for t in texts]


text_alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))


@settings(deadline=None)
@given(st.lists(st.text(alphabet=text_alphabet, max_size=80), max_size=12),
       st.integers(1, 4), st.integers(0, 2**64 - 1))
def test_word_fingerprint_property(texts, ngram, seed):
    assert fingerprint(texts, f"word{ngram}", seed=seed).tolist() == [simhash(t, ngram, seed) for t in texts]


@settings(deadline=None)
@given(st.lists(st.text(alphabet=text_alphabet, max_size=80), max_size=12),
       st.integers(1, 8), st.integers(0, 2**64 - 1), st.booleans())
def test_char_fingerprint_property(texts, n, seed, vector):
    assert char_fingerprint(texts, n, seed, vector) == [char_simhash(t, n, seed) for t in texts]


@pytest.mark.parametrize("features", ["char4", "word2"])
def test_arrow_buffers_match_python_strings(features):
    texts = TEXTS * 3
    expected = fingerprint(texts, features)
    for array in (pa.array(texts, pa.string()), pa.array(texts, pa.large_string())):
        assert fingerprint(array, features).tolist() == expected.tolist()
        assert fingerprint(array.slice(4, 11), features).tolist() == expected[4:15].tolist()
    chunked = pa.chunked_array([texts[:5], texts[5:], []])
    assert fingerprint(chunked, features).tolist() == expected.tolist()


@pytest.mark.parametrize("features", ["char4", "word2"])
def test_threads_do_not_change_results(features):
    texts = [f"prompt number {i} about {i % 17} things, “quoted”" for i in range(5000)]
    assert fingerprint(texts, features, threads=1).tolist() == fingerprint(texts, features, threads=2).tolist()


def test_empty_and_wordless_texts_have_fingerprint_zero_and_no_shingles():
    fps, shingles = _simhash.fingerprint(["", "?!", "a b"], n=2)
    assert fps[:2].tolist() == [0, 0]
    assert shingles.tolist() == [0, 0, 1]
    fps, shingles = _simhash.fingerprint(["", " \n\t ", "?!", "a b c"], n=4, chars=True)
    assert fps[:2].tolist() == [0, 0]
    assert shingles.tolist() == [0, 0, 1, 2]


def test_fewer_words_than_ngram_use_the_words_they_have():
    only = xxhash.xxh3_64_intdigest(b"hello world", 0)
    assert fingerprint(["Hello, WORLD!"], "word5").tolist() == [only]


def test_word_normalisation_merges_case_width_and_punctuation():
    a, b, c = fingerprint(["Full width", "ＦＵＬＬ  WIDTH!", "full wide"], "word2")
    assert a == b != c


def test_char_normalisation_merges_case_width_and_whitespace_but_not_punctuation():
    a, b, c = fingerprint(["Full width", " ＦＵＬＬ \n\t WIDTH ", "Full width!"])
    assert a == b != c


def test_features_are_parsed_in_one_place():
    assert parse_features("char4") == (4, True)
    assert parse_features("word16") == (16, False)
    for bad in ("char9", "word0", "chars4", "4", "", None):
        with pytest.raises(ValueError, match="char1..char8 or word1..word16"):
            parse_features(bad)


def test_seed_changes_fingerprints():
    assert fingerprint(["a seeded text"], seed=1)[0] != fingerprint(["a seeded text"], seed=2)[0]


def test_bad_items_are_named():
    with pytest.raises(TypeError, match="item 1 is int"):
        fingerprint(["ok", 3])
    with pytest.raises(TypeError, match="item 0 is NoneType"):
        fingerprint([None])
    for features in ("char4", "word2"):
        with pytest.raises(ValueError, match="item 1 is not valid Unicode"):
            fingerprint(["ok", "bad \udcff surrogate"], features)
    with pytest.raises(ValueError, match="item 2 is null"):
        fingerprint(pa.array(["a", "b", None]))
    with pytest.raises(TypeError, match="expected string"):
        fingerprint(pa.array([1, 2]))
    with pytest.raises(ValueError, match="n must be at least 1 and at most 8"):
        _simhash.fingerprint(["x"], n=9, chars=True)


def test_invalid_utf8_in_arrow_buffer_is_named():
    bad = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(np.array([0, 2, 4], np.int32)),
                                                 pa.py_buffer(b"ok\xff\xfe")])
    with pytest.raises(ValueError, match="item 1 is not valid UTF-8"):
        fingerprint(bad)
