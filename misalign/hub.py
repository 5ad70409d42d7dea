"""Models named by a Hugging Face Hub id (`path = "mistralai/Mistral-7B-Instruct-v0.3"`, optionally
`revision`), read through huggingface_hub's cache like any Hub library.

A path that is a directory here is a local model, always; otherwise ORG/NAME is a Hub id.  What
runs before any engine (`check`, `plan`, the checkpoint keys) needs only the small files:
`config.json`, the tokenizer's, the chat template, the safetensors index, so `small_files` asks
for those alone, from the cache first (never the weights).  An engine gets the whole snapshot
(`snapshot`): downloaded then, or read from the cache (HF_HUB_OFFLINE=1: the cache only).  The
snapshot folder's name is the commit the revision resolved to, which run.json records.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

from misalign.errors import ConfigError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
SMALL_FILES = ["*.json", "*.jinja", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "merges.txt", "vocab.*"]


def is_hub_id(path: str) -> bool:
    """ORG/NAME that is not a directory here."""
    return bool(HUB_ID.fullmatch(path)) and not Path(path).exists()


@functools.cache
def small_files(repo_id: str, revision: str = "") -> Path:
    """The snapshot folder holding the model's config, tokenizer and template (no weights).
    Resolved once per process: the check, the plan, the keys and the descriptions of one run
    all ask, and online each resolution is a round trip to the Hub (a failure is not kept)."""
    return _download(repo_id, revision, SMALL_FILES)


def snapshot(repo_id: str, revision: str = "") -> Path:
    """The snapshot folder with every file of the model, weights too."""
    return _download(repo_id, revision, None)


def _download(repo_id: str, revision: str, patterns: list[str] | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    where = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else " and the Hub cannot be reached"
        raise ConfigError(f"model {where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}){offline}: "
                          f"download it first (hf download {repo_id}), or give the path of a local directory") from None
    except GatedRepoError:
        raise ConfigError(f"model {where} is gated on the Hub: accept its terms there and log in (hf auth login), "
                          "or set HF_TOKEN") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ConfigError(f"model {where} is not on the Hub (nor a directory here): check the id and the "
                          "revision") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ConfigError(f"model {where}: the Hub did not answer ({type(exc).__name__}); try again, or set "
                          "HF_HUB_OFFLINE=1 to use the cache alone") from None
