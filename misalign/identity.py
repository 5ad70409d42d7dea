"""What a stage's output depends on, as digests: tables, files, models, and the key made of them.

A checkpoint is reused only under the same key (misalign.pipeline): the config values the stage
reads, the templates it renders, the identity of each model it asks, the content of its input
and the stage's own version.  The key keeps its parts by name, so that a changed key says what
changed: `reject.threshold 0.5 -> 0.7`, `model tiny config.json 3f2a91c0 -> 77d0e4b2`.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

# Files of a model directory that change what it answers besides the weights: its shape, its
# tokenizer and chat template, its generation defaults.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SHORT = 12                      # hex digits of a digest shown to a user


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def table_digest(table: pa.Table) -> str:
    """sha256 of a table's content (schema, metadata and values), however it is chunked: the same
    rows give the same digest whether read from one file or put together from shards."""
    sink = pa.BufferOutputStream()
    whole = table.combine_chunks()
    with pa.ipc.new_stream(sink, whole.schema) as writer:
        writer.write_table(whole)
    return sha256_bytes(sink.getvalue().to_pybytes())


def weights_digest(path: Path, memo: Path | None = None) -> str:
    """sha256 of a weight file's bytes: two checkpoints of one shape differ only there.  A 15 GB
    checkpoint takes seconds to read, so with `memo` (a SQLite file) the digest is remembered
    under the file's status: device, inode, size, and modification and change times in ns.  The
    change time cannot be set back, so a file rewritten in place or replaced gets a new status
    even where its modification time was copied (cp -p, rsync -a), and is read again."""
    def status() -> str:
        s = path.stat()
        return f"{path.resolve()}|{s.st_dev}|{s.st_ino}|{s.st_size}|{s.st_mtime_ns}|{s.st_ctime_ns}"
    if memo is None:
        return file_digest(path)
    before = status()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(memo, timeout=60)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS digests (status TEXT PRIMARY KEY, sha256 TEXT NOT NULL)")
            row = db.execute("SELECT sha256 FROM digests WHERE status = ?", (before,)).fetchone()
            if row:
                return row[0]
            digest = file_digest(path)
            if status() == before:          # not written to while it was read
                with db:
                    db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?)", (before, digest))
            return digest
    except (sqlite3.Error, OSError):      # a cache that cannot be written: read the file every time
        return file_digest(path)


def model_files(path: Path, memo: Path | None = None) -> dict[str, str]:
    """Short digests of what makes a local model answer as it does: each of MODEL_FILES present,
    and each weight file's bytes (remembered in `memo`, see weights_digest)."""
    found = {}
    for name in MODEL_FILES:
        if (path / name).is_file():
            found[name] = file_digest(path / name)[:SHORT]
    for weights in sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        found[weights.name] = weights_digest(weights, memo)[:SHORT]
    return found


def hub_model(repo_id: str, folder: Path) -> dict[str, str]:
    """A Hub model's identity: its id, the commit its revision resolved to (which fixes every
    file), and the digests of its small files (weights may not be downloaded yet)."""
    return {"hub": repo_id, "revision": folder.name,
            **{name: file_digest(folder / name)[:SHORT] for name in MODEL_FILES if (folder / name).is_file()}}


def local_model(path: str | Path, memo: Path | None = None) -> dict[str, str]:
    """A local model directory's identity: where it is and model_files'."""
    path = Path(path)
    return {"path": str(path.resolve()), **(model_files(path, memo) if path.is_dir() else {})}


@dataclass(frozen=True)
class StageKey:
    """The parts a stage's output depends on, by name (values as text), and their digest."""
    parts: dict

    @property
    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.parts, sort_keys=True, ensure_ascii=False).encode())

    def first_difference(self, old: dict) -> str:
        """What changed from `old` (another key's parts), as one phrase: the first part, in this
        key's order, that differs, e.g. "reject.threshold 0.5 -> 0.7"."""
        for name in [*self.parts, *(n for n in old if n not in self.parts)]:
            before, now = old.get(name), self.parts.get(name)
            if before != now:
                return f"{name} {_show(before)} -> {_show(now)}"
        return "nothing"


def _show(value) -> str:
    """A key's part as a user reads it: sha256 digests (alone or in a phrase) cut to SHORT digits."""
    return "(none)" if value is None else _DIGEST.sub(lambda found: found.group()[:SHORT], str(value))


_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")
