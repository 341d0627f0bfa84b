"""Retrievers against independent oracles: rank_bm25 itself, the recency rule, hand checks.

The rules are those of docs/official_mode.md#retrievers."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.retrieval.base import RETRIEVERS, item_texts, make_retriever
from lamp_fid.retrieval.bm25 import BM25Retriever
from lamp_fid.retrieval.randomized import RandomRetriever
from lamp_fid.retrieval.recency import RecencyRetriever


def tweet_example(query: str, texts: list[str], eid: str = "q1", **fields) -> Example:
    """A LaMP_7 example: φq = everything after the first ':'; item text = ``text``."""
    profile = [{"id": f"p{i}", "text": t, **{k: v[i] for k, v in fields.items()}} for i, t in enumerate(texts)]
    return Example(id=eid, input=f"Paraphrase the following tweet: {query}", profile=profile)


def official_bm25(query: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The official procedure: BM25Okapi per question, get_top_n over all items -> positions."""
    bm25 = BM25Okapi([t.split() for t in texts])
    positions = bm25.get_top_n(query.split(), list(range(len(texts))), n=len(texts))
    return np.asarray(positions), bm25.get_scores(query.split())


def random_profile(rng: random.Random) -> tuple[str, list[str]]:
    vocab = [f"w{i}" for i in range(rng.choice([2, 3, 6, 30, 300]))] + ["The", "the", "the,", "Café"]
    n = rng.choice([1, 1, 2, 3, 5, 16, 17, 40, 120])
    texts: list[str] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.08:
            texts.append(rng.choice(["", "  ", "\n"]))  # empty texts
        elif r < 0.25 and texts:
            texts.append(rng.choice(texts))  # duplicated items: exact ties
        else:
            texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40))))
    if all(not t.split() for t in texts):
        texts.append("w0 w1")  # rank_bm25 divides by zero on a profile without any token
    words = vocab + ["unknown", "w0"]
    query = "  ".join(rng.choice(words) for _ in range(rng.randint(0, 25)))  # repeats included
    return query, texts


def test_bm25_identical_to_rank_bm25_on_random_profiles():
    rng = random.Random(1234)
    r = BM25Retriever("LaMP_7")
    checked_negative_idf = 0
    for trial in range(600):
        query, texts = random_profile(rng)
        want, want_scores = official_bm25(query, texts)
        got_scores = r.scores(query, texts)
        assert got_scores.tobytes() == want_scores.tobytes(), (trial, texts, query)  # bit for bit
        got = r.rank(tweet_example(query, texts))
        assert got.tolist() == want.tolist(), (trial, texts, query)
        bm = BM25Okapi([t.split() for t in texts])
        checked_negative_idf += any(bm.idf.get(w, 0) < 0 for w in query.split())
    assert checked_negative_idf > 50  # the epsilon floor was exercised


def test_bm25_ties_follow_numpy_argsort_and_stable_option_keeps_profile_order():
    texts = ["a b c"] * 20 + ["x y"] * 5 + ["a"] * 3  # > 16 items: numpy's introsort/SIMD path
    query = "a"
    want, _ = official_bm25(query, texts)
    got = BM25Retriever("LaMP_7").rank(tweet_example(query, texts))
    assert got.tolist() == want.tolist()
    stable = BM25Retriever("LaMP_7", tie_break="stable").rank(tweet_example(query, texts))
    scores = BM25Okapi([t.split() for t in texts]).get_scores(query.split())
    assert stable.tolist() == sorted(range(len(texts)), key=lambda i: (-scores[i], i))


def test_bm25_single_item_empty_items_and_empty_query():
    r = BM25Retriever("LaMP_7")
    assert r.rank(tweet_example("w1 w2", ["w1"])).tolist() == [0]
    for query, texts in [("", ["a", "b", "c"]), ("zzz", ["a", "", "a b"]), ("a", ["", "a", "", "a a"])]:
        assert r.rank(tweet_example(query, texts)).tolist() == official_bm25(query, texts)[0].tolist()
    # rank_bm25 divides by zero when no item has a token; we score all items 0 (argsort of zeros)
    assert r.rank(tweet_example("a", ["", " "])).tolist() == np.argsort(np.zeros(2))[::-1].tolist()
    assert r.rank(tweet_example("a", [])).tolist() == []


def test_bm25_use_date_and_two_field_items_match_the_official_corpus():
    rng = random.Random(7)
    words = [f"t{i}" for i in range(12)]
    profile = [{"id": str(i), "title": " ".join(rng.choices(words, k=4)),
                "text": " ".join(rng.choices(words, k=rng.randint(1, 30))),
                "date": f"2020-01-{rng.randint(1, 3):02d}"} for i in range(30)]
    article = " ".join(rng.choices(words, k=20)) + " 2020-01-02"
    ex = Example(id="7", input=f"Generate a headline for the following article: {article}", profile=profile)
    for use_date in (False, True):
        corpus = [f"{p['title']} {p['text']}" + (f" date: {p['date']}" if use_date else "") for p in profile]
        assert item_texts(make_retriever("bm25", "LaMP_4").task, ex, use_date) == corpus
        want, _ = official_bm25(article, corpus)
        got = make_retriever("bm25", "LaMP_4", use_date=use_date).rank(ex)
        assert got.tolist() == want.tolist()


