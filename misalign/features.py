"""What SimHash hashes: the `features` setting ("char4", "word2", ...), parsed in one place for
the config, the dedup command and the fingerprinter."""
from __future__ import annotations

import re

DEFAULT_FEATURES = "char4"
FEATURES_HELP = ("charN: shingles of N characters (1-8) after NFKC, casefold and whitespace folding; "
                 "wordN: shingles of N words (1-16), words being runs of letters and digits")


def canonical_features(features: str) -> str:
    """The spelling outputs record: 'char04' -> 'char4'."""
    n, chars = parse_features(features)
    return f"{'char' if chars else 'word'}{n}"


def parse_features(features: str) -> tuple[int, bool]:
    """'char4' -> (4, True), 'word2' -> (2, False); ValueError with the accepted forms otherwise."""
    match = re.fullmatch(r"(char|word)([0-9]{1,2})", features) if isinstance(features, str) else None
    if match:
        n, chars = int(match[2]), match[1] == "char"
        if 1 <= n <= (8 if chars else 16):
            return n, chars
    raise ValueError(f"features must be char1..char8 or word1..word16, got {features!r} ({FEATURES_HELP})")
