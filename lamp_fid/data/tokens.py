"""Passages built and tokenized once: the tokenized passage cache, its Dataset, collator and sampler.

Today's loader (:class:`~lamp_fid.data.module.PassageDataset` + ``PassageCollator``) builds every φp
passage again in every epoch (tokenizing each item for the official budget) and tokenizes every
passage again in the collator. :func:`open_tokens` does both once per setting and keeps the token ids
on disk; :class:`TokenDataset` then only slices ids and :class:`PadCollator` only pads, producing
exactly the batch of ``PassageCollator`` (``input_ids``/``attention_mask`` ``[B, n, L]`` with all-zero
mask rows for missing passages, ``labels`` ``[B, T]`` padded with -100, ``ids``, ``targets``,
``fallbacks``, ``retries``). The official budget's retries and fallbacks are counted at build time and
stored per example, so batches still report them.

The cache is keyed by everything the tokens depend on: the store's content fingerprint, the top-k
rankings actually read (a digest of them: another retriever or seed giving other items rebuilds), k,
mode and layout, the task's φp row, the tokenizer's *content* (its serialized vocabulary, normalizer,
pre-tokenizer, post-processor and decoder, its special tokens, padding/truncation sides and the
transformers/tokenizers versions: a copied tokenizer folder hits the cache, an edited one misses it),
``max_length``, ``max_target_length`` and :data:`FORMAT`. Settings that cannot change the passages
are normalized away (``mode="none"``, ``k=0`` and no rankings are one setting; layout only matters for
FiD), so they do not rebuild.

Layout of ``<cache_dir>/tokens/<task>-<key digest>/`` (built in a temp folder and renamed into place,
under a lock, so DDP ranks build it once): ``passage_tokens.bin`` (int32 little-endian ids of every
passage, back to back, memory-mapped on read), ``passage_offsets.npy`` (int64, P + 1),
``example_offsets.npy`` (int64, n + 1: the passages of example i are ``[e[i], e[i+1])``),
``target_tokens.bin`` / ``target_offsets.npy`` (the same for the targets; empty without outputs),
``counts.npy`` (int32 ``[n, 2]``: fallbacks, retries), ``ids.json``, ``targets.json`` (the gold
strings, or null), ``meta.json`` (the key and the size and digest of every other file). Every open
checks the key and each file's size and digest (digests memoized by stat as the store's are, so a warm
open only stats); a damaged or half-written cache is rebuilt with one warning line.

Training-time augmentation:

* PPlug's history dropout works on the frozen history *embeddings*
  (:func:`lamp_fid.data.history.history_dropout` picks rows by ``(seed, epoch, index)``), not on
  these tokens: the input passages are served from this cache unchanged and the history tensors are
  added beside them.
* The random retriever is deterministic per ``(seed, question)`` and its rankings are cached like the
  others; this cache keys on their content, so another seed rebuilds and the same seed is read back.
* FiD's official layout builds each passage from the input and *one* item with its own budget, so the
  passages of any subset of an example's top-k items are exactly a subset of the cached passages: a
  per-epoch item dropout or shuffle can select among ``dataset.passages(i)`` without rebuilding.
  IPA's prompt shares one budget among its k items, so dropping items there changes the tokens: that
  augmentation needs the on-the-fly path (or one cache per variant).
* Token-level noise (span masking and the like) belongs in a collator wrapper over the padded ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, DistributedSampler
from tqdm.auto import tqdm

from lamp_fid.data.sampler import ResumableSampler
from lamp_fid.data.store import _clean_dead_builds, _lock, file_digest, files_problem, publish_folder, remove_folder
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import make_folder, write_error
from lamp_fid.prompts import Layout, Mode, PromptBuilder
from lamp_fid.tasks import Task

FORMAT = 1  #: bump when the layout or the meaning of the stored ids changes: old caches are then rebuilt
_FILES = ("passage_tokens.bin", "passage_offsets.npy", "example_offsets.npy", "target_tokens.bin",
          "target_offsets.npy", "counts.npy", "ids.json", "targets.json")
_IDS = np.dtype("<i4")  # token ids on disk
_CHUNK = 64  # examples built and tokenized together (one tokenizer call for their passages)
_AUTO_MIN_EXAMPLES = 2000  # below this, starting worker processes costs more than it saves


# --- the key ---------------------------------------------------------------------------------------

def tokenizer_identity(tokenizer) -> dict[str, Any]:
    """What identifies a tokenizer's behaviour: a digest of its serialized backend (vocabulary,
    normalizer, pre-tokenizer, post-processor, decoder, added tokens; the per-call truncation and
    padding state left out), its class, special ids, padding/truncation sides, decoding option and the
    library versions. A tokenizer without a ``tokenizers`` backend is identified by the files of its
    local folder (or hub snapshot)."""
    import tokenizers
    import transformers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # transformers sets the backend's truncation and padding before every call (and leaves them
        # set): not part of the content, so serialized without them, then put back as they were
        truncation, padding = backend.truncation, backend.padding
        try:
            backend.no_truncation()
            backend.no_padding()
            content = hashlib.sha256(backend.to_str().encode()).hexdigest()
        finally:
            if truncation:
                backend.enable_truncation(**truncation)
            if padding:
                backend.enable_padding(**padding)
    else:
        from lamp_fid.data.history import encoder_content

        name = str(getattr(tokenizer, "name_or_path", "") or "")
        files = encoder_content(name) if name else None
        if not files:
            raise LaMPError(f"cannot identify the tokenizer {name!r} for the token cache: it has no "
                            "tokenizers backend and no local files")
        content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"class": type(tokenizer).__name__, "content": content,
            "pad_token_id": tokenizer.pad_token_id, "special_ids": sorted(tokenizer.all_special_ids),
            "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side,
            "clean_up_tokenization_spaces": bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _phi_p(task: Task) -> dict[str, Any]:
    """The task row's fields that shape its passages."""
    return {"long_field": task.long_field, "piece": task.piece, "need": task.need,
            "need_fixed": task.need_fixed, "prompt": task.prompt, "reserve": task.reserve,
            "reserve_eos": task.reserve_eos}


