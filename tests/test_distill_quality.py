"""Retriever quality without labels, on hand-worked examples."""

from __future__ import annotations

import math

import pytest

from lamp_fid.distill.quality import mean_ndcg, mean_recall_at_k, ndcg, recall_at_k
from lamp_fid.errors import LaMPError

# softmax(ln 2, 0, 0) = (1/2, 1/4, 1/4): the reader's graded relevance of a, b, c
READER = {"a": math.log(2), "b": 0.0, "c": 0.0}
L3 = math.log2(3)  # the discount of rank 2


def test_ndcg_by_hand():
    ideal = 0.5 + 0.25 / L3 + 0.25 / 2
    assert ndcg(["a", "b", "c"], READER) == pytest.approx(1.0, abs=1e-12)
    assert ndcg(["b", "a", "c"], READER) == pytest.approx((0.25 + 0.5 / L3 + 0.25 / 2) / ideal, abs=1e-12)
    assert ndcg(["c", "b", "a"], READER) == pytest.approx((0.25 + 0.25 / L3 + 0.5 / 2) / ideal, abs=1e-12)
    # unscored items (not among the reader's candidates) are skipped, not counted as misses
    assert ndcg(["x", "b", "y", "a", "c"], READER) == ndcg(["b", "a", "c"], READER)
    assert ndcg(["b", "a", "c"], READER, k=1) == pytest.approx(0.25 / 0.5, abs=1e-12)
    assert ndcg(["b", "a", "c"], READER, k=2) == pytest.approx((0.25 + 0.5 / L3) / (0.5 + 0.25 / L3), abs=1e-12)
    # temperature 0.5: softmax(2 ln 2, 0, 0) = (4/6, 1/6, 1/6)
    t = ndcg(["b", "a", "c"], READER, temperature=0.5)
    ideal = 4 / 6 + (1 / 6) / L3 + (1 / 6) / 2
    assert t == pytest.approx((1 / 6 + (4 / 6) / L3 + (1 / 6) / 2) / ideal, abs=1e-12)
    # equal reader scores: every order is ideal
    assert ndcg(["c", "a", "b"], {"a": 1.0, "b": 1.0, "c": 1.0}) == pytest.approx(1.0, abs=1e-12)


def test_mean_ndcg_and_faults():
    rankings = {"q1": ["a", "b", "c"], "q2": ["b", "a", "c"], "q3": []}
    value = mean_ndcg(rankings, {"q1": READER, "q2": READER, "q3": {}})
    assert value == pytest.approx((1 + ndcg(["b", "a", "c"], READER)) / 2, abs=1e-12)
    with pytest.raises(LaMPError, match="question 'q1': the ranking lacks the scored item 'c'"):
        ndcg(["a", "b"], READER, question="q1")
    with pytest.raises(LaMPError, match="no ranking for question 'q9'"):
        mean_ndcg(rankings, {"q9": READER})
    with pytest.raises(LaMPError, match="no question has reader scores"):
        mean_ndcg(rankings, {"q3": {}})
    with pytest.raises(LaMPError, match="k >= 1"):
        ndcg(["a"], {"a": 1.0}, k=0)


def test_recall_at_k_by_hand():
    ranking = ["a", "b", "c", "d", "e"]
    assert recall_at_k(ranking, {"b", "d"}, 1) == 0.0
    assert recall_at_k(ranking, {"b", "d"}, 2) == 0.5
    assert recall_at_k(ranking, {"b", "d"}, 4) == 1.0
    assert recall_at_k(["a"], {"a", "z"}, 4) == 0.5  # a useful item the ranking lacks is a miss
    rankings = {"q1": ranking, "q2": ["d", "c", "b", "a"], "q3": ["a"]}
    # q1: 1/2, q2: 2/2; q3 has no useful item and does not count
    assert mean_recall_at_k(rankings, {"q1": {"b", "d"}, "q2": ["b", "d"], "q3": set()}, 3) == 0.75
    with pytest.raises(LaMPError, match="no question has a known useful item"):
        mean_recall_at_k(rankings, {"q3": set()}, 3)
    with pytest.raises(LaMPError, match="no ranking for question 'q9'"):
        mean_recall_at_k(rankings, {"q9": {"a"}}, 3)
