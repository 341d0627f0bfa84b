"""The frozen history embedding cache: item formats, one embedding per distinct text, verification."""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.testing import assert_close

from lamp_fid.data.example import Example
from lamp_fid.data.history import (
    HistoryEncoder, encoder_content, history_dropout, history_texts, open_history, pad_histories,
)
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.tasks import TASKS
from test_pplug import WORDS, build_tiny_bert


class FakeStore:
    """What open_history needs from a LaMPStore: task, fingerprint, length, iteration."""

    def __init__(self, task: str, examples: list[Example], fingerprint: str):
        self.task, self.examples, self.fingerprint = TASKS[task], examples, fingerprint
        self.questions_path = Path(f"/data/{fingerprint}_questions.json")

    def __len__(self):
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)


def reviews(n_users: int = 5, seed: int = 0, first: int = 0) -> list[Example]:
    """LaMP_3 questions, 3 per user, whose profiles share items (as in LaMP)."""
    rng = random.Random(seed)
    out = []
    for u in range(first, first + n_users):
        pool = [{"id": f"u{u}i{j}", "text": " ".join(rng.choices(WORDS, k=rng.randint(1, 12))),
                 "score": str(rng.randint(1, 5))} for j in range(rng.randint(0, 9))]
        for q in range(3):
            profile = [it for it in pool if rng.random() < 0.8]
            out.append(Example(id=f"u{u}q{q}", input="review: w1 w2", profile=profile))
    return out


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def count(monkeypatch):
    """Counts the texts the history encoder embeds (and whether it was loaded at all)."""
    calls = {"texts": 0, "loads": 0}
    encode, load = HistoryEncoder._encode, HistoryEncoder._load

    def spy_encode(self, batch):
        calls["texts"] += len(batch["input_ids"])
        return encode(self, batch)

    def spy_load(self):
        calls["loads"] += self._model is None
        return load(self)

    monkeypatch.setattr(HistoryEncoder, "_encode", spy_encode)
    monkeypatch.setattr(HistoryEncoder, "_load", spy_load)
    return calls