def _source(store) -> str:
    return str(getattr(store, "questions_path", None) or "<questions>")


def rankings_digest(store, rankings, k: int) -> str:
    """A digest of the top-k positions that the passages of every example of ``store`` read."""
    h = hashlib.blake2b(digest_size=16)
    for example_id in store.ids:
        try:
            top = np.asarray(rankings[example_id][:k], dtype=np.int64)
        except KeyError:
            raise LaMPDataError(_source(store), "the rankings have no entry for this question",
                                record_id=example_id) from None
        h.update(len(top).to_bytes(8, "little"))
        h.update(top.astype("<i8").tobytes())
    return h.hexdigest()


def cache_key(store, rankings, tokenizer, *, k: int, mode: Mode, layout: Layout, max_length: int,
              max_target_length: int) -> dict[str, Any]:
    """Everything the cached ids depend on, with the settings that cannot matter normalized away."""
    if mode == "none" or k == 0 or rankings is None:
        mode, k, layout, ranked = "none", 0, None, None
    else:
        ranked = rankings_digest(store, rankings, k)
        layout = layout if mode == "fid" else None
    return {"format": FORMAT, "task": store.task.name, "phi_p": _phi_p(store.task),
            "store": store.fingerprint, "rankings": ranked, "k": k, "mode": mode, "layout": layout,
            "tokenizer": tokenizer_identity(tokenizer), "max_length": max_length,
            "max_target_length": max_target_length}


