import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MISALIGN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def paper_prompts_csv():
    """The paper's 6,000 dev prompts; external data, so tests that need it skip without it."""
    path = SHARED_DATA / "paper_prompts_dev.csv"
    if not path.exists():
        pytest.skip(f"{path} is absent (it lives in ../shared, beside a developer checkout)")
    return path
