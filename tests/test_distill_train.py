"""Distilling reader scores into a dense bi-encoder: a tiny BERT from a config, trained and then ranked
by the unchanged dense retriever."""

from __future__ import annotations

import json
import random

import pytest
import torch

import tiny
from lamp_fid.data.example import Example
from lamp_fid.distill.trainer import (INFO_FILE, DistillQuestion, DistillSettings, distill, embed, kl_loss,
                                      load_encoder, mean_kl, questions_from_scores, save_encoder,
                                      train_encoder)
from lamp_fid.errors import LaMPError
from lamp_fid.retrieval.dense import DenseRetriever

THEMES = 4
# Two disjoint vocabularies per theme: queries use q<t>_<i>, profile items use i<t>_<i> (BM25 sees no overlap).
QUERY_WORDS = [[f"q{t}_{i}" for i in range(6)] for t in range(THEMES)]
ITEM_WORDS = [[f"i{t}_{i}" for i in range(6)] for t in range(THEMES)]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    return build_encoder(tmp_path_factory.mktemp("bert") / "bert")


def build_encoder(path, seed: int = 0) -> str:
    """A random 2-layer BERT and a WordLevel tokenizer over both vocabularies (``tiny.build_tiny_bert``)."""
    words = [w for ws in QUERY_WORDS + ITEM_WORDS for w in ws] + ["review:", "rate", "this"]
    return str(tiny.build_tiny_bert(path, words, max_positions=34, seed=seed, split_punctuation=False))


def themed_examples(n: int, seed: int) -> tuple[list[Example], dict[str, dict[str, float]]]:
    """LaMP_3-style examples whose profiles hold one item per theme, and reader scores that prefer the
    item of the query's theme (4.0 against 0.0)."""
    rng = random.Random(seed)
    examples, scores = [], {}
    for n_ex in range(n):
        theme = n_ex % THEMES
        query = " ".join(rng.sample(QUERY_WORDS[theme], 3))
        order = rng.sample(range(THEMES), THEMES)  # the preferred item is at a random position
        profile = [{"id": f"e{n_ex}-{t}", "text": " ".join(rng.sample(ITEM_WORDS[t], 3)), "score": "3"}
                   for t in order]
        ex = Example(id=f"e{n_ex}", input=f"rate this review: {query}", profile=profile)
        examples.append(ex)
        scores[ex.id] = {item["id"]: 4.0 if item["id"].endswith(f"-{theme}") else 0.0 for item in profile}
    return examples, scores


def firsts(encoder: str, examples: list[Example]) -> int:
    """How many examples the unchanged dense retriever ranks the query's theme item first for."""
    retriever = DenseRetriever("LaMP_3", encoder=encoder, progress=False)
    ranked = dict(retriever.rank_all(examples, progress=False))
    theme = {ex.id: int(ex.id[1:]) % THEMES for ex in examples}
    return sum(ex.profile[ranked[ex.id][0]]["id"].endswith(f"-{theme[ex.id]}") for ex in examples)


def test_one_distill_step_lowers_the_kl_on_a_fixed_batch(encoder_dir):
    examples, scores = themed_examples(8, seed=1)
    questions = questions_from_scores(examples, "LaMP_3", scores)
    model, tokenizer = load_encoder(encoder_dir)
    settings = DistillSettings(steps=1, batch_size=len(questions), lr=1e-3, warmup_ratio=0.0)
    before = mean_kl(model, tokenizer, questions, settings)
    result = train_encoder(model, tokenizer, questions, settings)
    after = mean_kl(model, tokenizer, questions, settings)
    assert result.losses == [pytest.approx(before, rel=1e-4)]  # the step's loss is the batch's KL
    assert after < 0.95 * before


def test_distilled_encoder_ranks_the_preferred_item_first(encoder_dir, tmp_path):
    train, scores = themed_examples(32, seed=2)
    held_out, held_scores = themed_examples(16, seed=3)  # new word combinations, never trained on
    questions = questions_from_scores(train, "LaMP_3", scores)
    dev = questions_from_scores(held_out, "LaMP_3", held_scores)
    assert firsts(encoder_dir, held_out) < len(held_out)  # the random encoder does not already do it
    # 80 steps: the held-out margin (best minus runner-up, over the score range) is >= .03 for each of ten
    # BERT seeds tried and .42 for this one; float noise across machines is ~1e-6
    settings = DistillSettings(steps=80, batch_size=8, lr=5e-3, warmup_ratio=0.1, eval_every=40)
    out = tmp_path / "distilled"
    result = distill(encoder_dir, questions, out, settings, dev=dev)
    assert firsts(str(out), held_out) == len(held_out) and firsts(str(out), train) == len(train)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["base_encoder"] == encoder_dir and info["questions"] == 32
    assert set(result.dev_kl) == {0, 40, 80} and info["best_step"] == result.best_step in (40, 80)
    assert result.dev_kl[result.best_step] < result.dev_kl[0]


