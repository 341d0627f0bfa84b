"""PPlug's additions to a batch: the query tokens of the user encoder and the frozen history embeddings.

:class:`PPlugDataset` wraps a passage dataset (a :class:`~lamp_fid.data.tokens.TokenDataset` or the
on-the-fly :class:`~lamp_fid.data.module.PassageDataset`) and adds, per example, its dataset index,
the user encoder's token ids of ``instruction + φq(x)`` (φq: the task's query, the one the retrievers
rank with; tokenized once, when the dataset is built) and the frozen history embeddings ``[n, d_enc]``
(:class:`~lamp_fid.data.history.HistoryEmbeddings`, memory-mapped). :class:`PPlugCollator` wraps the
passage collator and adds to its batch::

    query_ids  [B, Lq]  int64, padded with the user tokenizer's pad id (right)
    query_mask [B, Lq]  int64
    hist       [B, N, d_enc] float32 (N: the longest history of the batch; zero rows on padding)
    hist_mask  [B, N]   bool
    index      [B]      int64, the examples' dataset indices (history dropout draws by them)

History dropout (:func:`apply_history_dropout`) clears ``hist_mask`` entries of dropped items in the
main process, where the epoch is known (a DataLoader worker's copy of the dataset never hears of a new
epoch with persistent workers): a masked item is exactly a removed one for PersonaPlug (its softmax
weight is 0 and its projection is never summed).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lamp_fid.data.history import HistoryEmbeddings, history_dropout, pad_histories
from lamp_fid.errors import LaMPError
from lamp_fid.tasks import get_task


def tokenize_queries(store, tokenizer, instruction: str, max_length: int,
                     chunk: int = 256) -> tuple[list[str], list[np.ndarray]]:
    """The example ids, and every example's ``instruction + φq(x)`` as int32 token ids (truncated to
    ``max_length``), in store order (one pass over the store)."""
    task = get_task(store.task)
    ids, texts = [], []
    for ex in store:
        ids.append(ex.id)
        texts.append(instruction + task.query_of(ex.input))
    out: list[np.ndarray] = []
    for s in range(0, len(texts), chunk):
        enc = tokenizer(texts[s:s + chunk], truncation=True, max_length=max_length)["input_ids"]
        out.extend(np.asarray(row, dtype=np.int32) for row in enc)
    return ids, out


class PPlugDataset(Dataset):
    """A passage dataset plus each example's ``index``, ``query_ids`` and ``hist`` (see the module doc).

    Picklable (DataLoader workers): the history embeddings reopen their folder, the rest is arrays.
    """

    def __init__(self, base: Dataset, ids: Sequence[str], queries: list[np.ndarray],
                 history: HistoryEmbeddings, max_items: int | None = None, source: str = "<questions>"):
        """
        Args:
            base: the passage dataset (its items need an ``id``).
            ids: the example ids in dataset order (the store's).
            queries: the query token ids of each example, in the same order.
            history: the frozen history embeddings of the same store.
            max_items: keep only the last ``max_items`` items of each profile (None: all).
            source: the questions file, for error messages.
        """
        if not (len(base) == len(ids) == len(queries) == len(history)) or list(ids) != history.ids:
            raise LaMPError(f"{source}: the history embeddings ({len(history)} examples) do not match the "
                            f"passages ({len(base)} examples): delete the cache folder {history.directory}")
        self.base, self.queries, self.history, self.max_items = base, queries, history, max_items
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        row = dict(self.base[i])
        row.update(index=i, query_ids=self.queries[i], hist=self.history.embeddings(i, self.max_items))
        return row

    def __getattr__(self, name: str):
        # longest(), fallbacks, ... of a TokenDataset (group_by_length, reports) pass through
        if name in ("base", "__setstate__", "__getstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


class PPlugCollator:
    """The passage collator's batch plus ``query_ids``, ``query_mask``, ``hist``, ``hist_mask`` and
    ``index`` (see the module doc)."""

    def __init__(self, base: Callable[[list[dict]], dict], query_pad_id: int, dim: int):
        """
        Args:
            base: the passage collator (PadCollator or PassageCollator).
            query_pad_id: the user tokenizer's pad id.
            dim: the history embeddings' width d_enc (used when no example of the batch has an item).
        """
        self.base, self.query_pad_id, self.dim = base, int(query_pad_id), int(dim)

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.base(rows)
        Lq = max(len(r["query_ids"]) for r in rows)
        query_ids = np.full((len(rows), Lq), self.query_pad_id, dtype=np.int64)
        query_mask = np.zeros((len(rows), Lq), dtype=np.int64)
        for b, r in enumerate(rows):
            query_ids[b, :len(r["query_ids"])] = r["query_ids"]
            query_mask[b, :len(r["query_ids"])] = 1
        hist, hist_mask = pad_histories([r["hist"] for r in rows], self.dim)
        batch.update(query_ids=torch.from_numpy(query_ids), query_mask=torch.from_numpy(query_mask),
                     hist=hist, hist_mask=hist_mask,
                     index=torch.tensor([r["index"] for r in rows], dtype=torch.int64))
        return batch


def apply_history_dropout(batch: dict, p: float, seed: int, epoch: int) -> dict:
    """Clear the ``hist_mask`` of the items each example drops this epoch
    (:func:`~lamp_fid.data.history.history_dropout` by ``(seed, epoch, index)``); in place, returned."""
    if p <= 0 or "hist_mask" not in batch:
        return batch
    mask = batch["hist_mask"]
    for b, index in enumerate(batch["index"].tolist()):
        n = int(mask[b].sum())
        keep = history_dropout(n, seed, epoch, index, p)
        if len(keep) < n:
            row = torch.zeros(mask.shape[1], dtype=torch.bool)
            row[torch.from_numpy(keep)] = True
            mask[b] = row
    return batch