def test_bm25_citation_query_uses_the_two_reference_titles():
    profile = [{"id": "a", "title": "graph neural networks", "abstract": "message passing"},
               {"id": "b", "title": "speech recognition", "abstract": "acoustic models"},
               {"id": "c", "title": "author own title words", "abstract": "own"}]
    inp = ('For an author who has written the paper with the title "author own title words", which '
           'reference is related? Just answer with [1] or [2] without explanation. '
           '[1]: "speech recognition" [2]: "graph networks"')
    got = make_retriever("bm25", "LaMP_1").rank(Example(id="1", input=inp, profile=profile))
    corpus = [f"{p['title']} {p['abstract']}" for p in profile]
    assert got.tolist() == official_bm25("speech recognition graph networks", corpus)[0].tolist()
    assert got[-1] == 2  # the author's own title is not part of the query


def test_bm25_file_state_is_reused_across_questions_without_changing_results():
    rng = random.Random(3)
    r = BM25Retriever("LaMP_7", max_cached_texts=50)  # small: exercises the reset too
    pool = [" ".join(rng.choices([f"w{i}" for i in range(40)], k=rng.randint(1, 20))) for _ in range(80)]
    prev: list[str] = []
    for i in range(60):
        texts = rng.sample(pool, rng.randint(1, 30))
        if i % 3:  # consecutive questions of one user share their profile
            texts = prev
        query = " ".join(rng.choices([f"w{i}" for i in range(45)], k=8))
        assert r.rank(tweet_example(query, texts)).tolist() == official_bm25(query, texts)[0].tolist()
        prev = texts


def official_recency(profile: list[dict]) -> list[int]:
    """docs/official_mode.md#retrievers: stable ascending sort by the date as an int tuple, reversed."""
    key = lambda i: tuple(int(x) for x in str(profile[i]["date"]).split("-"))  # noqa: E731
    return sorted(range(len(profile)), key=key)[::-1]


def test_recency_most_recent_first_and_later_position_wins_equal_dates():
    dates = ["2020-01-02", "2019-12-31", "2020-01-02", "2020-1-10", "2018-05-05", "2020-01-02"]
    ex = tweet_example("x", ["t"] * len(dates), date=dates)
    got = RecencyRetriever("LaMP_7").rank(ex).tolist()
    assert got == [3, 5, 2, 0, 1, 4]  # "2020-1-10" parses as (2020, 1, 10): the latest
    assert got == official_recency(ex.profile)
    rng = random.Random(0)
    for _ in range(50):
        ds = [f"{rng.randint(2018, 2019)}-{rng.randint(1, 2)}-{rng.randint(1, 3)}" for _ in range(rng.randint(0, 30))]
        ex = tweet_example("x", ["t"] * len(ds), date=ds)
        assert RecencyRetriever("LaMP_7").rank(ex).tolist() == official_recency(ex.profile)


@pytest.mark.parametrize("bad", [None, "yesterday", "2020/01/02"])
def test_recency_missing_or_unparseable_date_names_record_and_field(bad):
    profile = [{"id": "i1", "text": "a", "date": "2020-01-01"}, {"id": "i2", "text": "b"}]
    if bad is not None:
        profile[1]["date"] = bad
    with pytest.raises(LaMPDataError) as err:
        RecencyRetriever("LaMP_7", source="dev_questions.json").rank(Example("q9", "x: y", profile))
    assert err.value.record_id == "q9" and err.value.field == "date"
    assert "dev_questions.json" in str(err.value) and "i2" in str(err.value)


def test_random_is_a_deterministic_permutation_per_seed_and_example():
    ex = tweet_example("x", [f"t{i}" for i in range(50)], eid="abc")
    a = RandomRetriever("LaMP_7", seed=0).rank(ex)
    assert sorted(a.tolist()) == list(range(50))  # k distinct items for every k
    assert a.tolist() == RandomRetriever("LaMP_7", seed=0).rank(ex).tolist()
    assert a.tolist() != RandomRetriever("LaMP_7", seed=1).rank(ex).tolist()
    other = tweet_example("x", [f"t{i}" for i in range(50)], eid="abd")
    assert a.tolist() != RandomRetriever("LaMP_7", seed=0).rank(other).tolist()
    # top-1 is roughly uniform over positions (not always the same item)
    firsts = {RandomRetriever("LaMP_7", seed=s).rank(ex)[0] for s in range(40)}
    assert len(firsts) > 15


def test_random_does_not_depend_on_python_hash_seed():
    code = ("from lamp_fid.retrieval.randomized import RandomRetriever;"
            "from lamp_fid.data.example import Example;"
            "print(RandomRetriever('LaMP_7', seed=3).rank(Example('q', 'x: y', [{}] * 20)).tolist())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("1", "2")}
    assert len(outs) == 1


def test_none_and_empty_profiles_give_empty_rankings():
    empty = tweet_example("x", [], date=[])
    for name in RETRIEVERS:
        if name == "dense":
            continue  # tests/test_dense.py
        assert make_retriever(name, "LaMP_7").rank(empty).tolist() == []
    assert make_retriever("none", "LaMP_7").rank(tweet_example("x", ["a", "b"])).tolist() == []


def test_make_retriever_errors_and_missing_item_fields():
    with pytest.raises(LaMPError, match="unknown retriever"):
        make_retriever("tfidf", "LaMP_7")
    with pytest.raises(LaMPError, match="tie_break"):
        make_retriever("bm25", "LaMP_7", tie_break="random")
    ex = Example("q1", "x: y", [{"id": "i1", "txt": "a"}])
    with pytest.raises(LaMPDataError) as err:
        make_retriever("bm25", "LaMP_7").rank(ex)
    assert err.value.field == "text" and err.value.record_id == "q1"
    with pytest.raises(LaMPDataError) as err:
        make_retriever("bm25", "LaMP_7", use_date=True).rank(Example("q1", "x: y", [{"id": "i", "text": "a"}]))
    assert err.value.field == "date"
