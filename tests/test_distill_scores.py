"""Passage scores from the reader's cross-attention, checked against transformers' own attention outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import build_tiny_t5, passage_batch
from transformers import AutoModelForSeq2SeqLM
from transformers.modeling_outputs import BaseModelOutput

from lamp_fid.distill.scores import (cross_attention_logits, cross_attentions, passage_item_ids, passage_scores,
                                     read_scores, scores_by_item, write_scores)
from lamp_fid.errors import LaMPError
from lamp_fid.model import FiDModule
from lamp_fid.prompts import PromptBuilder

PASSAGES = [  # example 1 has two passages of three: its third is a padding passage
    ["the tag for the movie: a man travels through time", "sci-fi", "great product, works as described"],
    ["Generate a headline for the following article: the city council approved", "what a lovely day"],
]
TARGETS = ["sci-fi", "the city council approved the new park today"]


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """(FiDModule with the default sdpa attention, the same weights with eager attention, a batch)."""
    path = build_tiny_t5(tmp_path_factory.mktemp("t5") / "t5", num_layers=3, num_heads=2)
    module = FiDModule(task="LaMP_2", model_name_or_path=str(path), num_beams=1, max_new_tokens=8).eval()
    eager = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    batch = passage_batch(module.tokenizer, PASSAGES, TARGETS, ids=["q0", "q1"])  # [2, 3, L]
    return module, eager, batch


def test_fid_scores_equal_a_hand_computation_from_transformers_attention(reader):
    module, eager, batch = reader
    B, k, L = batch["input_ids"].shape
    with torch.no_grad():
        encoded, mask = module.fuse(batch["input_ids"], batch["attention_mask"])
        start = torch.zeros(B, 1, dtype=torch.long)  # T5's decoder start token (pad)
        probs = eager(encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state),
                      attention_mask=mask, decoder_input_ids=start, output_attentions=True).cross_attentions
    assert len(probs) == 3 and probs[0].shape == (B, 2, 1, k * L)

    # the captured logits are the ones transformers turns into its attention probabilities
    logits, _ = cross_attention_logits(eager, encoded, mask)
    for x, p in zip(logits, probs):
        torch.testing.assert_close(x.masked_fill(mask[:, None, None, :] == 0, -math.inf).softmax(-1), p,
                                   atol=1e-6, rtol=1e-5)

    scores = passage_scores(eager, encoded, mask, k)
    assert scores.shape == (B, k)
    # the FiD definition by hand: mean over layers, heads and the passage's real tokens
    tokens = mask.view(B, k, L)
    for b in range(B):
        for j in range(k):
            real = tokens[b, j].nonzero().flatten() + j * L
            if len(real) == 0:
                assert scores[b, j] == -math.inf
                continue
            values = [x[b, h, 0, t] for x in logits for h in range(2) for t in real.tolist()]
            torch.testing.assert_close(scores[b, j], torch.stack(values).mean(), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(scores[0]).all() and scores[1, 2] == -math.inf

    # transformers' log-probabilities alone: log p = logit - logsumexp(layer, head), so pooling them the
    # same way gives the scores up to one shift per example (the softmax over passages is the same)
    for b in range(B):
        pooled = []
        for j in range(2 if b else 3):
            real = tokens[b, j].nonzero().flatten() + j * L
            pooled.append(torch.stack([p[b, :, 0, real].log() for p in probs]).mean())
        shift = scores[b, :len(pooled)] - torch.stack(pooled)
        torch.testing.assert_close(shift, shift[:1].expand_as(shift), atol=1e-4, rtol=1e-5)

    # the attention implementation (the module's sdpa) does not matter: the hooks read q and k
    torch.testing.assert_close(passage_scores(module.model, encoded, mask, k), scores, atol=1e-5, rtol=1e-5)


def test_atlas_scores_equal_a_hand_computation_from_transformers_attention(reader):
    module, eager, batch = reader
    B, k, L = batch["input_ids"].shape
    labels = batch["labels"]
    with torch.no_grad():
        encoded, mask = module.fuse(batch["input_ids"], batch["attention_mask"])
        hidden = encoded.last_hidden_state
        probs = eager(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
                      labels=labels, output_attentions=True).cross_attentions
        # value norms by hand from each layer's v projection weight: [B, k*L, H]
        v_norms = [(hidden @ m.v.weight.T).view(B, k * L, 2, -1).norm(dim=-1) for m in cross_attentions(eager)]
    scores = passage_scores(eager, encoded, mask, k, variant="atlas", labels=labels)
    tokens = mask.view(B, k, L)
    for b in range(B):
        targets = (labels[b] != -100).nonzero().flatten().tolist()
        for j in range(k):
            real = (tokens[b, j].nonzero().flatten() + j * L).tolist()
            if not real:
                assert scores[b, j] == -math.inf
                continue
            per_layer_head = [sum(float(p[b, h, t, s] * vn[b, s, h]) for t in targets for s in real)
                              for p, vn in zip(probs, v_norms) for h in range(2)]
            assert scores[b, j].item() == pytest.approx(sum(per_layer_head) / len(per_layer_head), rel=1e-4)
    with pytest.raises(LaMPError, match="need the target labels"):
        passage_scores(eager, encoded, mask, k, variant="atlas")


def test_pdist_scores_equal_the_loss_of_the_reader_given_that_passage_alone(reader):
    """pdist of passage j = the gold output's log-likelihood when the reader is given passage j (and the
    context passages) *alone*: encoded on its own, no other passage in the cross-attention. The oracle
    is transformers' own loss (mean token NLL) on that smaller input, times the number of target tokens."""
    module, eager, batch = reader
    B, k, L = batch["input_ids"].shape
    with torch.no_grad():
        encoded, mask = module.fuse(batch["input_ids"], batch["attention_mask"])
        scores = passage_scores(module.model, encoded, mask, k, variant="pdist", labels=batch["labels"])
        context = torch.tensor([[True, False, False], [False, False, False]])  # example 0 reads passage 0 with each
        with_context = passage_scores(module.model, encoded, mask, k, variant="pdist", labels=batch["labels"],
                                      context=context)
        for b in range(B):
            labels = batch["labels"][b:b + 1]
            n_targets = int((labels != -100).sum())
            for j in range(k):
                for got, read in ((scores, [j]), (with_context, sorted({j} | ({0} if b == 0 else set())))):
                    ids = batch["input_ids"][b, read]  # [n, L]
                    m = batch["attention_mask"][b, read]
                    if not bool(batch["attention_mask"][b, j].any()):
                        assert got[b, j] == -math.inf  # a padding passage
                        continue
                    alone = eager(input_ids=ids.reshape(1, -1)[:, m.reshape(-1).bool()], labels=labels).loss \
                        if len(read) == 1 else None
                    if alone is None:  # two passages: encode each alone (FiD), fuse, then the loss
                        states = torch.cat([eager.get_encoder()(input_ids=ids[i:i + 1, m[i].bool()]).last_hidden_state
                                            for i in range(len(read))], dim=1)
                        alone = eager(encoder_outputs=BaseModelOutput(last_hidden_state=states), labels=labels).loss
                    assert got[b, j].item() == pytest.approx(-alone.item() * n_targets, rel=1e-4, abs=1e-4)
    assert scores[1, 2] == -math.inf and torch.isfinite(scores[0]).all()
    assert not torch.equal(scores[0], with_context[0])  # the context passage changes what passage 1 and 2 read
    with pytest.raises(LaMPError, match="pdist passage scores need the target labels"):
        passage_scores(module.model, encoded, mask, k, variant="pdist")


