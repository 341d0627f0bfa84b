"""What every retriever shares: the item texts, the interface and the registry of retrievers by name.

A retriever ranks one example's whole profile against its query φq(x) and returns positions into
``example.profile``, best first (an ``np.ndarray`` of ints), so the top k of any k is a prefix.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Literal, get_args

import numpy as np
from tqdm.auto import tqdm

from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.setting import RetrieverName
from lamp_fid.tasks import Task, get_task

TieBreak = Literal["official", "stable"]
RETRIEVERS: tuple[str, ...] = get_args(RetrieverName)
_ALIASES = {"contriever": "dense"}
DEFAULT_ENCODER = "facebook/contriever"


def item_texts(task: Task, example: Example, use_date: bool = False, source: str = "<questions>") -> list[str]:
    """The ranked text of every profile item: ``task.item_text(item)``, plus ``" date: <date>"``
    when ``use_date`` (the official ``use_date`` corpus). A missing field is a LaMPDataError."""
    texts = []
    for item in example.profile:
        try:
            text = task.item_text(item)
            if use_date:
                text = f"{text} date: {item['date']}"
        except KeyError as err:
            raise LaMPDataError(source, f"profile item {item.get('id')!r} has no {err.args[0]!r} field",
                                record_id=example.id, field=err.args[0]) from None
        texts.append(text)
    return texts


class Retriever:
    """Ranks profiles. Subclasses set ``name`` and implement ``rank``; those that gain from seeing
    the whole file at once (dense) override ``rank_all``."""

    name = ""

    def __init__(self, task: str | Task, *, use_date: bool = False, source: str = "<questions>"):
        self.task = get_task(task)
        self.use_date = use_date
        self.source = source  # names the file in error messages

    def key(self) -> dict[str, Any]:
        """The settings that change this retriever's rankings (they key the ranking cache)."""
        return {}

    def texts(self, example: Example) -> list[str]:
        return item_texts(self.task, example, self.use_date, self.source)

    def rank(self, example: Example) -> np.ndarray:
        """Positions into ``example.profile``, best first, covering the whole profile."""
        raise NotImplementedError

    def rank_all(self, examples: Iterable[Example], total: int | None = None,
                 progress: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """``(example id, ranking)`` for every example, in order."""
        for ex in tqdm(examples, total=total, disable=not progress, desc=f"rank {self.name}", unit="ex"):
            yield ex.id, self.rank(ex)


class NoRetriever(Retriever):
    """``none``: no profile at all (the non-personalized baseline): every ranking is empty."""

    name = "none"

    def rank(self, example: Example) -> np.ndarray:
        return np.empty(0, dtype=np.int64)


def make_retriever(name: str, task: str | Task, *, use_date: bool = False,
                   encoder: str = DEFAULT_ENCODER, batch_size: int = 64, device: str = "cpu",
                   seed: int = 0, tie_break: str = "official", source: str = "<questions>",
                   progress: bool = True) -> Retriever:
    """Build the retriever called ``name`` (``bm25``, ``dense``, ``recency``, ``random``, ``none``);
    options that do not apply to it are ignored."""
    name = _ALIASES.get(name, name)
    if tie_break not in ("official", "stable"):
        raise LaMPError(f"unknown tie_break {tie_break!r}; expected official or stable")
    common = dict(use_date=use_date, source=source)
    if name == "bm25":
        from lamp_fid.retrieval.bm25 import BM25Retriever

        return BM25Retriever(task, tie_break=tie_break, **common)
    if name == "dense":
        from lamp_fid.retrieval.dense import DenseRetriever

        return DenseRetriever(task, encoder=encoder, batch_size=batch_size, device=device,
                              tie_break=tie_break, progress=progress, **common)
    if name == "recency":
        from lamp_fid.retrieval.recency import RecencyRetriever

        return RecencyRetriever(task, source=source)
    if name == "random":
        from lamp_fid.retrieval.randomized import RandomRetriever

        return RandomRetriever(task, seed=seed, source=source)
    if name == "none":
        return NoRetriever(task, source=source)
    raise LaMPError(f"unknown retriever {name!r}; expected one of {', '.join(RETRIEVERS)}")
