"""The form a fine-tuned model is served in: merged into one GGUF (the default) or its
base plus the LoRA adapter, as trained.

A merged model is made once per (base, adapter, type) and cached under a name derived
from both files' contents, first in the model's own folder (``.served/``), else in the
user's cache. Every worker that starts finds it there; workers starting together take a
file lock, so one merges and the others wait for its file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.finetune_manifest import file_sha256
from models.gguf_header import gguf_architecture
from models.merge import FILE_TYPES, merge
from shiftdown.errors import ModelError
from shiftdown.settings import SERVE_TYPES

# Part of every cached file's key: raise it when the merge's output changes, so that an
# older merge is never served for a newer one.
MERGE_FORMAT = 1


def merged_file_name(base: Path, adapter: Path, kind: str) -> str:
    """The cache name of base + adapter merged into ``kind``: it changes with either file."""
    key = f"{MERGE_FORMAT}:{file_sha256(base)}:{file_sha256(adapter)}:{kind}"
    return f"merged-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.gguf"


def user_cache() -> Path:
    """shiftdown's folder in the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "shiftdown"


def cache_folders(adapter: Path) -> list[Path]:
    """Where merged models are looked for, in order: beside the adapter, then the user's."""
    return [adapter.resolve().parent / ".served", user_cache() / "served"]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def find_merged(base: Path, adapter: Path, kind: str) -> Path | None:
    """The cached merge of base + adapter into ``kind``, or None when there is none yet."""
    name = merged_file_name(base, adapter, kind)
    for folder in cache_folders(adapter):
        if (folder / name).is_file():
            return folder / name
    return None


def merged_model(base: Path, adapter: Path, kind: str, threads: int = 0) -> Path:
    """base + adapter merged into ``kind``: the cached file, made first if there is none."""
    found = find_merged(base, adapter, kind)
    if found is not None:
        return found
    folder = next((f for f in cache_folders(adapter) if _writable(f)), None)
    if folder is None:
        raise OSError(f"no writable folder for a merged model: {cache_folders(adapter)}")
    target = folder / merged_file_name(base, adapter, kind)
    with _locked(target.with_name(target.name + ".lock")):
        # Another process may have made it while this one waited for the lock.
        if not target.is_file():
            # Holding the lock, no merge of this target runs: scratch folders named
            # after it are a killed merge's (each the size of the model in F16).
            for stale in folder.glob(f".merge-{target.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            merge(base, adapter, target, kind, threads)
    return target


def check_adapter(base: Path, adapter: Path) -> None:
    """Refuse an adapter made for another architecture than its base's.

    llama.cpp refuses it too ("model arch and LoRA arch mismatch"), but llama-cpp-python
    does not notice, and the first decode then dies with signal 11 and no message.
    """
    theirs, ours = gguf_architecture(adapter), gguf_architecture(base)
    if theirs != ours:
        raise ModelError(
            f"the adapter {adapter} is for a {theirs} model and its base {base.name} is "
            f"{ours}: fine-tune again on this base, or serve the base it was made for"
        )


def served_files(
    gguf_path: str, adapter_path: str | None, serve_type: str, threads: int = 0
) -> tuple[str, str | None]:
    """(GGUF, adapter) to load for a model version in the ``serve_type`` form.

    A merge that cannot be made (no writable folder, an adapter that does not fit the
    base, llama.cpp refusing the type) is a ModelError, and so is an adapter of another
    architecture than the base's.
    """
    if adapter_path is None:
        return gguf_path, None
    check_adapter(Path(gguf_path), Path(adapter_path))
    if serve_type == "adapter":
        return gguf_path, adapter_path
    if serve_type not in FILE_TYPES:
        raise ModelError(f"unknown serve type {serve_type!r}: one of {', '.join(SERVE_TYPES)}")
    try:
        merged = merged_model(Path(gguf_path), Path(adapter_path), serve_type, threads)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"could not merge {adapter_path} into {serve_type}: {exc}") from exc
    return str(merged), None