def _digest(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


# --- building -----------------------------------------------------------------------------------

class _Encoder:
    """Builds and tokenizes the passages and targets of a run of examples (in this process or a worker)."""

    def __init__(self, store, rankings, builder: PromptBuilder, k: int, max_target_length: int,
                 with_targets: bool):
        self.store, self.rankings, self.builder, self.k = store, rankings, builder, k
        self.max_target_length, self.with_targets = max_target_length, with_targets

    def items_of(self, example) -> list[dict]:
        """The top-k profile items of ``example`` in rank order (none for the baseline)."""
        if self.builder.mode == "none" or self.k <= 0 or self.rankings is None:
            return []
        return [example.profile[int(p)] for p in self.rankings[example.id][: self.k]]

    def encode(self, examples: Sequence) -> dict[str, np.ndarray]:
        """Flat ids, per-passage lengths, passages per example, target ids and lengths, counts."""
        tok, texts, n_passages, counts, targets = self.builder.tokenizer, [], [], [], []
        for ex in examples:
            built = self.builder.passages(ex.input, self.items_of(ex))
            texts.extend(built.texts)
            n_passages.append(len(built.texts))
            counts.append((built.fallbacks, built.retries))
            targets.append(ex.output)
        ids = tok(texts, max_length=self.builder.max_length, truncation=True)["input_ids"]
        out = {"tokens": _flat(ids), "lengths": np.fromiter(map(len, ids), np.int64, len(ids)),
               "n_passages": np.asarray(n_passages, dtype=np.int64),
               "counts": np.asarray(counts, dtype=np.int32).reshape(-1, 2)}
        if self.with_targets:
            if any(t is None for t in targets):
                bad = next(ex.id for ex in examples if ex.output is None)
                raise LaMPDataError(_source(self.store), "no gold output", record_id=bad, field="output")
            t_ids = tok(targets, max_length=self.max_target_length, truncation=True)["input_ids"]
            out["targets"] = _flat(t_ids)
            out["target_texts"] = targets
            out["target_lengths"] = np.fromiter(map(len, t_ids), np.int64, len(t_ids))
        return out

    def encode_range(self, start: int, stop: int) -> dict[str, np.ndarray] | str:
        """:meth:`encode` of examples ``start:stop`` read from the store (in a worker: errors come back
        as their one-line message, since LaMP errors do not survive pickling)."""
        try:
            return self.encode([self.store[i] for i in range(start, stop)])
        except LaMPError as err:
            return f"LaMPError: {err}"


def _flat(rows: list[list[int]]) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=_IDS, count=sum(map(len, rows)))


_WORKER: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER
    _WORKER = encoder


def _work(span: tuple[int, int]):
    return _WORKER.encode_range(*span)


def _auto_workers(n: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8) if n >= _AUTO_MIN_EXAMPLES and cpus > 2 else 0


