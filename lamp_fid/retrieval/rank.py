"""The ranking cache: every profile of a file ranked once, kept on disk, read back without re-ranking.

A cache file holds one retriever's full rankings of one LaMP questions file: example id -> positions
into ``example.profile``, best first (so the top k for any k is a prefix). It is keyed by the file's
content fingerprint, the task, the retriever and every setting that changes its result (``use_date``,
``tie_break``, the encoder, the seed); not by k, batch size or device. Files are ``.npz`` (one flat
int32 array of positions + offsets + ids), written atomically. A cache file is checked against the
store each time it is read (the same ids in the same order, each ranking a permutation of its
profile's positions); an unreadable or inconsistent one is ranked again, with one warning line.
Also the ``lamp-fid rank`` command.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np

from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_open, check_target
from lamp_fid.retrieval.base import DEFAULT_ENCODER, Retriever, RetrieverName, TieBreak, make_retriever
from lamp_fid.tasks import get_task

FORMAT = 1  # bump when the file layout or any retriever's result changes: old caches are then ignored


class Rankings(Mapping):
    """Example id -> ranking (read-only ``np.ndarray`` of positions into the example's profile, best
    first). ``rankings[id][:k]`` or ``rankings.top_k(id, k)`` are the top k."""

    def __init__(self, ids: list[str], offsets: np.ndarray, positions: np.ndarray,
                 meta: dict | None = None):
        self.ids = list(ids)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.int32)
        self.positions.flags.writeable = False
        self.meta = dict(meta or {})
        self._row = {id_: i for i, id_ in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise LaMPError(f"duplicate example id {dup!r}: rankings need unique ids")

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, np.ndarray]], meta: dict | None = None) -> "Rankings":
        """Build from ``(example id, ranking)`` pairs."""
        ids, chunks, offsets = [], [], [0]
        for id_, ranking in items:
            ids.append(id_)
            chunks.append(np.asarray(ranking, dtype=np.int32))
            offsets.append(offsets[-1] + len(ranking))
        flat = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int32)
        return cls(ids, np.asarray(offsets), flat, meta)

    def __getitem__(self, example_id: str) -> np.ndarray:
        i = self._row[example_id]
        return self.positions[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._row

    def top_k(self, example_id: str, k: int | None = None) -> np.ndarray:
        """The best ``k`` positions (all of them if ``k`` is None; fewer if the profile is shorter)."""
        ranking = self[example_id]
        return ranking if k is None else ranking[:max(k, 0)]

    def item_ids(self, example: Example, k: int | None = None) -> list[str]:
        """The ids of ``example``'s top-k profile items, best first."""
        return [example.profile[p]["id"] for p in self.top_k(example.id, k)]

    def save(self, path: str | Path) -> None:
        """Write atomically as ``.npz`` (ids, offsets, int32 positions, JSON metadata)."""
        with atomic_open(path, "wb", overwrite=True) as f:
            np.savez(f, ids=np.asarray(self.ids, dtype=str), offsets=self.offsets,
                     positions=self.positions, meta=np.asarray(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: str | Path) -> "Rankings":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["ids"].tolist(), z["offsets"], z["positions"], json.loads(str(z["meta"])))


def _source(store) -> str:
    """The store's questions file, for error messages."""
    for attr in ("questions_path", "path"):
        if getattr(store, attr, None):
            return str(getattr(store, attr))
    return "<questions>"


def _mismatch(rankings: Rankings, store) -> str | None:
    """Why ``rankings`` cannot be ``store``'s full rankings (None if they can): the same ids in the same
    order, and each row a permutation of its profile's positions (when the store knows profile sizes)."""
    if rankings.ids != list(store.ids):
        return "its example ids are not the store's"
    offsets, positions = rankings.offsets, rankings.positions
    lengths = np.diff(offsets)
    if offsets.shape != (len(store) + 1,) or offsets[0] != 0 or offsets[-1] != len(positions) or (lengths < 0).any():
        return "its offsets are inconsistent"
    sizes = getattr(store, "profile_sizes", None)
    if sizes is None:
        return None if (positions >= 0).all() else "it holds negative positions"
    if not np.array_equal(lengths, sizes):
        return "its rankings do not have the profiles' lengths"
    # every row a permutation of range(len(profile)): each flat slot start + position hit exactly once
    row_start = np.repeat(offsets[:-1], lengths)
    if ((positions < 0) | (positions >= np.repeat(lengths, lengths))).any() or \
            (np.bincount(row_start + positions, minlength=len(positions)) != 1).any():
        return "a ranking is not a permutation of its profile"
    return None


def cache_key(store, retriever: Retriever) -> dict[str, Any]:
    """Everything the rankings depend on: file content, task, retriever and its settings."""
    return {"format": FORMAT, "fingerprint": store.fingerprint, "task": store.task.name,
            "retriever": retriever.name, **retriever.key()}


def cache_path(cache_dir: str | Path | None, key: dict[str, Any]) -> Path:
    """``<cache_dir>/rankings/<task>-<retriever>-<hash of the key>.npz``."""
    if cache_dir is None:
        from lamp_fid.data.paths import default_cache_dir

        cache_dir = default_cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser() / "rankings" / f"{key['task']}-{key['retriever']}-{digest}.npz"


