"""The words-mislead task (lamp_fid.data.demo_words): official format, determinism, useful items right by
construction, BM25 misled, and the demo encoder usable by the dense retriever."""

import json
import re
from pathlib import Path

import pytest

from lamp_fid.data import demo_words as dw
from lamp_fid.data.demo import build_tokenizer
from lamp_fid.data.paths import split_paths
from lamp_fid.data.store import LaMPStore
from lamp_fid.distill.loop import read_useful
from lamp_fid.distill.quality import mean_recall_at_k
from lamp_fid.errors import LaMPError
from lamp_fid.retrieval.rank import get_rankings
from lamp_fid.tasks import INSTRUCTIONS, get_task

SMALL = {"n_train_users": 30, "n_dev_users": 12, "train_questions_per_user": 4, "dev_questions_per_user": 4,
         "profile_size": (8, 16)}
THEME_OF_TAG = {tag: t for t, (tags, _) in enumerate(dw._THEMES) for tag in tags}


@pytest.fixture(scope="module")
def words_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("words") / "LaMP"
    dw.generate_words_data(out, seed=0, **SMALL)
    return out


def read(data_dir: Path, split: str):
    q, o = split_paths(data_dir, "LaMP_2", split)
    return (json.loads(q.read_text(encoding="utf-8")), json.loads(o.read_text(encoding="utf-8")),
            read_useful(dw.useful_path(data_dir, split)))


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z-]+", text)} - set(dw._ROLES) - set(dw._PLACES) - {"a", "in", "and"}


def test_vocabularies_are_disjoint():
    words = [w for vocab in (*dw._INPUT_WORDS, *dw._PROFILE_WORDS) for w in vocab]
    assert len(words) == len(set(words))
    assert not set(words) & (set(dw._ROLES) | set(dw._PLACES))
    assert len(dw._INPUT_WORDS) == len(dw._PROFILE_WORDS) == len(dw._THEMES)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_official_format_and_useful_items(words_dir, split):
    task = get_task("LaMP_2")
    questions, outputs, useful = read(words_dir, split)
    prefix = INSTRUCTIONS["LaMP_2"].split("{")[0]
    assert outputs["task"] == "LaMP_2" and [g["id"] for g in outputs["golds"]] == [q["id"] for q in questions]
    assert set(useful) == {q["id"] for q in questions}
    for q, gold in zip(questions, outputs["golds"]):
        assert q["input"].startswith(prefix) and task.label_index(gold["output"]) >= 0
        ids = [item["id"] for item in q["profile"]]
        assert len(ids) == len(set(ids)) and 8 <= len(ids) <= 16
        assert useful[q["id"]] and set(useful[q["id"]]) <= set(ids)
        for item in q["profile"]:
            assert set(item) == {"id", "date", "description", "tag"} and task.label_index(item["tag"]) >= 0
        # useful = the items of the question's theme: their profile words, and tags of the gold's theme
        theme = THEME_OF_TAG[gold["output"]]
        for item in q["profile"]:
            words = content_words(item["description"])
            in_theme = bool(words & set(dw._PROFILE_WORDS[theme]))
            assert (item["id"] in useful[q["id"]]) == (THEME_OF_TAG[item["tag"]] == theme) == in_theme
            if item["id"] in useful[q["id"]]:  # meaning shared, words not: no question word of the theme
                assert not words & set(dw._INPUT_WORDS[theme])


def test_train_and_dev_users_are_disjoint(words_dir):
    items = [{i["id"] for q in read(words_dir, s)[0] for i in q["profile"]} for s in ("train", "dev")]
    assert not items[0] & items[1]


def test_deterministic_per_seed(tmp_path, words_dir):
    dw.generate_words_data(tmp_path / "a", seed=0, **SMALL)
    dw.generate_words_data(tmp_path / "b", seed=1, **SMALL)
    for split in ("train", "dev"):
        for i, name in enumerate(("questions", "outputs")):
            same = split_paths(tmp_path / "a", "LaMP_2", split)[i].read_bytes()
            assert same == split_paths(words_dir, "LaMP_2", split)[i].read_bytes()
            assert same != split_paths(tmp_path / "b", "LaMP_2", split)[i].read_bytes()
        assert dw.useful_path(tmp_path / "a", split).read_bytes() == dw.useful_path(words_dir, split).read_bytes()


