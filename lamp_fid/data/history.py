"""Frozen history embeddings for PPlug: every distinct item text of a file embedded once, kept on disk.

:func:`open_history` gives, for each example of a store, the frozen encoder's embedding of every item
of its profile, in profile order (one L2-normalised vector per item: ``cls`` or ``mean`` pooling,
inputs truncated to ``max_length`` tokens). All items are used by default; ``max_items`` keeps the
last n items of the profile list, as the released code does with 512 (a slice in file order: no date
is read, so these are the most recent only where a file lists a profile oldest first).

The embeddings are computed once per file and cached, keyed by everything they depend on: the
store's content fingerprint, the task, the item format (with or without the item's output), the
encoder's *content* (a digest of every file of its folder: a copied folder hits the cache, retrained
weights miss it), pooling, ``max_length``, the stored dtype and :data:`FORMAT`. Each distinct item
text is embedded once: items repeat across a user's questions, and across the files of one split
(the time split's train/dev/test share users), so a build first copies the rows that a sibling cache
of the same encoder settings already holds (matched by a 16-byte blake2b of the text) and embeds only
the rest. A row copied from a sibling may differ from a fresh embedding in the last float bits
(other batch shapes), as dense rankings may.

Layout of ``<cache_dir>/history/<settings digest>/<task>-<key digest>/`` (written in a temp folder and
renamed into place; ``meta.json`` holds the key and the size and digest of every other file, checked
on each open, and a mismatch rebuilds the folder): ``matrix.npy`` ``[M, d]`` (float16 or float32,
memory-mapped on read), ``digests.npy`` ``[M]`` (``S16``, the text digests), ``rows.npy`` (int32 row
of each profile item, all examples back to back), ``offsets.npy`` (int64, n + 1), ``ids.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

from lamp_fid.data.example import Example
from lamp_fid.data.store import _lock, file_digest
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.pplug import Pooling, check_pooling, pool
from lamp_fid.retrieval.dense import MAX_LENGTH, DenseRetriever
from lamp_fid.tasks import Task, get_task

FORMAT = 1  # bump when the layout or the embeddings' meaning changes: old caches are then ignored
DTYPES = ("float16", "float32")
_FILES = ("matrix.npy", "digests.npy", "rows.npy", "offsets.npy", "ids.json")


# --- the item text ----------------------------------------------------------------------------

def history_texts(task: str | Task, example: Example, with_outputs: bool = True,
                  source: str = "<questions>") -> list[str]:
    """The text of each profile item as PPlug embeds it (``task.history``): with the item's output
    (the paper's format, default) or without (the released code's text)."""
    task = get_task(task)
    template = task.history[0 if with_outputs else 1]
    texts = []
    for item in example.profile:
        try:
            texts.append(template.format_map(item))
        except KeyError as err:
            raise LaMPDataError(source, f"profile item {item.get('id')!r} has no {err.args[0]!r} field",
                                record_id=example.id, field=err.args[0]) from None
    return texts


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """16-byte blake2b of each text's UTF-8 bytes, as an ``S16`` array (sortable, searchable)."""
    return np.array([hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts],
                    dtype="S16")


# --- the encoder --------------------------------------------------------------------------------

def encoder_content(encoder: str, cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """What identifies an encoder: the digest of every file (hidden ones skipped) of its local folder,
    or of the hub name's snapshot in the local HF cache; ``None`` if neither exists (yet).

    Digests are memoized under ``cache_dir`` by (path, size, mtime, inode), as the store's are.
    """
    path = Path(encoder).expanduser()
    if not path.exists():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(encoder, local_files_only=True))
        except Exception:  # not a hub name, or not downloaded: the caller loads it, then asks again
            return None
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts)) \
        if path.is_dir() else [path]
    return {"files": {str(p.relative_to(path)) if path.is_dir() else p.name: file_digest(p, cache_dir)
                      for p in files}}


class HistoryEncoder(DenseRetriever):
    """The frozen history encoder: the dense retriever's loading and exact-length batching, with
    ``cls`` or ``mean`` pooling and L2-normalised outputs."""

    name = "history"

    def __init__(self, task: str | Task, encoder: str, pooling: Pooling = "cls", **options):
        super().__init__(task, encoder=encoder, **options)
        self.pooling = check_pooling(pooling)

    @torch.inference_mode()
    def _encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self._model(**batch).last_hidden_state
        return pool(hidden, batch["attention_mask"], self.pooling).float().cpu()


# --- the cached embeddings ----------------------------------------------------------------------