@pytest.mark.parametrize("num_beams", [1, 3])
def test_collecting_scores_does_not_change_generated_outputs(reader, num_beams):
    module, _, batch = reader
    model = module.model
    with torch.no_grad():
        encoded, mask = module.fuse(batch["input_ids"], batch["attention_mask"])

        def generate() -> torch.Tensor:
            return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state),
                                  attention_mask=mask, num_beams=num_beams, max_new_tokens=8)

        before, texts_before = generate(), module.decode(encoded, mask)
        passage_scores(model, encoded, mask, 3)
        passage_scores(model, encoded, mask, 3, variant="atlas", labels=batch["labels"])
        passage_scores(model, encoded, mask, 3, variant="pdist", labels=batch["labels"])
        after, texts_after = generate(), module.decode(encoded, mask)
    assert torch.equal(before, after) and texts_before == texts_after
    assert before.shape[1] > 2  # the tiny model generates something, so the comparison is not vacuous
    assert not any(m._forward_hooks for m in model.modules())  # every hook was removed


def test_passage_scores_refuses_what_it_cannot_score(reader):
    _, eager, _ = reader
    with pytest.raises(LaMPError, match="T5-family reader"):
        cross_attentions(torch.nn.Linear(2, 2))
    with pytest.raises(LaMPError, match="not k=3 passages"):
        passage_scores(eager, torch.zeros(1, 10, 32), torch.ones(1, 10), 3)
    with pytest.raises(LaMPError, match="unknown passage score variant"):
        passage_scores(eager, torch.zeros(1, 9, 32), torch.ones(1, 9), 3, variant="max")


