"""PPlug's user embedder against its formulas, its soft-token scale, gradients and the prepend path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.testing import assert_close

from lamp_fid.errors import LaMPError
from lamp_fid.pplug import BGE_INSTRUCTION, PersonaPlug, pool, prepend_soft_tokens
import tiny
from tiny import build_tiny_t5

WORDS = [f"w{i}" for i in range(40)]


def build_tiny_bert(path: str | Path, seed: int = 0, hidden: int = 16) -> Path:
    """A 2-layer random BERT + WordLevel tokenizer over :data:`WORDS` (``tiny.build_tiny_bert``)."""
    return tiny.build_tiny_bert(path, WORDS, hidden=hidden, intermediate=32, max_length=64, seed=seed)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("t5"))


def make_plug(bert_dir, d_model: int = 24, pooling: str = "cls", seed: int = 0) -> PersonaPlug:
    torch.manual_seed(seed)
    lm_embeddings = nn.Embedding(50, d_model)
    return PersonaPlug(str(bert_dir), lm_embeddings, pooling=pooling).eval()


def batch(plug: PersonaPlug, n_items=(3, 1), d_enc: int = 16, seed: int = 1):
    """Two queries, L2-normalised history rows (padding rows random: they must not matter)."""
    g = torch.Generator().manual_seed(seed)
    q = plug.query_inputs(["w1 w2 w3", "w4 w5"])
    N = max(n_items)
    hist = F.normalize(torch.randn(len(n_items), N, d_enc, generator=g), dim=-1)
    mask = torch.tensor([[j < n for j in range(N)] for n in n_items])
    return q["input_ids"], q["attention_mask"], hist, mask


def by_hand(plug: PersonaPlug, ids, qmask, hist, mask) -> torch.Tensor:
    """The paper's formulas with plain torch ops, one user at a time."""
    hidden = plug.encoder(input_ids=ids, attention_mask=qmask).last_hidden_state
    x = hidden[:, 0] / hidden[:, 0].norm(dim=-1, keepdim=True)  # CLS, L2-normalised
    target = plug.soft_norm
    out = []
    for b in range(len(ids)):
        h = hist[b][mask[b]]  # the user's real items [n, d_enc]
        w = torch.exp(h @ x[b]) / torch.exp(h @ x[b]).sum()  # softmax_i(x · h_i)
        P = sum(w[i] * plug.proj(h[i]) for i in range(len(h)))
        I = plug.proj_instruction(plug.instruction)
        out.append(torch.stack([I / I.norm() * target, P / P.norm() * target]))
    return torch.stack(out)


def test_user_embedder_equals_the_formulas(bert_dir):
    plug = make_plug(bert_dir)
    ids, qmask, hist, mask = batch(plug)
    with torch.no_grad():
        soft = plug(ids, qmask, hist, mask)
        expected = by_hand(plug, ids, qmask, hist, mask)
    assert soft.shape == (2, 2, 24)
    assert_close(soft, expected, rtol=1e-5, atol=1e-5)


def test_weights_are_a_masked_softmax_without_temperature(bert_dir):
    x = F.normalize(torch.tensor([[1.0, 2.0, 0.5]]), dim=-1)
    h = F.normalize(torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]]), dim=-1)
    w = PersonaPlug.weights(x, h, torch.tensor([[True, True, False]]))
    s = (h[0, :2] @ x[0]).exp()
    assert_close(w, torch.cat([s / s.sum(), torch.zeros(1)])[None], rtol=1e-6, atol=1e-7)


def test_padded_rows_change_nothing(bert_dir):
    plug = make_plug(bert_dir)
    ids, qmask, hist, mask = batch(plug, n_items=(4, 2))
    with torch.no_grad():
        soft = plug(ids, qmask, hist, mask)
        garbage = hist.clone()
        garbage[~mask] = float("nan")  # padding rows are zeroed before any arithmetic
        garbage[1, 3] = float("inf")
        assert torch.equal(plug(ids, qmask, garbage, mask), soft)  # same ops on the same values
        # without the padded columns at all (other shapes): the same numbers up to float rounding
        alone = plug(ids[1:], qmask[1:], hist[1:, :2], mask[1:, :2])
    assert_close(alone, soft[1:], rtol=1e-5, atol=1e-6)