def test_bm25_is_misled_and_an_oracle_finds_everything(words_dir, tmp_path):
    q, o = split_paths(words_dir, "LaMP_2", "dev")
    store = LaMPStore.open("LaMP_2", q, o, cache_dir=tmp_path)
    useful = read_useful(dw.useful_path(words_dir, "dev"))
    bm25 = {ex.id: r.item_ids(ex) for r in [get_rankings(store, "bm25", cache_dir=tmp_path, progress=False)]
            for ex in store}
    rand = {ex.id: r.item_ids(ex) for r in [get_rankings(store, "random", cache_dir=tmp_path, progress=False)]
            for ex in store}
    oracle = {qid: useful[qid] + [i for i in bm25[qid] if i not in useful[qid]] for qid in bm25}
    # the oracle order holds every useful item before any other
    assert all(mean_recall_at_k({qid: oracle[qid]}, {qid: useful[qid]}, len(useful[qid])) == 1 for qid in oracle)
    assert mean_recall_at_k(oracle, useful, 4) > 0.75
    # BM25 prefers the decoys: worse than a random order, far below the oracle
    assert mean_recall_at_k(bm25, useful, 4) < mean_recall_at_k(rand, useful, 4) - 0.05
    assert mean_recall_at_k(bm25, useful, 4) < 0.35


def test_no_decoys_no_misleading(tmp_path):
    dw.generate_words_data(tmp_path / "LaMP", seed=0, decoy_p=0.0, **SMALL)
    questions, _, useful = read(tmp_path / "LaMP", "dev")
    input_words = {w for vocab in dw._INPUT_WORDS for w in vocab}
    assert not any(content_words(i["description"]) & input_words for q in questions for i in q["profile"])


@pytest.mark.parametrize("kwargs, words", [({"decoy_p": 1.5}, "decoy_p"), ({"profile_size": (5, 2)}, "profile_size"),
                                           ({"dev_questions_per_user": 100}, "99 questions"), ({"tags": "user"}, "tags 'user'")])
def test_bad_arguments(tmp_path, kwargs, words):
    with pytest.raises(LaMPError, match=words):
        dw.generate_words_data(tmp_path, **{**SMALL, **kwargs})


def test_read_useful_refuses_bad_files(tmp_path):
    path = tmp_path / "useful.json"
    path.write_text('{"q1": "i1"}')
    with pytest.raises(LaMPError, match=r"useful.json: question 'q1': expected a list"):
        read_useful(path)
    path.write_text("[")
    with pytest.raises(LaMPError, match="not a JSON file"):
        read_useful(path)
    with pytest.raises(LaMPError, match="cannot read"):
        read_useful(tmp_path / "missing.json")


def test_demo_encoder_ranks_through_the_dense_retriever(words_dir, tmp_path):
    tok = tmp_path / "tok"
    build_tokenizer(words_dir, tok)
    enc = dw.build_demo_encoder(tok, tmp_path / "enc", seed=0)
    again = dw.build_demo_encoder(tok, tmp_path / "enc2", seed=0)
    assert (enc / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    q, o = split_paths(words_dir, "LaMP_2", "dev")
    store = LaMPStore.open("LaMP_2", q, o, cache_dir=tmp_path)
    rankings = get_rankings(store, "dense", cache_dir=tmp_path, encoder=str(enc), progress=False)
    ex = next(iter(store))
    assert sorted(rankings.item_ids(ex)) == sorted(i["id"] for i in ex.profile)


def test_any_tags_do_not_tell_the_theme(tmp_path):
    """tags=any: a user's personal tags are any of the 15, one per theme, different across themes; the
    gold is the user's tag of the question's theme (90 %), which the useful items carry."""
    dw.generate_words_data(tmp_path / "LaMP", seed=0, tags="any", **SMALL)
    questions, outputs, useful = read(tmp_path / "LaMP", "train")
    carried = 0
    for q, gold in zip(questions, outputs["golds"]):
        tags = {i["id"]: i["tag"] for i in q["profile"]}
        useful_tags = [tags[i] for i in useful[q["id"]]]
        other_tags = [t for i, t in tags.items() if i not in useful[q["id"]]]
        carried += gold["output"] in useful_tags
        # the majority tag of the useful items is not the majority of the others
        top = max(set(useful_tags), key=useful_tags.count)
        assert not other_tags or top != max(set(other_tags), key=other_tags.count)
    assert carried / len(questions) > 0.85
    labels = {g["output"] for g in outputs["golds"]}
    assert len(labels) == 15  # every tag is used, whatever the theme