def test_scores_by_item_skips_the_input_passage_and_padding():
    scores = torch.tensor([[0.5, 1.0, 2.0], [3.0, 4.0, -math.inf]])
    # separate layout: passage 0 is the input; example q1 has one item and a padding passage
    out = scores_by_item(["q0", "q1"], [[None, "a", "b"], [None, "c"]], scores)
    assert out == {"q0": {"a": 1.0, "b": 2.0}, "q1": {"c": 4.0}}
    padded = torch.tensor([[1.0, 2.0, -math.inf]])
    assert scores_by_item(["q"], [["x", "y"]], padded) == {"q": {"x": 1.0, "y": 2.0}}
    with pytest.raises(LaMPError, match="'q0' has profile item 'a' twice"):
        scores_by_item(["q0"], [["a", "a"]], torch.zeros(1, 2))
    with pytest.raises(LaMPError, match="'q0', item 'a': the passage has no tokens"):
        scores_by_item(["q0"], [["a"]], torch.tensor([[-math.inf]]))
    with pytest.raises(LaMPError, match="3 item ids for 2 passages"):
        scores_by_item(["q0"], [["a", "b", "c"]], torch.zeros(1, 2))
    with pytest.raises(LaMPError, match="2 question ids"):
        scores_by_item(["q0", "q1"], [["a"]], torch.zeros(2, 1))


@pytest.mark.parametrize("layout", ["official", "separate"])
@pytest.mark.parametrize("n_items", [0, 1, 3])
def test_passage_item_ids_follow_the_passages_built(reader, layout, n_items):
    module = reader[0]
    items = [{"id": f"p{i}", "text": "works as described", "score": str(i + 1)} for i in range(n_items)]
    builder = PromptBuilder("LaMP_3", module.tokenizer, 64, mode="fid", layout=layout)
    texts = builder.passages("rate this review: great product", items).texts
    ids = passage_item_ids(items, "fid", layout)
    assert len(ids) == len(texts)
    for item_id, text in zip(ids, texts):
        assert (item_id is None) == (text == "rate this review: great product")
        if item_id is not None:
            assert text.startswith(f"{int(item_id[1:]) + 1} is the score for")
    with pytest.raises(LaMPError, match="need mode fid"):
        passage_item_ids(items, "ipa")


def test_scores_file_round_trip_and_faults(tmp_path):
    path = tmp_path / "scores.json"
    scores = {"q0": {"a": 1.25, "b": -3.0}, "q1": {}}
    write_scores(path, scores)
    assert read_scores(path) == scores
    with pytest.raises(LaMPError, match="already exists"):
        write_scores(path, {})
    assert read_scores(path) == scores  # untouched

    def fault(text: str) -> str:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(LaMPError) as err:
            read_scores(bad)
        return str(err.value)

    assert fault('{"q0": {"a": "1"}}') == \
        f"{tmp_path / 'bad.json'}, record id 'q0', field 'a': the score '1' is not a finite number"
    assert "record id 'q0', field 'a'" in fault('{"q0": {"a": NaN}}')
    assert "record id 'q0', field 'a'" in fault('{"q0": {"a": true}}')
    assert "record id 'q1': expected an object" in fault('{"q1": [1, 2]}')
    assert "the key 'a' appears twice" in fault('{"q0": {"a": 1, "a": 2}}')
    assert "expected a JSON object" in fault(json.dumps([1]))
    assert "not a JSON scores file" in fault("{")
    with pytest.raises(LaMPError, match="cannot read"):
        read_scores(tmp_path / "missing.json")