def reference(bert_dir, texts: list[str], pooling: str = "cls") -> torch.Tensor:
    """Each text encoded alone: CLS (or mean) of the last layer, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(bert_dir), AutoModel.from_pretrained(bert_dir).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            out.append(F.normalize(h[0] if pooling == "cls" else h.mean(0), dim=0))
    return torch.stack(out)


def test_history_formats_of_every_task():
    for task in TASKS.values():
        item = {"id": "7", "date": "2020-01-01", **{f: f"<{f}>" for f in task.item_fields}}
        example = Example("q", "x", [item])
        with_out, without = (history_texts(task, example, flag)[0] for flag in (True, False))
        assert all(f"<{f}>" in with_out for f in task.item_fields), task.name  # the output included
        if task.target_field and task.kind != "generation":
            assert f"<{task.target_field}>" not in without, task.name  # the released code's text
    lamp2 = {"id": "1", "description": "a heist", "tag": "comedy"}
    assert history_texts("LaMP_2", Example("q", "x", [lamp2])) == ["description: a heist tag: comedy"]
    assert history_texts("LaMP_2", Example("q", "x", [lamp2]), with_outputs=False) == ["a heist"]
    lamp3 = {"id": "1", "text": "fine {not a field}", "score": "4"}
    assert history_texts("LaMP_3", Example("q", "x", [lamp3])) == ["text: fine {not a field} score: 4"]
    with pytest.raises(LaMPDataError) as err:
        history_texts("LaMP_3", Example("q9", "x", [{"id": "i3", "text": "t"}]), source="f.json")
    assert str(err.value) == "f.json, record id 'q9', field 'score': profile item 'i3' has no 'score' field"


def test_each_distinct_text_is_embedded_once_then_read_back(tmp_path, bert_dir, count):
    examples = reviews()
    store = FakeStore("LaMP_3", examples, "fp1")
    hist = open_history(store, str(bert_dir), cache_dir=tmp_path, dtype="float32", progress=False)
    distinct = sorted({t for ex in examples for t in history_texts("LaMP_3", ex)})
    assert count["texts"] == len(distinct) == hist.embedded == hist.meta["n_texts"]
    assert len(distinct) < sum(len(ex.profile) for ex in examples)  # items do repeat
    table = dict(zip(distinct, reference(bert_dir, distinct)))
    for i, ex in enumerate(examples):
        got = hist.embeddings(i)
        assert got.shape == (len(ex.profile), 16) and got.dtype == torch.float32
        if ex.profile:
            want = torch.stack([table[t] for t in history_texts("LaMP_3", ex)])
            assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert hist.index_of("u2q1") == 7
    # a second open embeds nothing and does not even load the encoder
    count.update(texts=0, loads=0)
    again = open_history(store, str(bert_dir), cache_dir=tmp_path, dtype="float32", progress=False)
    assert count == {"texts": 0, "loads": 0} and again.embedded == 0
    assert all(torch.equal(again.embeddings(i), hist.embeddings(i)) for i in range(len(examples)))


def test_float16_storage_and_row_api(tmp_path, bert_dir):
    store = FakeStore("LaMP_3", reviews(), "fp1")
    h16 = open_history(store, str(bert_dir), cache_dir=tmp_path, progress=False)
    h32 = open_history(store, str(bert_dir), cache_dir=tmp_path, dtype="float32", progress=False)
    assert h16.matrix.dtype == np.float16 and h32.matrix.dtype == np.float32
    assert h16.directory != h32.directory
    i = next(i for i, ex in enumerate(store) if len(ex.profile) >= 3)
    assert_close(h16.embeddings(i), h32.embeddings(i), rtol=0, atol=1e-3)
    rows = h32.rows_of(i)
    assert torch.equal(h32.embeddings(i), torch.from_numpy(np.asarray(h32.matrix[rows])))
    assert np.array_equal(h32.rows_of(i, max_items=2), rows[-2:])  # the last items of the profile
    assert np.array_equal(h32.rows_of(i, max_items=100), rows)
    assert torch.equal(h32.embeddings(i, keep=np.array([0, 2])), h32.embeddings(i)[[0, 2]])
    state = pickle.dumps(h32)  # DataLoader workers get the paths, not the matrix
    assert b"matrix.npy" in state and h32.rows.tobytes() not in state
    assert torch.equal(pickle.loads(state).embeddings(i), h32.embeddings(i))


@pytest.mark.parametrize("change", ["fingerprint", "with_outputs", "pooling", "max_length"])
def test_a_changed_setting_embeds_again(tmp_path, bert_dir, count, change):
    store = FakeStore("LaMP_3", reviews(n_users=2), "fp1")
    settings = {"cache_dir": tmp_path, "progress": False}
    first = open_history(store, str(bert_dir), **settings)
    count.update(texts=0)
    if change == "fingerprint":
        store = FakeStore("LaMP_3", store.examples, "fp2")
        store.examples = store.examples[:1]  # different content, new fingerprint, subset of texts
    else:
        settings[change] = {"with_outputs": False, "pooling": "mean", "max_length": 4}[change]
    second = open_history(store, str(bert_dir), **settings)
    assert second.directory != first.directory
    if change == "fingerprint":  # every text is already in the sibling cache: copied, not embedded
        assert count["texts"] == 0 and second.reused == second.meta["n_texts"] > 0
    else:
        assert count["texts"] == second.embedded > 0


def test_the_encoder_is_keyed_by_content(tmp_path, bert_dir, count):
    store = FakeStore("LaMP_3", reviews(n_users=2), "fp1")
    copy = shutil.copytree(bert_dir, tmp_path / "copied-encoder")
    assert encoder_content(str(copy)) == encoder_content(str(bert_dir))
    first = open_history(store, str(bert_dir), cache_dir=tmp_path / "cache", progress=False)
    count.update(texts=0)
    moved = open_history(store, str(copy), cache_dir=tmp_path / "cache", progress=False)
    assert count["texts"] == 0 and moved.directory == first.directory
    retrained = build_tiny_bert(tmp_path / "retrained", seed=1)
    assert encoder_content(str(retrained)) != encoder_content(str(bert_dir))
    other = open_history(store, str(retrained), cache_dir=tmp_path / "cache", progress=False)
    assert other.directory.parent != first.directory.parent and count["texts"] == other.embedded > 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta", "missing"])
def test_a_damaged_cache_is_rebuilt(tmp_path, bert_dir, count, damage):
    store = FakeStore("LaMP_3", reviews(n_users=2), "fp1")
    first = open_history(store, str(bert_dir), cache_dir=tmp_path, dtype="float32", progress=False)
    good = [first.embeddings(i).clone() for i in range(len(store))]
    matrix = first.directory / "matrix.npy"
    if damage == "flip":  # same size, one value changed
        data = bytearray(matrix.read_bytes())
        data[-3] ^= 0x40
        matrix.write_bytes(bytes(data))
    elif damage == "truncate":
        matrix.write_bytes(matrix.read_bytes()[:-8])
    elif damage == "meta":
        (first.directory / "meta.json").write_text("{not json")
    else:
        (first.directory / "rows.npy").unlink()
    count.update(texts=0)
    again = open_history(store, str(bert_dir), cache_dir=tmp_path, dtype="float32", progress=False)
    assert again.directory == first.directory and count["texts"] == again.embedded > 0
    assert all(torch.equal(again.embeddings(i), good[i]) for i in range(len(store)))


def test_texts_shared_with_another_file_are_not_embedded_again(tmp_path, bert_dir, count):
    train = reviews(n_users=4, seed=0)
    dev = reviews(n_users=4, seed=0)[3:] + reviews(n_users=2, seed=5, first=10)  # shares users
    open_history(FakeStore("LaMP_3", train, "train"), str(bert_dir), cache_dir=tmp_path, dtype="float32",
                 progress=False)
    count.update(texts=0)
    got = open_history(FakeStore("LaMP_3", dev, "dev"), str(bert_dir), cache_dir=tmp_path,
                       dtype="float32", progress=False)
    known = {t for ex in train for t in history_texts("LaMP_3", ex)}
    new = {t for ex in dev for t in history_texts("LaMP_3", ex)} - known
    assert count["texts"] == got.embedded == len(new) > 0 and got.reused > 0
    alone = open_history(FakeStore("LaMP_3", dev, "dev"), str(bert_dir), cache_dir=tmp_path / "fresh",
                         dtype="float32", progress=False)
    for i in range(len(dev)):
        assert_close(got.embeddings(i), alone.embeddings(i), rtol=1e-5, atol=1e-5)


def test_a_file_without_any_history_and_bad_options(tmp_path, bert_dir):
    store = FakeStore("LaMP_3", [Example("a", "review: w1", [])], "empty")
    hist = open_history(store, str(bert_dir), cache_dir=tmp_path, progress=False)
    assert hist.embeddings(0).shape[0] == 0 and hist.meta["n_texts"] == 0
    with pytest.raises(LaMPError, match="unknown history dtype 'int8'"):
        open_history(store, str(bert_dir), cache_dir=tmp_path, dtype="int8")
    with pytest.raises(LaMPError, match="unknown pooling"):
        open_history(store, str(bert_dir), cache_dir=tmp_path, pooling="max")
    with pytest.raises(LaMPError, match="cannot load dense encoder"):
        open_history(FakeStore("LaMP_3", reviews(1), "x"), str(tmp_path / "nope"), cache_dir=tmp_path)


def test_real_store(tmp_path, bert_dir):
    from lamp_fid.data.fake import write_fake_split
    from lamp_fid.data.store import LaMPStore

    q, o = write_fake_split(tmp_path / "data", "LaMP_2", "dev", 6, profile_size=(0, 4), words=(3, 8))
    store = LaMPStore.open("LaMP_2", q, o, cache_dir=tmp_path / "cache", progress=False)
    hist = open_history(store, str(bert_dir), cache_dir=tmp_path / "cache", progress=False)
    assert hist.ids == list(store.ids)
    assert [hist.embeddings(i).shape[0] for i in range(len(store))] == [len(ex.profile) for ex in store]


def test_pad_histories():
    a, b = torch.ones(3, 4), torch.full((1, 4), 2.0)
    hist, mask = pad_histories([a, torch.zeros(0, 4), b], 4)
    assert hist.shape == (3, 3, 4) and mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert torch.equal(hist[2, 0], b[0]) and hist[2, 1:].abs().sum() == 0
    hist, mask = pad_histories([torch.zeros(0, 4)] * 2, 4)
    assert hist.shape == (2, 0, 4) and mask.shape == (2, 0)


def test_history_dropout_is_deterministic_and_bounded():
    assert np.array_equal(history_dropout(2, 0, 0, 5), [0, 1])  # users with <= 2 items keep all
    draws = [history_dropout(n, 7, e, i) for n in (3, 4, 10, 101) for e in range(5) for i in range(20)]
    again = [history_dropout(n, 7, e, i) for n in (3, 4, 10, 101) for e in range(5) for i in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(draws, again))  # resumes are exact
    for n in (3, 4, 10, 101):
        for e in range(5):
            for i in range(20):
                keep = history_dropout(n, 7, e, i)
                assert 1 <= n - len(keep) <= n // 2  # 1 item .. 50 %
                assert np.array_equal(keep, np.unique(keep)) and keep.max() < n
    per_epoch = {tuple(history_dropout(10, 7, e, 3)) for e in range(10)}
    assert len(per_epoch) > 1  # a new draw each epoch
    assert np.array_equal(history_dropout(10, 7, 0, 3, p=0.0), np.arange(10))
    with pytest.raises(LaMPError, match=">= 0"):
        history_dropout(10, -1, 0, 0)
    with pytest.raises(LaMPError, match="in \\[0, 1\\]"):
        history_dropout(10, 0, 0, 0, p=1.5)
