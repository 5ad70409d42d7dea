"""The statistics records and the flat form checkpoints and profile.json keep them in."""
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from misalign.stats import EngineUsage, StageCounts

names = st.text(st.characters(exclude_characters="|/", codec="utf-8"), min_size=1, max_size=12)
domains = st.text(st.characters(exclude_characters="|", codec="utf-8"), min_size=1, max_size=20)  # "Hate speech/offensive language"
counts = st.integers(1, 10**6)


@given(st.dictionaries(names.filter(lambda n: not n.startswith(("engine_starts", "rejected "))).filter(
           lambda n: n not in {"prompt_tokens", "generated_tokens", "cached_tokens", "parsed_fallbacks",
                               "startup_seconds"}), counts),
       st.dictionaries(st.tuples(names, names, domains), counts),
       st.dictionaries(st.tuples(names, domains), counts))
def test_a_stages_counts_read_back_from_their_flat_form(totals, per_domain, reasons):
    record = StageCounts(Counter(totals), Counter(per_domain), Counter(reasons))
    usage = EngineUsage(prompt_tokens=5, startup_seconds=1.5, starts=Counter({"tiny": 2}))
    flat = {**usage.flat(), **record.flat()}
    assert StageCounts.read(flat) == record
    assert EngineUsage.read(flat) == usage


def test_reasons_and_domains_as_consumers_read_them():
    counts = StageCounts()
    counts.per_domain[("classified", "safety", "Hate speech/offensive language")] += 3
    counts.reasons[("rejected", "aligned: too short")] += 2
    counts.reasons[("rejected", "misaligned: refused")] += 5
    read = StageCounts.read(counts.flat())
    assert read.domain_counts() == {"classified": Counter({("safety", "Hate speech/offensive language"): 3})}
    assert list(read.by_detail("rejected").items()) == [("misaligned: refused", 5), ("aligned: too short", 2)]
    # a profile written before the records kept rejections as "rejected SIDE: REASON"
    assert StageCounts.read({"rejected aligned: too short": 4}).by_detail("rejected") == {"aligned: too short": 4}