def test_a_user_without_history_gets_proj_of_zero_and_no_nan(bert_dir):
    plug = make_plug(bert_dir)
    ids, qmask, hist, mask = batch(plug, n_items=(3, 0))
    soft = plug(ids, qmask, hist, mask)
    assert torch.isfinite(soft).all()
    P0 = plug.proj(torch.zeros(16))
    assert_close(soft[1, 1], P0 / P0.norm() * plug.soft_norm, rtol=1e-5, atol=1e-5)
    soft.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in plug.parameters() if p.grad is not None)
    # a batch in which nobody has any item: hist [B, 0, d]
    none = plug(ids, qmask, hist[:, :0], mask[:, :0])
    assert none.shape == (2, 2, 24) and torch.isfinite(none).all()
    assert_close(none[:, 1], (P0 / P0.norm() * plug.soft_norm).expand(2, -1), rtol=1e-5, atol=1e-5)


def test_soft_tokens_have_the_lm_embedding_norm(bert_dir):
    torch.manual_seed(0)
    emb = nn.Embedding(30, 24)
    with torch.no_grad():
        emb.weight.mul_(torch.linspace(1, 40, 30)[:, None])  # rows of very different lengths
    plug = PersonaPlug(str(bert_dir), emb).eval()
    assert_close(plug.soft_norm, emb.weight.norm(dim=-1).mean(), rtol=1e-6, atol=0)
    assert "soft_norm" in plug.state_dict()  # saved and restored with the weights
    ids, qmask, hist, mask = batch(plug)
    with torch.no_grad():
        norms = plug(ids, qmask, hist, mask).norm(dim=-1)
    assert_close(norms, plug.soft_norm.expand(2, 2), rtol=1e-5, atol=0)


def test_mean_pooling_and_options(bert_dir):
    plug = make_plug(bert_dir, pooling="mean")
    ids, qmask, _, _ = batch(plug)
    with torch.no_grad():
        hidden = plug.encoder(input_ids=ids, attention_mask=qmask).last_hidden_state
        x = plug.embed_query(ids, qmask)
    m = qmask[..., None].float()
    assert_close(x, F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1), rtol=1e-5, atol=1e-6)
    assert_close(pool(hidden, qmask, "cls"), F.normalize(hidden[:, 0], dim=-1))
    with pytest.raises(LaMPError, match="unknown pooling 'max'"):
        make_plug(bert_dir, pooling="max")
    with pytest.raises(LaMPError, match="cannot load user encoder"):
        PersonaPlug(str(bert_dir / "missing"), nn.Embedding(5, 8))


def test_query_inputs_put_the_instruction_first(bert_dir):
    assert BGE_INSTRUCTION == "Represent this sentence for searching relevant passages: "
    plug = make_plug(bert_dir)
    plug.instruction_text = "w9 w8 "
    got = plug.query_inputs(["w1", "w2 w3"])
    want = plug.tokenizer(["w9 w8 w1", "w9 w8 w2 w3"], padding=True, return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["attention_mask"], want["attention_mask"])


def load_t5(t5_dir):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    return T5ForConditionalGeneration.from_pretrained(t5_dir).eval(), AutoTokenizer.from_pretrained(t5_dir)


