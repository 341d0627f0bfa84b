"""``dense``: Contriever-style dense retrieval with any Hugging Face encoder.

As the official code: an item's or query's embedding is the mean of the encoder's last hidden states
over its non-padding tokens (inputs truncated to 512 tokens), an item's score is the dot product with
the query embedding, and the order is ``torch.topk`` over all items. Unlike the official code, which
encodes a profile anew for every question, we encode each distinct item text once per file (items repeat
across a user's questions), in batches of similar length, and rank every example with one matmul +
topk on the CPU. Scores may differ from the official ones in the last float32 bits (other batch shapes
and padding); orders only differ where two items score within that noise of each other. Items with the
same text get the same score bit for bit (each distinct text of a profile is scored once), so ties
between duplicates are exact on every machine.

faiss is not used: for one profile of a few hundred items a matmul + topk is as fast as faiss.

With a ``cache_dir`` (``get_rankings`` gives lamp-fid's), item embeddings are also kept across files,
per encoder setting, keyed by a 16-byte blake2b of the item text (:class:`EmbeddingCache`): the time
split's train/dev/test files share most of each user's items, so ranking dev after train embeds only
the items train did not have. A reused row was computed in another batch than a fresh one would be, so
it may differ in the last float32 bits: orders can only differ between items scoring within that noise.
An encoder is identified by its *content* (:func:`encoder_identity`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPError
from lamp_fid.retrieval.base import DEFAULT_ENCODER, Retriever
from lamp_fid.tasks import Task

MAX_LENGTH = 512  # the official tokenizer call truncates to Contriever's 512 positions


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, L, d] over the positions where ``mask`` [B, L] is 1 -> [B, d]."""
    hidden = hidden.masked_fill(~mask[..., None].bool(), 0.0)
    return hidden.sum(dim=1) / mask.sum(dim=1)[..., None]


def encoder_identity(encoder: str, cache_dir: str | Path | None = None) -> dict:
    """What identifies an encoder in the ranking and embedding caches: the digest of every file of its
    local folder, or of the hub name's snapshot in the local HF cache (a copied folder hits the cache;
    retrained weights miss it, whatever their sizes and times); else its name (a hub model not
    downloaded yet). Digests are memoized under ``cache_dir`` by stat, as the store's are."""
    from lamp_fid.data.history import encoder_content  # history imports this module

    content = encoder_content(encoder, cache_dir)
    return {"encoder": encoder} if content is None else {"encoder_files": content["files"]}