def get_rankings(store, retriever: str = "bm25", *, cache_dir: str | Path | None = None,
                 use_date: bool = False, encoder: str = DEFAULT_ENCODER, batch_size: int = 64,
                 device: str = "cpu", seed: int = 0, tie_break: str = "official",
                 progress: bool = True) -> Rankings:
    """The full rankings of every example of ``store``, from the cache or computed once and cached.

    ``store`` needs ``.task``, ``.fingerprint`` (changes with the file's content), ``.ids``, ``len()`` and
    iteration over :class:`Example`. Options that do not apply to the retriever are ignored (and do not
    key the cache). ``none`` gives empty rankings and writes no file.
    """
    r = make_retriever(retriever, store.task, use_date=use_date, encoder=encoder, batch_size=batch_size,
                       device=device, seed=seed, tie_break=tie_break, source=_source(store),
                       progress=progress)
    if r.name == "none":
        return Rankings.from_items((i, np.empty(0, dtype=np.int32)) for i in store.ids)
    if r.name == "dense":  # encoder digests memoized and item embeddings kept across files there
        from lamp_fid.data.paths import default_cache_dir

        r.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    key = cache_key(store, r)
    path = cache_path(cache_dir, key)
    if path.exists():
        try:
            cached = Rankings.load(path)
            problem = "made for other settings" if cached.meta != key else _mismatch(cached, store)
        except (OSError, ValueError, KeyError, TypeError, EOFError, LaMPError, zipfile.BadZipFile) as err:
            problem = f"unreadable ({type(err).__name__}: {err})"
        if problem is None:
            return cached
        print(f"lamp-fid: warning: the ranking cache {path} is not usable ({problem}): ranking again",
              file=sys.stderr)
    rankings = Rankings.from_items(r.rank_all(iter(store), total=len(store), progress=progress), meta=key)
    if r.name == "dense" and cache_key(store, r) != key:  # a hub encoder this ranking downloaded: from
        rankings.meta = key = cache_key(store, r)  # now on it is keyed by its files
        path = cache_path(cache_dir, key)
    rankings.save(path)
    return rankings


# --- the `lamp-fid rank` command --------------------------------------------------------------

def _open_store(task: str, questions: Path, outputs: Path | None, cache_dir: Path | None, retriever: str):
    from lamp_fid.data.store import LaMPStore

    return LaMPStore.open(task, questions, outputs, cache_dir=cache_dir, check_dates=retriever == "recency")


def write_rankings_json(store, rankings: Rankings, out: IO, k: int | None = None) -> None:
    """Stream ``{question id: [profile item ids, best first]}`` (top k, or all) as JSON to ``out``."""
    out.write("{")
    for n, ex in enumerate(store):
        positions = rankings.top_k(ex.id, k)
        try:
            ids = [ex.profile[p]["id"] for p in positions]
        except KeyError:
            raise LaMPDataError(_source(store), "a profile item has no id", record_id=ex.id,
                                field="id") from None
        out.write(("\n" if n == 0 else ",\n") + json.dumps(ex.id) + ": " + json.dumps(ids))
    out.write("\n}\n")


def rank(task: str, questions: Path, retriever: RetrieverName = "bm25", output: Path | None = None,
         k: int | None = None, outputs: Path | None = None, cache_dir: Path | None = None,
         use_date: bool = False, encoder: str = DEFAULT_ENCODER, batch_size: int = 64,
         device: str = "cpu", seed: int = 0, tie_break: TieBreak = "official",
         overwrite: bool = False) -> None:
    """Rank every profile of a LaMP questions file; write {question id: [profile item ids, best first]}.

    Rankings are cached (see --cache_dir): a second run with the same file and settings, any k, reads
    them back without re-ranking. Progress goes to stderr.

    Args:
        task: LaMP task (LaMP_1 .. LaMP_7; LaMP_2N is the deprecated news task; LaMP-3 spelling works).
        questions: the *_questions.json file to rank.
        retriever: bm25 (official default: rank_bm25's BM25Okapi, identical rankings), dense (an HF
            encoder, mean pooling, dot product; see --encoder), recency (most recent first), random
            (deterministic permutation from --seed and the question id), none (empty rankings).
        output: JSON file to write; omitted: the JSON goes to stdout.
        k: write only the top k item ids per question (default: the whole profile, ranked).
        outputs: the matching *_outputs.json (optional; rankings never read the gold outputs).
        cache_dir: lamp-fid's cache folder; rankings go to <cache_dir>/rankings (default:
            $LAMP_FID_CACHE, else ~/.cache/lamp-fid).
        use_date: append " date: <date>" to each item text before ranking (bm25, dense).
        encoder: dense encoder: an HF model name (facebook/contriever, facebook/contriever-msmarco, a
            sentence-transformers model) or a local folder.
        batch_size: dense: texts per encoder batch.
        device: dense: where the encoder runs (cpu, cuda, cuda:1, ...).
        seed: random: the seed (with the question id) of each permutation.
        tie_break: official (numpy's argsort / torch.topk order for equal scores, as the official code)
            or stable (equal scores keep profile order); bm25 and dense.
        overwrite: replace --output if it exists (otherwise an existing file is an error).
    """
    try:
        task = get_task(task).name
    except ValueError as err:
        raise LaMPError(str(err)) from None
    if k is not None and k < 0:
        raise LaMPError(f"k must be >= 0, got {k}")
    if output is not None:
        check_target(output, overwrite=overwrite)
    if not Path(questions).is_file():
        raise LaMPError(f"{questions}: no such file")
    store = _open_store(task, Path(questions), outputs, cache_dir, retriever)
    rankings = get_rankings(store, retriever, cache_dir=cache_dir, use_date=use_date, encoder=encoder,
                            batch_size=batch_size, device=device, seed=seed, tie_break=tie_break)
    if output is None:
        write_rankings_json(store, rankings, sys.stdout, k)
        sys.stdout.flush()
        return
    with atomic_open(output, "w", overwrite=overwrite) as f:
        write_rankings_json(store, rankings, f, k)
    print(f"wrote {len(rankings)} rankings to {output}", file=sys.stderr)
