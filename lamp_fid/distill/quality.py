"""Retriever quality without relevance labels: agreement with the reader, and recall of known-useful items.

LaMP has no relevance labels, so a retriever's ranking is compared with the reader's scores:

* **nDCG against the reader.** Over the items the reader scored for a question (the candidates it read),
  taken in the retriever's order (unscored items are skipped), with graded relevance = the reader's
  softmax over those candidates (``softmax(score / temperature)``, the distribution the retriever is
  distilled towards), gain ``g / log2(rank + 1)``, normalised by the reader's own order. 1 means the
  retriever orders the candidates as the reader does; equal reader scores make every order ideal.
  Softmax gains weigh the top of the reader's order most, as the KL loss does; the scores' scale
  (or ``temperature``) sets how sharply.
* **recall@k of useful items**, for generated data whose generator knows which profile items carry the
  signal: the share of a question's useful items among the retriever's top k, averaged over the
  questions that have a useful item.

Rankings here are ``{question id: [profile item ids, best first]}``, e.g. from
``Rankings.item_ids(example)`` of the ranking cache.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from lamp_fid.errors import LaMPError


def _softmax(values: list[float], temperature: float) -> list[float]:
    top = max(values)
    exps = [math.exp((v - top) / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


def ndcg(ranking: Sequence[str], reader: Mapping[str, float], k: int | None = None, temperature: float = 1.0,
         question: str = "?") -> float:
    """nDCG@k (all candidates if k is None) of ``ranking`` against one question's reader scores
    ``{item id: score}`` (see the module docstring). A scored item missing from ``ranking`` is an error."""
    if not reader:
        raise LaMPError(f"nDCG: question {question!r} has no reader scores")
    if temperature <= 0 or (k is not None and k < 1):
        raise LaMPError(f"nDCG: temperature must be > 0 and k >= 1, got {temperature} and {k}")
    ids = list(reader)
    gain = dict(zip(ids, _softmax([float(reader[i]) for i in ids], temperature)))
    order = [i for i in dict.fromkeys(ranking) if i in gain]
    if len(order) != len(gain):
        missing = next(i for i in ids if i not in set(order))
        raise LaMPError(f"nDCG: question {question!r}: the ranking lacks the scored item {missing!r}")
    cut = len(order) if k is None else k
    return _dcg([gain[i] for i in order[:cut]]) / _dcg(sorted(gain.values(), reverse=True)[:cut])


def mean_ndcg(rankings: Mapping[str, Sequence[str]], reader: Mapping[str, Mapping[str, float]],
              k: int | None = None, temperature: float = 1.0) -> float:
    """Mean :func:`ndcg` over the questions the reader scored (those with no scored item are skipped)."""
    values = []
    for qid, scores in reader.items():
        if not scores:
            continue
        if qid not in rankings:
            raise LaMPError(f"nDCG: no ranking for question {qid!r}")
        values.append(ndcg(rankings[qid], scores, k, temperature, qid))
    if not values:
        raise LaMPError("nDCG: no question has reader scores")
    return sum(values) / len(values)


def recall_at_k(ranking: Sequence[str], useful: Collection[str], k: int) -> float:
    """Share of the ``useful`` items among the first ``k`` of ``ranking`` (``useful`` not empty)."""
    if k < 1 or not useful:
        raise LaMPError(f"recall@k needs k >= 1 and a useful item, got k={k} and {len(useful)} items")
    return len(set(ranking[:k]) & set(useful)) / len(set(useful))


def mean_recall_at_k(rankings: Mapping[str, Sequence[str]], useful: Mapping[str, Collection[str]],
                     k: int) -> float:
    """Mean :func:`recall_at_k` over the questions with at least one useful item."""
    values = []
    for qid, items in useful.items():
        if not items:
            continue
        if qid not in rankings:
            raise LaMPError(f"recall@{k}: no ranking for question {qid!r}")
        values.append(recall_at_k(rankings[qid], items, k))
    if not values:
        raise LaMPError(f"recall@{k}: no question has a known useful item")
    return sum(values) / len(values)