def _chunks(encoder: _Encoder, n: int, workers: int) -> Iterator[dict[str, np.ndarray]]:
    """Encoded chunks of ``_CHUNK`` examples in store order; ``workers`` > 0 forks that many processes
    (they only read the store and tokenize; at most 2 chunks per worker are in flight)."""
    spans = [(s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)]
    if workers <= 0:
        batch = []
        for ex in encoder.store:  # sequential read: faster than one pread per example
            batch.append(ex)
            if len(batch) == _CHUNK:
                yield encoder.encode(batch)
                batch = []
        if batch:
            yield encoder.encode(batch)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork (the DataLoader's own default): workers inherit the tokenizer and store without pickling,
    # and never touch torch or CUDA. A worker that dies makes the pool raise instead of hanging.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_init_worker, initargs=(encoder,)) as pool:
        pending: deque = deque()
        for span in spans:
            pending.append(pool.submit(_work, span))
            if len(pending) >= 2 * workers:
                yield _checked(pending.popleft().result())
        while pending:
            yield _checked(pending.popleft().result())


def _checked(result):
    if isinstance(result, str):
        raise LaMPError(result.removeprefix("LaMPError: "))
    return result


def _build(store, encoder: _Encoder, key: dict, final: Path, root: Path, workers: int,
           progress: bool) -> None:
    """Encode every example of ``store`` into a temp folder beside ``final``, then rename it into place."""
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    n = len(store)
    files: dict[str, dict] = {}
    try:
        tmp.mkdir(parents=True)
        hashes = {"passage_tokens.bin": hashlib.blake2b(digest_size=20),
                  "target_tokens.bin": hashlib.blake2b(digest_size=20)}
        lengths, n_passages, counts, t_lengths, targets = [], [], [], [], []
        bar = tqdm(total=n, disable=not progress, unit="ex",
                   desc=f"tokenize {store.task.name} {key['mode']} k={key['k']}")
        with open(tmp / "passage_tokens.bin", "wb") as pf, open(tmp / "target_tokens.bin", "wb") as tf:
            for chunk in _chunks(encoder, n, workers):
                data = chunk["tokens"].tobytes()
                pf.write(data)
                hashes["passage_tokens.bin"].update(data)
                lengths.append(chunk["lengths"])
                n_passages.append(chunk["n_passages"])
                counts.append(chunk["counts"])
                if "targets" in chunk:
                    data = chunk["targets"].tobytes()
                    tf.write(data)
                    hashes["target_tokens.bin"].update(data)
                    t_lengths.append(chunk["target_lengths"])
                    targets.extend(chunk["target_texts"])
                bar.update(len(chunk["n_passages"]))
        bar.close()

        def offsets(parts: list[np.ndarray], size: int) -> np.ndarray:
            sizes = np.concatenate(parts) if parts else np.zeros(size, np.int64)
            return np.concatenate([[0], np.cumsum(sizes)])

        np.save(tmp / "passage_offsets.npy", offsets(lengths, 0).astype(np.int64))
        np.save(tmp / "example_offsets.npy", offsets(n_passages, 0).astype(np.int64))
        np.save(tmp / "target_offsets.npy", offsets(t_lengths, n).astype(np.int64))
        np.save(tmp / "counts.npy", np.concatenate(counts) if counts else np.zeros((0, 2), np.int32))
        (tmp / "ids.json").write_text(json.dumps(list(store.ids)))
        (tmp / "targets.json").write_text(json.dumps(targets if encoder.with_targets else None))
        for name in _FILES:
            digest = hashes[name].hexdigest() if name in hashes else file_digest(tmp / name)
            files[name] = {"size": (tmp / name).stat().st_size, "digest": digest}
        meta = {"key": key, "n": n, "files": files}
        publish_folder(tmp, final, meta, root)
    except OSError as err:
        raise write_error(final, err) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _problem(folder: Path, key: dict, store, root: Path) -> str | None:
    """Why ``folder`` cannot serve ``key`` for ``store`` (None if it can): missing, other settings, a file
    whose size or digest differs from those recorded at build, or other examples."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as err:
        return f"meta.json is unreadable ({err})"
    if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("files"), dict) \
            or set(meta["files"]) != set(_FILES):
        return "it was made for other settings or by another lamp-fid version"
    problem = files_problem(folder, _FILES, meta["files"], root)
    if problem is None and meta.get("n") != len(store):
        return "it holds another number of examples"
    return problem


def open_tokens(store, rankings, tokenizer, *, k: int, mode: Mode = "fid", layout: Layout = "official",
                max_length: int = 512, max_target_length: int = 128, cache_dir: str | Path | None = None,
                workers: int | None = None, progress: bool = True) -> "TokenDataset":
    """The tokenized passages of every example of ``store``: read from an intact cache, else built once.

    Args:
        store: a :class:`~lamp_fid.data.store.LaMPStore` (``task``, ``fingerprint``, ``ids``, iteration,
            random access); targets are tokenized when it has outputs.
        rankings: example id -> positions into the profile, best first (as ``get_rankings`` returns);
            ``None`` for no profile.
        tokenizer: the generator's tokenizer (it measures the φp budget and tokenizes the passages).
        k: profile items per example; mode, layout: as :class:`~lamp_fid.prompts.PromptBuilder`.
        max_length: passage length in tokens (the budget; passages are cut on the right there too).
        max_target_length: target length in tokens.
        cache_dir: lamp-fid's cache folder (default: $LAMP_FID_CACHE, else ~/.cache/lamp-fid); the
            caches go to its ``tokens/`` folder.
        workers: worker processes for a build (0: this process; None: one per CPU, up to 8, for a
            file of at least 2,000 examples on a machine with more than 2 CPUs, else 0). The result
            is the same either way.
        progress: show a progress bar while building.
    """
    if not isinstance(k, int) or k < 0:
        raise LaMPError(f"k must be >= 0, got {k!r}")
    if not isinstance(max_target_length, int) or max_target_length <= 0:
        raise LaMPError(f"max_target_length must be a positive number of tokens, not {max_target_length!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise LaMPError(f"workers must be >= 0, got {workers!r}")
    builder = PromptBuilder(store.task, tokenizer, max_length, mode=mode, layout=layout)
    key = cache_key(store, rankings, tokenizer, k=k, mode=mode, layout=layout, max_length=max_length,
                    max_target_length=max_target_length)
    if cache_dir is None:
        from lamp_fid.data.paths import default_cache_dir

        cache_dir = default_cache_dir()
    root = Path(cache_dir).expanduser()
    folder = make_folder(root / "tokens")
    final = folder / f"{store.task.name}-{_digest(key)}"
    with _lock(folder / f".{final.name}.lock"):
        problem = _problem(final, key, store, root)
        if problem is None:
            return TokenDataset(final)
        if problem != "missing":
            print(f"lamp-fid: warning: the token cache {final} is not usable ({problem}): rebuilding it",
                  file=sys.stderr)
        _clean_dead_builds(folder, final.name)
        if final.exists():
            remove_folder(final)
        encoder = _Encoder(store, rankings if key["mode"] != "none" else None, builder, key["k"],
                           max_target_length, with_targets=bool(store.has_outputs))
        n_workers = _auto_workers(len(store)) if workers is None else workers
        _build(store, encoder, key, final, root, n_workers if len(store) > _CHUNK else 0, progress)
    return TokenDataset(final, built=True)


# --- reading ------------------------------------------------------------------------------------

def _ids_file(path: Path) -> np.ndarray:
    """A read-only int32 view of a ``.bin`` file (memory-mapped; an empty file cannot be mapped)."""
    if path.stat().st_size == 0:
        return np.empty(0, dtype=_IDS)
    return np.asarray(np.memmap(path, dtype=_IDS, mode="r"))  # a plain view: cheaper slices


class TokenDataset(Dataset):
    """The tokenized passages of one split, read from a cache folder (see :func:`open_tokens`).

    ``dataset[i]`` is ``{"id", "passages": [int32 arrays], "labels": int32 array or None, "target",
    "fallbacks", "retries"}``: slices of memory-mapped files, nothing tokenized. ``built`` says whether
    this open built the folder. Picklable: DataLoader workers map the files again.
    """

    def __init__(self, directory: str | Path, built: bool = False):
        self.directory, self.built = Path(directory), built
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.ids: list[str] = json.loads((self.directory / "ids.json").read_text())
        self.targets: list[str] | None = json.loads((self.directory / "targets.json").read_text())
        self.passage_offsets = np.load(self.directory / "passage_offsets.npy", allow_pickle=False)
        self.example_offsets = np.load(self.directory / "example_offsets.npy", allow_pickle=False)
        self.target_offsets = np.load(self.directory / "target_offsets.npy", allow_pickle=False)
        self.counts = np.load(self.directory / "counts.npy", allow_pickle=False)
        self.tokens = _ids_file(self.directory / "passage_tokens.bin")
        self.target_tokens = _ids_file(self.directory / "target_tokens.bin")
        n = len(self.ids)
        if self.example_offsets.shape != (n + 1,) or self.counts.shape != (n, 2) or \
                self.passage_offsets[-1] != len(self.tokens) or self.target_offsets.shape != (n + 1,) or \
                self.target_offsets[-1] != len(self.target_tokens) or \
                self.example_offsets[-1] != len(self.passage_offsets) - 1:
            raise LaMPError(f"the token cache {self.directory} is inconsistent: delete it to rebuild")

    def __len__(self) -> int:
        return len(self.ids)

    def passages(self, i: int) -> list[np.ndarray]:
        """The token ids of example ``i``'s passages, in the order the model reads them."""
        po, start, stop = self.passage_offsets, self.example_offsets[i], self.example_offsets[i + 1]
        return [self.tokens[po[j]:po[j + 1]] for j in range(start, stop)]

    def label_ids(self, i: int) -> np.ndarray | None:
        """The token ids of example ``i``'s target (None without outputs)."""
        if self.targets is None:
            return None
        return self.target_tokens[self.target_offsets[i]:self.target_offsets[i + 1]]

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        return {"id": self.ids[i], "passages": self.passages(i), "labels": self.label_ids(i),
                "target": None if self.targets is None else self.targets[i],
                "fallbacks": int(self.counts[i, 0]), "retries": int(self.counts[i, 1])}

    @property
    def fallbacks(self) -> int:
        """Passages of this split that fell back to the bare input (the official budget)."""
        return int(self.counts[:, 0].sum())

    @property
    def retries(self) -> int:
        """Budget attempts retried with a smaller input share, over the split."""
        return int(self.counts[:, 1].sum())

    def passage_counts(self) -> np.ndarray:
        """Passages per example."""
        return np.diff(self.example_offsets)

    def longest(self) -> np.ndarray:
        """Each example's longest passage in tokens (what its batch is padded to): the length key of
        :class:`LengthGroupedBatchSampler`."""
        lengths = np.diff(self.passage_offsets)
        out = np.zeros(len(self), dtype=np.int64)
        has = np.diff(self.example_offsets) > 0
        if has.any():
            out[has] = np.maximum.reduceat(lengths, self.example_offsets[:-1][has])
        return out

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "built": self.built}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class PadCollator:
    """Pads cached ids into the batch contract of ``PassageCollator``, bit for bit.

    ``input_ids``/``attention_mask`` ``[B, n, L]`` (int64; n the most passages of any example, L the
    longest passage of the batch; missing passages are pad ids with an all-zero mask), ``labels``
    ``[B, T]`` padded with -100 (only when every example has a target), ``ids``, ``targets``,
    ``fallbacks``, ``retries``. ``padding_side`` is the tokenizer's (T5: right).
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if pad_token_id is None:
            raise LaMPError("the tokenizer has no pad token: batches cannot be padded")
        if padding_side not in ("right", "left"):
            raise LaMPError(f"padding_side must be right or left, got {padding_side!r}")
        self.pad_token_id, self.left = int(pad_token_id), padding_side == "left"

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "PadCollator":
        return cls(tokenizer.pad_token_id, tokenizer.padding_side)

    def _place(self, out: np.ndarray, mask: np.ndarray | None, row: tuple, ids: np.ndarray) -> None:
        m, L = len(ids), out.shape[-1]
        span = slice(L - m, L) if self.left else slice(0, m)
        out[row + (span,)] = ids
        if mask is not None:
            mask[row + (span,)] = 1

    def __call__(self, rows: list[dict]) -> dict:
        B = len(rows)
        n = max(len(r["passages"]) for r in rows)
        L = max((len(p) for r in rows for p in r["passages"]), default=0)
        input_ids = np.full((B, n, L), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((B, n, L), dtype=np.int64)
        for b, r in enumerate(rows):
            for j, p in enumerate(r["passages"]):
                self._place(input_ids, attention_mask, (b, j), p)
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
                 "ids": [r["id"] for r in rows], "targets": None,
                 "fallbacks": sum(r.get("fallbacks", 0) for r in rows),
                 "retries": sum(r.get("retries", 0) for r in rows)}
        if all(r.get("labels") is not None and r.get("target") is not None for r in rows):
            T = max(len(r["labels"]) for r in rows)
            labels = np.full((B, T), -100, dtype=np.int64)
            for b, r in enumerate(rows):
                self._place(labels, None, (b,), r["labels"])
            batch["labels"], batch["targets"] = torch.from_numpy(labels), [r["target"] for r in rows]
        return batch


# --- batching by length ----------------------------------------------------------------------------

class LengthGroupedBatchSampler(BatchSampler):
    """Batches of examples of similar length, so that little of each ``[B, n, L]`` batch is padding.

    A ``BatchSampler`` over the indices that ``sampler`` yields this epoch (so Lightning can inject its
    DistributedSampler under DDP, and ``drop_last=False`` for prediction, as for any BatchSampler made
    in a ``*_dataloader`` hook): they are cut into groups of ``group_batches`` batches in the sampler's
    order (``None``: one group), each group is sorted by ``lengths`` (longest first; a stable sort, so
    ties keep the sampler's order) and cut into batches.

    * Evaluation/prediction: ``SequentialSampler(dataset)`` and ``group_batches=None``: the whole split
      sorted by length. The examples come out in another order than the file's, so whatever writes
      predictions must key them by id (it does) and restore the file's order where that matters.
    * Training: a shuffling sampler and e.g. ``group_batches=50``. Use
      ``DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)`` on one device:
      its order, and so the batches, depend only on ``(seed, epoch)``, and Lightning calls its
      ``set_epoch`` (``batch_sampler.sampler``) every epoch; under DDP Lightning puts its own there.
      Within a group the batches run from long to short (as HF's length-grouped sampler does).

    ``lengths[i]`` is example i's padded cost, e.g. :meth:`TokenDataset.longest`.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool = False, *, lengths: Sequence[int],
                 group_batches: int | None = None):
        super().__init__(sampler, batch_size, drop_last)
        if group_batches is not None and group_batches < 1:
            raise LaMPError(f"group_batches must be >= 1 (or None for one group), got {group_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.group_batches = group_batches

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the index sampler (outside Lightning, which calls the sampler's itself)."""
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        bs = self.batch_size
        order = grouped_by_length(order, self.lengths,
                                  len(order) if self.group_batches is None else self.group_batches * bs)
        for s in range(0, len(order), bs):
            batch = order[s:s + bs]
            if len(batch) == bs or not self.drop_last:  # only the last batch can be short
                yield batch.tolist()


def grouped_by_length(order: np.ndarray, lengths: np.ndarray, group: int) -> np.ndarray:
    """``order`` cut into runs of ``group`` indices, each run sorted by ``lengths``, longest first (a
    stable sort: ties keep ``order``)."""
    parts = [order[g:g + group] for g in range(0, len(order), max(group, 1))]
    return np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in parts]) if parts else order