class HistoryEmbeddings:
    """The frozen embeddings of every example's history, read from a verified cache folder.

    ``embeddings(i)`` is ``[n_i, d]`` (float32) in profile order; ``rows_of(i)`` the row indices into
    the memory-mapped ``matrix`` ``[M, d]`` of distinct texts. ``embedded`` and ``reused`` count the
    texts this open embedded and copied from sibling caches (both 0 when the cache was read back).
    """

    def __init__(self, directory: str | Path, meta: dict, embedded: int = 0, reused: int = 0):
        self.directory, self.meta = Path(directory), meta
        self.embedded, self.reused = embedded, reused
        self.ids: list[str] = json.loads((self.directory / "ids.json").read_text())
        self.offsets = np.load(self.directory / "offsets.npy", allow_pickle=False)
        self.rows = np.load(self.directory / "rows.npy", allow_pickle=False)
        self.rows.flags.writeable = False
        self._matrix = None
        self._index: dict[str, int] | None = None

    @property
    def matrix(self) -> np.ndarray:
        """``[M, d]`` embeddings of the distinct item texts (read-only memory map)."""
        if self._matrix is None:
            self._matrix = np.load(self.directory / "matrix.npy", mmap_mode="r", allow_pickle=False)
        return self._matrix

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, example_id: str) -> int:
        """Position of the example with id ``example_id`` (KeyError if absent)."""
        if self._index is None:
            self._index = {eid: i for i, eid in enumerate(self.ids)}
        return self._index[example_id]

    def rows_of(self, i: int, max_items: int | None = None) -> np.ndarray:
        """Rows into ``matrix`` of example ``i``'s items in profile order (the last ``max_items``)."""
        rows = self.rows[self.offsets[i]:self.offsets[i + 1]]
        return rows if max_items is None else rows[max(len(rows) - max_items, 0):]

    def embeddings(self, i: int, max_items: int | None = None,
                   keep: np.ndarray | None = None) -> torch.Tensor:
        """``[n_i, d]`` float32 embeddings of example ``i``'s items, in profile order; ``keep`` selects
        positions among them (e.g. :func:`history_dropout`'s)."""
        rows = self.rows_of(i, max_items)
        if keep is not None:
            rows = rows[keep]
        return torch.from_numpy(np.asarray(self.matrix[rows], dtype=np.float32))

    def __getstate__(self) -> dict:
        # DataLoader workers read the folder again instead of receiving copies of its arrays
        return {"directory": self.directory, "meta": self.meta, "embedded": self.embedded,
                "reused": self.reused}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def pad_histories(histories: Sequence[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[n_b, dim]`` histories into ``hist`` ``[B, N, dim]`` and ``hist_mask`` ``[B, N]`` (bool),
    N the longest (0 if every history is empty)."""
    N = max((len(h) for h in histories), default=0)
    hist = torch.zeros(len(histories), N, dim)
    mask = torch.zeros(len(histories), N, dtype=torch.bool)
    for b, h in enumerate(histories):
        hist[b, :len(h)] = h
        mask[b, :len(h)] = True
    return hist, mask


def history_dropout(n: int, seed: int, epoch: int, index: int, p: float = 1.0) -> np.ndarray:
    """Positions (ascending) of the ``n`` history rows that example ``index`` keeps in ``epoch``.

    With probability ``p`` (and only when ``n > 2``) a random 1 item to 50 % of the items are dropped,
    as the released code's augmentation does (it writes 10 such copies of each training example;
    here one is drawn per epoch). The draw depends only on ``(seed, epoch, index)``: a resumed run
    repeats it exactly, whatever the worker or rank.
    """
    if min(seed, epoch, index) < 0:
        raise LaMPError(f"history dropout needs seed, epoch and index >= 0, got {seed}, {epoch}, {index}")
    if not 0 <= p <= 1:
        raise LaMPError(f"history dropout probability must be in [0, 1], got {p}")
    keep = np.arange(n)
    if n <= 2:
        return keep
    rng = np.random.default_rng([seed, epoch, index])
    if rng.random() >= p:
        return keep
    drop = int(rng.integers(1, n // 2 + 1))  # 1 .. floor(n/2) items
    return np.sort(rng.choice(n, n - drop, replace=False))


# --- the cache --------------------------------------------------------------------------------

def _digest(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _source(store) -> str:
    return str(getattr(store, "questions_path", None) or "<questions>")


def _verified(folder: Path, key: Mapping | None = None) -> dict | None:
    """The folder's meta if it is complete and intact (and has ``key`` when given), else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if (key is not None and meta.get("key") != key) or set(meta.get("files", {})) != set(_FILES):
            return None
        for name, (size, digest) in meta["files"].items():
            path = folder / name
            if path.stat().st_size != size or file_digest(path) != digest:
                return None
        return meta
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _reuse(settings_dir: Path, own: Path, digests: np.ndarray, found: np.ndarray) -> np.ndarray | None:
    """A matrix for ``digests`` holding the rows that intact sibling caches already have (marked in
    ``found``), or None if no sibling has any."""
    matrix = None
    for sibling in sorted(p for p in settings_dir.iterdir() if p.is_dir() and p != own
                          and not p.name.startswith(".")):
        if found.all():
            break
        meta = _verified(sibling)
        if meta is None or not meta.get("n_texts"):
            continue
        theirs = np.load(sibling / "digests.npy", allow_pickle=False)
        order = np.argsort(theirs, kind="stable")
        pos = np.searchsorted(theirs[order], digests).clip(max=len(theirs) - 1)
        hit = (theirs[order[pos]] == digests) & ~found
        if not hit.any():
            continue
        source = np.load(sibling / "matrix.npy", mmap_mode="r", allow_pickle=False)
        if matrix is None:
            matrix = np.empty((len(digests), source.shape[1]), dtype=source.dtype)
        if source.shape[1] != matrix.shape[1] or source.dtype != matrix.dtype:
            continue
        matrix[hit] = source[order[pos[hit]]]
        found |= hit
    return matrix


def _build(store, encoder: HistoryEncoder, key: dict, final: Path, with_outputs: bool, dtype: str,
           progress: bool) -> HistoryEmbeddings:
    """Collect each example's item texts, fill the matrix (reused rows, then embedded ones), write."""
    index: dict[str, int] = {}
    rows, offsets, ids = [], [0], []
    source = _source(store)
    for ex in store:
        texts = history_texts(store.task, ex, with_outputs, source)
        rows.extend(index.setdefault(t, len(index)) for t in texts)
        offsets.append(len(rows))
        ids.append(ex.id)
    texts = list(index)
    del index
    digests = text_digests(texts)
    found = np.zeros(len(texts), dtype=bool)
    matrix = _reuse(final.parent, final, digests, found) if texts else None
    missing = np.flatnonzero(~found)
    if len(missing):
        emb = encoder.embed([texts[i] for i in missing], f"embed {len(missing)} history items", progress)
        if matrix is None:
            matrix = np.empty((len(texts), emb.shape[1]), dtype=dtype)
        matrix[missing] = emb.numpy().astype(dtype)
    if matrix is None:  # a file without any history item
        matrix = np.empty((0, 0), dtype=dtype)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "matrix.npy", matrix)
        np.save(tmp / "digests.npy", digests)
        np.save(tmp / "rows.npy", np.asarray(rows, dtype=np.int32))
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        (tmp / "ids.json").write_text(json.dumps(ids))
        meta = {"key": key, "n": len(ids), "n_texts": len(texts), "dim": int(matrix.shape[1]),
                "files": {name: [(tmp / name).stat().st_size, file_digest(tmp / name)] for name in _FILES}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():  # damaged or stale: replaced, never trusted
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return HistoryEmbeddings(final, meta, embedded=len(missing), reused=int(found.sum()))


def open_history(store, encoder: str, *, with_outputs: bool = True, pooling: Pooling = "cls",
                 max_length: int = MAX_LENGTH, dtype: Literal["float16", "float32"] = "float16",
                 batch_size: int = 64, device: str = "cpu", cache_dir: str | Path | None = None,
                 progress: bool = True) -> HistoryEmbeddings:
    """The frozen history embeddings of every example of ``store`` (a :class:`LaMPStore`), from the
    cache when an intact one exists, else embedded once and cached.

    Args:
        store: the examples (needs ``task``, ``fingerprint`` and iteration, as a LaMPStore has).
        encoder: the frozen history encoder Enc_his: an HF name (BAAI/bge-base-en-v1.5) or local folder.
        with_outputs: embed each item with its output (the paper's format) or without (the released
            code's text); see ``Task.history``.
        pooling: cls (BGE) or mean (sentence-transformers models).
        max_length: tokens per item text (longer texts are truncated; the tokenizer's own limit too).
        dtype: stored precision: float16 (half the disk and memory; the vectors are unit-length, so
            the error of a score x·h is about 1e-3) or float32.
        batch_size: texts per encoder batch (not part of the cache key).
        device: where the encoder runs (not part of the cache key).
        cache_dir: lamp-fid's cache folder (default $LAMP_FID_CACHE, else ~/.cache/lamp-fid).
        progress: show progress bars.

    Opening an existing cache re-hashes its files (blake2b: about 2 s per GB on one core here)
    rather than trusting them.
    """
    check_pooling(pooling)
    if dtype not in DTYPES:
        raise LaMPError(f"unknown history dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if max_length < 1:
        raise LaMPError(f"max_length must be >= 1, got {max_length}")
    if cache_dir is None:
        from lamp_fid.data.paths import default_cache_dir

        cache_dir = default_cache_dir()
    root = Path(cache_dir).expanduser() / "history"
    hist_encoder = HistoryEncoder(store.task, encoder, pooling, batch_size=batch_size, device=device,
                                  max_length=max_length, progress=progress, source=_source(store))
    identity = encoder_content(encoder, cache_dir)
    if identity is None:  # a hub name not downloaded yet: load it, then its files can be hashed
        hist_encoder._load()
        identity = encoder_content(encoder, cache_dir) or {"encoder": encoder}
    settings = {"format": FORMAT, "encoder": identity, "pooling": pooling, "max_length": max_length,
                "dtype": dtype}
    key = {**settings, "fingerprint": store.fingerprint, "task": get_task(store.task).name,
           "with_outputs": with_outputs}
    settings_dir = root / _digest(settings)
    final = settings_dir / f"{key['task']}-{_digest(key)}"
    with _lock(settings_dir / f".{final.name}.lock"):
        meta = _verified(final, key)
        if meta is not None and meta.get("n") == len(store):
            return HistoryEmbeddings(final, meta)
        return _build(store, hist_encoder, key, final, with_outputs, dtype, progress)