def test_distillation_is_deterministic_for_a_seed(encoder_dir):
    examples, scores = themed_examples(12, seed=4)
    questions = questions_from_scores(examples, "LaMP_3", scores)
    states = []
    for _ in range(2):
        model, tokenizer = load_encoder(encoder_dir)
        train_encoder(model, tokenizer, questions, DistillSettings(steps=3, batch_size=5, lr=1e-3, seed=7))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_best_dev_checkpoint_is_kept(encoder_dir):
    examples, scores = themed_examples(8, seed=5)
    questions = questions_from_scores(examples, "LaMP_3", scores)
    # the dev questions prefer the opposite of training: training only makes their KL worse
    inverted = [DistillQuestion(q.id, q.query, q.texts, tuple(-s for s in q.scores)) for q in questions]
    model, tokenizer = load_encoder(encoder_dir)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = DistillSettings(steps=4, batch_size=8, lr=1e-2, eval_every=2)
    result = train_encoder(model, tokenizer, questions, settings, dev=inverted)
    assert result.best_step == 0 and result.dev_kl[4] > result.dev_kl[0]
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_kl_loss_is_zero_when_the_retriever_agrees_and_skips_single_items(encoder_dir):
    model, tokenizer = load_encoder(encoder_dir)
    q = DistillQuestion("a", "q0_1 q0_2", ("i0_1", "i1_1", "i2_3"), (0.0, 0.0, 0.0))
    with torch.no_grad():
        e = embed(model, tokenizer, [q.query, *q.texts])
        own = DistillQuestion("a", q.query, q.texts, tuple((e[1:] @ e[0]).tolist()))  # the retriever's scores
        assert kl_loss(model, tokenizer, [own]).item() == pytest.approx(0.0, abs=1e-6)
        assert kl_loss(model, tokenizer, [q]).item() > 0
    single = DistillQuestion("s", "q0_1", ("i0_1",), (1.0,))
    result = train_encoder(model, tokenizer, [single, q], DistillSettings(steps=1, batch_size=2))
    assert (result.questions, result.skipped) == (1, 1)
    with pytest.raises(LaMPError, match="no training question has two or more"):
        train_encoder(model, tokenizer, [single], DistillSettings(steps=1))
    with pytest.raises(LaMPError, match="'a' has a score that is not a finite number"):
        train_encoder(model, tokenizer, [DistillQuestion("a", "q", ("x", "y"), (1.0, float("nan")))],
                      DistillSettings(steps=1))


def test_questions_from_scores_faults_name_the_file_question_and_item():
    examples, scores = themed_examples(2, seed=6)
    qs = questions_from_scores(examples, "LaMP_3", {"e1": scores["e1"]})
    assert [q.id for q in qs] == ["e1"] and qs[0].query == examples[1].input.split("review:", 1)[1].strip()
    text_of = {p["id"]: p["text"] for p in examples[1].profile}
    assert qs[0].texts == tuple(text_of[i] for i in scores["e1"]) and qs[0].scores == tuple(scores["e1"].values())
    with pytest.raises(LaMPError, match=r"^s\.json, record id 'e9': no such question in q\.json$"):
        questions_from_scores(examples, "LaMP_3", {"e9": {}}, source="s.json", questions_source="q.json")
    with pytest.raises(LaMPError, match=r"^s\.json, record id 'e0', field 'zz': profile item 'zz' is not in"):
        questions_from_scores(examples, "LaMP_3", {"e0": {"zz": 1.0}}, source="s.json")
    twice = Example("d", "review: q0_1", [{"id": "x", "text": "i0_1"}, {"id": "x", "text": "i0_2"}])
    with pytest.raises(LaMPError, match="field 'x': profile item 'x' is twice"):
        questions_from_scores([twice], "LaMP_3", {"d": {"x": 1.0}})
    with pytest.raises(LaMPError, match="steps must be >= 1"):
        DistillSettings(steps=0).check()


def test_save_encoder_refuses_to_replace_what_it_should_not(encoder_dir, tmp_path):
    model, tokenizer = load_encoder(encoder_dir)
    out = save_encoder(model, tokenizer, tmp_path / "enc", info={"round": 1})
    with pytest.raises(LaMPError, match="already exists"):
        save_encoder(model, tokenizer, out)
    save_encoder(model, tokenizer, out, overwrite=True, info={"round": 2})
    assert json.loads((out / INFO_FILE).read_text()) == {"round": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no temp or old folder left behind
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    with pytest.raises(LaMPError, match="not an encoder folder"):
        save_encoder(model, tokenizer, notes, overwrite=True)
    assert (notes / "mine.txt").read_text() == "keep me"
    with pytest.raises(LaMPError, match="already exists"):
        distill(encoder_dir, [], notes)  # refused before loading or training anything