class LengthGroupedSampler(ResumableSampler):
    """The training order of ``group_by_length: all``: :class:`~lamp_fid.data.sampler.ResumableSampler`'s
    epoch (a permutation seeded by ``seed + epoch``, this rank's shard under DDP) cut into groups of
    ``group_batches * batch_size`` indices, each sorted longest first, which a DataLoader with the same
    ``batch_size`` cuts into batches of similar length.

    An index sampler, not a batch sampler: it is a ``DistributedSampler``, so Lightning keeps it under
    DDP and calls its ``set_epoch``, and a resume skips exactly the batches already trained on (the
    groups are whole batches, and the skipped samples are a prefix of the grouped order).
    """

    def __init__(self, dataset: Dataset, *, lengths: Sequence[int], batch_size: int, group_batches: int = 50,
                 **options):
        super().__init__(dataset, **options)
        if group_batches < 1 or batch_size < 1:
            raise LaMPError(f"group_batches and batch_size must be >= 1, got {group_batches}, {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) != len(dataset):
            raise LaMPError(f"{len(self.lengths)} lengths for {len(dataset)} examples")
        self.batch_size, self.group_batches = batch_size, group_batches

    def __iter__(self):
        order = np.fromiter(DistributedSampler.__iter__(self), dtype=np.int64)
        order = grouped_by_length(order, self.lengths, self.group_batches * self.batch_size)
        return iter(order[self.skip:].tolist())


def padding_fraction(dataset: TokenDataset, batches: Sequence[Sequence[int]]) -> float:
    """The fraction of the ``[B, n, L]`` input slots of ``batches`` that are padding (missing passages
    included: the encoder runs on them unless the model skips all-padding rows)."""
    lengths = np.diff(dataset.passage_offsets)
    e = dataset.example_offsets
    per_example = [lengths[e[i]:e[i + 1]] for i in range(len(dataset))]
    real = slots = 0
    for batch in batches:
        rows = [per_example[i] for i in batch]
        real += sum(int(r.sum()) for r in rows)
        slots += len(rows) * max(len(r) for r in rows) * max(int(r.max()) if len(r) else 0 for r in rows)
    return 1 - real / slots if slots else 0.0