def test_prepending_two_token_embeddings_equals_prepending_the_tokens(t5_dir):
    lm, tok = load_t5(t5_dir)
    enc = tok(["What is the score of the following review", "great product"], padding=True,
              return_tensors="pt")
    labels = tok(["5", "4"], return_tensors="pt")["input_ids"]
    a, b = tok.convert_tokens_to_ids(["▁the", "▁movie"])
    soft = lm.get_input_embeddings()(torch.tensor([a, b])).expand(2, -1, -1)  # [2, 2, d]
    with torch.no_grad():
        embeds, mask = prepend_soft_tokens(lm, enc["input_ids"], enc["attention_mask"], soft)
        got = lm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        ids = torch.cat([torch.tensor([[a, b]] * 2), enc["input_ids"]], 1)
        want = lm(input_ids=ids, attention_mask=torch.cat([torch.ones(2, 2, dtype=torch.long),
                                                           enc["attention_mask"]], 1), labels=labels)
    assert torch.equal(mask[:, :2], torch.ones(2, 2, dtype=mask.dtype))
    assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)


def test_prepend_repeats_soft_tokens_per_passage_and_keeps_empty_passages_masked(t5_dir):
    lm, _ = load_t5(t5_dir)
    B, k, L, d = 2, 3, 4, lm.config.d_model
    ids = torch.randint(3, 50, (B, k, L))
    mask = torch.ones(B, k, L, dtype=torch.long)
    mask[1, 2] = 0  # the second user has 2 items: its third passage is padding
    ids[1, 2] = 0
    soft = torch.randn(B, 2, d)
    embeds, full = prepend_soft_tokens(lm, ids.view(B * k, L), mask.view(B * k, L), soft)
    assert embeds.shape == (B * k, 2 + L, d)
    for b in range(B):
        for j in range(k):
            assert torch.equal(embeds[b * k + j, :2], soft[b])  # example-major, as fuse() reshapes
    assert full[5].sum() == 0  # the padding passage stays fully masked
    assert torch.equal(full[:5, :2], torch.ones(5, 2, dtype=full.dtype))
    with pytest.raises(LaMPError, match="do not divide"):
        prepend_soft_tokens(lm, ids.view(B * k, L)[:5], mask.view(B * k, L)[:5], soft)


def test_only_the_plug_trains_and_the_frozen_lm_stays_bit_identical(bert_dir, t5_dir):
    lm, tok = load_t5(t5_dir)
    lm.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    torch.manual_seed(0)
    plug = PersonaPlug(str(bert_dir), lm.get_input_embeddings())
    assert plug.encoder.pooler is None  # an unused trainable head would break DDP
    ids, qmask, hist, mask = batch(plug)
    enc = tok(["review: great product", "review: bad"], padding=True, return_tensors="pt")
    labels = tok(["5", "1"], return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW(plug.parameters(), lr=1e-2)
    for _ in range(2):
        soft = plug(ids, qmask, hist, mask)
        embeds, full = prepend_soft_tokens(lm, enc["input_ids"], enc["attention_mask"], soft)
        loss = lm(inputs_embeds=embeds, attention_mask=full, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in lm.parameters())
        # every plug parameter (I, Proj_I, Proj, the whole query encoder) gets a gradient
        missing = [n for n, p in plug.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing
        optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in lm.named_parameters())
    names = {n.split(".")[0] for n, _ in plug.named_parameters()}
    assert names == {"encoder", "instruction", "proj_instruction", "proj"}


def test_bf16_autocast_with_a_float16_history(bert_dir, t5_dir):
    """The dtypes of a bf16-mixed run: float16 cached history, bf16 soft tokens, float32 LM embeddings."""
    lm, tok = load_t5(t5_dir)
    lm.requires_grad_(False)
    plug = PersonaPlug(str(bert_dir), lm.get_input_embeddings())
    ids, qmask, hist, mask = batch(plug, n_items=(3, 0))
    enc = tok(["review: great", "review: bad"], padding=True, return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        soft = plug(ids, qmask, hist.half(), mask)
        embeds, full = prepend_soft_tokens(lm, enc["input_ids"], enc["attention_mask"], soft)
        loss = lm(inputs_embeds=embeds, attention_mask=full, labels=tok(["5", "1"], return_tensors="pt")
                  ["input_ids"]).loss
    assert embeds.dtype == torch.float32 and torch.isfinite(soft).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in plug.parameters())