class EmbeddingCache:
    """Item embeddings of one encoder setting kept on disk across files, keyed by item text.

    ``<root>/`` holds shards, each written once (in a temp folder renamed into place) by a ranking
    that embedded new texts: ``digests.npy`` (``S16`` blake2b of the texts), ``matrix.npy`` (float32
    ``[m, d]``) and ``meta.json`` (size and digest of both, checked on every read: a damaged shard is
    ignored with one warning line and embedded again).
    """

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None):
        self.root, self.cache_dir = Path(root), cache_dir

    def _shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(digests, memory-mapped matrix) of every intact shard."""
        from lamp_fid.data.store import file_digest

        if not self.root.is_dir():
            return
        for shard in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                meta = json.loads((shard / "meta.json").read_text())
                for name, (size, digest) in meta["files"].items():
                    if (shard / name).stat().st_size != size or file_digest(shard / name, self.cache_dir) != digest:
                        raise ValueError(f"{name} differs from what was written")
                yield (np.load(shard / "digests.npy", allow_pickle=False),
                       np.load(shard / "matrix.npy", mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError, TypeError, KeyError, LaMPError) as err:
                print(f"lamp-fid: warning: ignoring the damaged embedding cache {shard} ({err})", file=sys.stderr)

    def lookup(self, digests: np.ndarray) -> tuple[torch.Tensor | None, np.ndarray]:
        """``(matrix, found)``: rows for ``digests`` filled where some shard has the text (``found``)."""
        found = np.zeros(len(digests), dtype=bool)
        out = None
        for theirs, matrix in self._shards():
            if found.all():
                break
            if len(theirs) == 0 or (out is not None and matrix.shape[1] != out.shape[1]):
                continue
            order = np.argsort(theirs, kind="stable")
            pos = np.searchsorted(theirs[order], digests).clip(max=len(theirs) - 1)
            hit = (theirs[order[pos]] == digests) & ~found
            if hit.any():
                if out is None:
                    out = torch.empty(len(digests), matrix.shape[1], dtype=torch.float32)
                out[torch.from_numpy(np.flatnonzero(hit))] = torch.from_numpy(
                    np.ascontiguousarray(matrix[order[pos[hit]]], dtype=np.float32))
                found |= hit
        return out, found

    def add(self, digests: np.ndarray, matrix: np.ndarray) -> None:
        """Keep newly embedded rows as a new shard (nothing for no rows)."""
        from lamp_fid.data.store import file_digest

        if len(digests) == 0:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex[:16]
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            np.save(tmp / "digests.npy", np.asarray(digests, dtype="S16"))
            np.save(tmp / "matrix.npy", np.asarray(matrix, dtype=np.float32))
            files = {f: [(tmp / f).stat().st_size, file_digest(tmp / f)] for f in ("digests.npy", "matrix.npy")}
            (tmp / "meta.json").write_text(json.dumps({"n": len(digests), "files": files}))
            os.rename(tmp, self.root / name)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


class DenseRetriever(Retriever):
    """Rank by dot product of mean-pooled encoder embeddings (default ``facebook/contriever``)."""

    name = "dense"

    def __init__(self, task: str | Task, *, encoder: str = DEFAULT_ENCODER, use_date: bool = False,
                 batch_size: int = 64, device: str = "cpu", tie_break: str = "official",
                 max_length: int = MAX_LENGTH, progress: bool = True, source: str = "<questions>",
                 cache_dir: str | Path | None = None):
        super().__init__(task, use_date=use_date, source=source)
        if batch_size < 1:
            raise LaMPError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder, self.batch_size, self.device = encoder, batch_size, device
        self.tie_break, self.max_length, self.progress = tie_break, max_length, progress
        self._model = self._tokenizer = None
        #: lamp-fid's cache folder: encoder digests are memoized and item embeddings kept there (None: neither)
        self.cache_dir = cache_dir
        self.embedded = self.reused = 0  #: item texts the last ``rank_all`` embedded / read from the cache

    def key(self) -> dict:
        key = {"use_date": self.use_date, "tie_break": self.tie_break,
               **encoder_identity(self.encoder, self.cache_dir)}
        if self.max_length != MAX_LENGTH:
            key["max_length"] = self.max_length
        return key

    # --- the encoder ------------------------------------------------------------------------
    def _load(self) -> None:
        """Load tokenizer and model on first use (a cached ranking never needs them)."""
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.encoder)
            model = AutoModel.from_pretrained(self.encoder, dtype=torch.float32)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LaMPError(f"cannot load dense encoder {self.encoder!r}: {first}") from None
        try:
            self._model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as err:
            raise LaMPError(f"cannot use device {self.device!r}: {err}") from None
        limits = [self.max_length, getattr(self._tokenizer, "model_max_length", self.max_length)]
        self._max_len = min(limits)

    def _tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids (and the tokenizer's other inputs) of each text, truncated, not padded."""
        return dict(self._tokenizer(texts, truncation=True, max_length=self._max_len))

    def _pad(self, enc: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
        """Pad one batch as ``tokenizer(..., padding=True)`` would (pad id, mask 0, on its padding side)."""
        tok = self._tokenizer
        fill = {"input_ids": tok.pad_token_id or 0, "attention_mask": 0,
                "token_type_ids": getattr(tok, "pad_token_type_id", 0)}
        width = max(len(x) for x in enc["input_ids"])
        left = getattr(tok, "padding_side", "right") == "left"
        out = {}
        for key, rows in enc.items():
            pad = fill.get(key, 0)
            out[key] = torch.tensor([[pad] * (width - len(r)) + r if left else r + [pad] * (width - len(r))
                                     for r in rows])
        return out

    @torch.inference_mode()
    def _encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled embeddings [B, d] of one padded batch (float32, on the CPU)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self._model(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"]).float().cpu()

    def embed(self, texts: list[str], desc: str = "embed", progress: bool | None = None,
              chunk: int = 8192) -> torch.Tensor:
        """Embeddings [len(texts), d] in the order given.

        Texts are tokenized once, ``chunk`` at a time in order of character length, and each chunk is
        cut into batches by exact token length: almost no padding, and a batch without any lets the
        attention skip its mask. Memory holds one chunk's token ids at a time.
        """
        self._load()
        progress = self.progress if progress is None else progress
        out = None
        by_chars = np.argsort([len(t) for t in texts], kind="stable")
        with tqdm(total=len(texts), disable=not progress, desc=desc, unit="text") as bar:
            for c in range(0, len(texts), chunk):
                idx = by_chars[c:c + chunk]
                enc = self._tokenize([texts[i] for i in idx])
                order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
                for s in range(0, len(idx), self.batch_size):
                    rows = order[s:s + self.batch_size]
                    emb = self._encode(self._pad({k: [v[r] for r in rows] for k, v in enc.items()}))
                    if out is None:
                        out = torch.empty(len(texts), emb.shape[1], dtype=emb.dtype)
                    out[torch.from_numpy(idx[rows])] = emb
                    bar.update(len(rows))
        return out if out is not None else torch.empty(0, 0)

    def embedding_cache(self) -> EmbeddingCache | None:
        """This encoder setting's item embeddings across files (None without a ``cache_dir``)."""
        if self.cache_dir is None:
            return None
        import hashlib

        settings = {"format": 1, "pooling": self.name, "max_length": self.max_length,
                    **encoder_identity(self.encoder, self.cache_dir)}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        return EmbeddingCache(Path(self.cache_dir).expanduser() / "embeddings" / digest, self.cache_dir)

    def embed_items(self, texts: list[str], progress: bool | None = None) -> torch.Tensor:
        """Embeddings of distinct item texts: read from the embedding cache where it has them, the rest
        embedded (and added to it). Sets ``embedded`` and ``reused``."""
        cache = self.embedding_cache() if texts else None
        if cache is None:
            self.embedded, self.reused = len(texts), 0
            return self.embed(texts, f"embed {len(texts)} distinct items", progress)
        from lamp_fid.data.history import text_digests

        digests = text_digests(texts)
        out, found = cache.lookup(digests)
        missing = np.flatnonzero(~found)
        self.embedded, self.reused = len(missing), int(found.sum())
        if len(missing):
            emb = self.embed([texts[i] for i in missing],
                             f"embed {len(missing)} new distinct items ({self.reused} cached)", progress)
            if out is None:
                out = torch.empty(len(texts), emb.shape[1], dtype=emb.dtype)
            out[torch.from_numpy(missing)] = emb
            cache.add(digests[missing], emb.numpy())
        return out

    # --- ranking ----------------------------------------------------------------------------
    def order(self, scores: torch.Tensor) -> np.ndarray:
        """Best first: ``torch.topk`` over all items (official) or a stable descending sort."""
        if self.tie_break == "stable":
            return torch.sort(scores, descending=True, stable=True).indices.numpy()
        return torch.topk(scores, len(scores)).indices.numpy()

    @staticmethod
    def scores(items: torch.Tensor, positions: np.ndarray, query: torch.Tensor) -> torch.Tensor:
        """Scores [n] of a profile whose item texts are rows ``positions`` of ``items``: each distinct
        text is scored once and its score gathered for every item with that text, so duplicates tie
        exactly, whatever rows a BLAS rounds differently inside a matrix product."""
        distinct, inverse = np.unique(positions, return_inverse=True)
        scores = items[torch.from_numpy(distinct)] @ query  # [m, d] @ [d] -> [m]
        return scores[torch.from_numpy(inverse.reshape(-1))]

    def rank_all(self, examples: Iterable[Example], total: int | None = None,
                 progress: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """Collect the file's distinct item texts, embed each once, then rank every example."""
        index: dict[str, int] = {}
        ids, queries, positions = [], [], []
        for ex in tqdm(examples, total=total, disable=not progress, desc="read profiles", unit="ex"):
            ids.append(ex.id)
            queries.append(self.task.query_of(ex.input))
            positions.append(np.fromiter((index.setdefault(t, len(index)) for t in self.texts(ex)),
                                         np.int64))
        if not ids:
            return
        items = self.embed_items(list(index), progress)
        del index
        qs = self.embed(queries, f"embed {len(queries)} queries", progress)
        for i in tqdm(range(len(ids)), disable=not progress, desc="rank dense", unit="ex"):
            if len(positions[i]) == 0:
                yield ids[i], np.empty(0, dtype=np.int64)
                continue
            yield ids[i], self.order(self.scores(items, positions[i], qs[i]))

    def rank(self, example: Example) -> np.ndarray:
        return next(self.rank_all([example], progress=False))[1]
