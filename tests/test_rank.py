"""The ranking cache (get_rankings, Rankings) and the `lamp-fid rank` command."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from lamp_fid.cli import main
from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPError
from lamp_fid.retrieval.base import Retriever, make_retriever
from lamp_fid.retrieval.rank import Rankings, cache_key, cache_path, get_rankings
from lamp_fid.tasks import get_task


class MemoryStore:
    """The store interface get_rankings needs, in memory; counts how often it is read."""

    def __init__(self, task: str, examples: list[Example]):
        self.task, self.examples = get_task(task), examples
        self.ids = [ex.id for ex in examples]
        blob = json.dumps([[e.id, e.input, e.profile] for e in examples]).encode()
        self.fingerprint = hashlib.blake2b(blob, digest_size=16).hexdigest()
        self.reads = 0

    def __len__(self):
        return len(self.examples)

    def __iter__(self):
        self.reads += 1
        return iter(self.examples)


def reviews(n: int = 12, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    out = []
    for i in range(n):
        profile = [{"id": f"{i}-{j}", "text": " ".join(rng.choices(words, k=rng.randint(1, 12))),
                    "score": "3", "date": f"2020-{rng.randint(1, 12)}-{rng.randint(1, 28)}"}
                   for j in range(rng.randint(0, 15))]
        review = " ".join(rng.choices(words, k=8))
        out.append(Example(id=str(i), input=f"What is the score of the following review? review: {review}",
                           profile=profile))
    return out


@pytest.fixture
def count_ranks(monkeypatch):
    """Counts Retriever.rank_all calls (i.e. actual ranking work)."""
    calls = []
    original = Retriever.rank_all

    def spy(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Retriever, "rank_all", spy)
    return calls


def test_rankings_are_computed_once_then_read_back(tmp_path, count_ranks):
    store = MemoryStore("LaMP_3", reviews())
    first = get_rankings(store, "bm25", cache_dir=tmp_path, progress=False)
    assert count_ranks == ["bm25"]
    files = list((tmp_path / "rankings").glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("LaMP_3-bm25-")
    second = get_rankings(store, "bm25", cache_dir=tmp_path, progress=False)
    assert count_ranks == ["bm25"] and store.reads == 1  # no re-ranking, the store is not even read
    direct = make_retriever("bm25", "LaMP_3")
    for ex in store.examples:
        assert second[ex.id].tolist() == first[ex.id].tolist() == direct.rank(ex).tolist()
        texts = [p["text"] for p in ex.profile]
        if texts:  # the cache holds the official order
            want = BM25Okapi([t.split() for t in texts]).get_top_n(
                ex.input.split("review:", 1)[1].split(), list(range(len(texts))), n=len(texts))
            assert second[ex.id].tolist() == want


@pytest.mark.parametrize("change", [dict(use_date=True), dict(tie_break="stable")])
def test_a_changed_setting_ranks_again(tmp_path, count_ranks, change):
    store = MemoryStore("LaMP_3", reviews())
    get_rankings(store, "bm25", cache_dir=tmp_path, progress=False)
    get_rankings(store, "bm25", cache_dir=tmp_path, progress=False, **change)
    assert count_ranks == ["bm25", "bm25"]
    assert len(list((tmp_path / "rankings").glob("*.npz"))) == 2


def test_settings_that_do_not_change_results_share_one_cache_file(tmp_path):
    store = MemoryStore("LaMP_3", reviews())
    key = lambda **kw: cache_key(store, make_retriever(kw.pop("name", "bm25"), "LaMP_3", **kw))  # noqa: E731
    assert key(seed=1) == key(seed=2)  # seed only matters to random
    assert key(name="random", seed=1) != key(name="random", seed=2)
    assert key(name="random", use_date=True) == key(name="random")
    assert key(name="dense", batch_size=2, device="cpu") == key(name="dense", batch_size=64, device="meta")
    assert key(name="dense") != key(name="dense", encoder="facebook/contriever-msmarco")
    assert key(name="recency", use_date=True, tie_break="stable") == key(name="recency")
    assert cache_path(tmp_path, key()) != cache_path(tmp_path, key(name="recency"))


def test_changed_file_content_ranks_again(tmp_path, count_ranks):
    get_rankings(MemoryStore("LaMP_3", reviews(seed=0)), "random", cache_dir=tmp_path, progress=False)
    get_rankings(MemoryStore("LaMP_3", reviews(seed=1)), "random", cache_dir=tmp_path, progress=False)
    assert count_ranks == ["random", "random"]


def test_random_recency_and_none(tmp_path):
    store = MemoryStore("LaMP_3", reviews())
    a = get_rankings(store, "random", cache_dir=tmp_path, seed=5, progress=False)
    b = get_rankings(store, "random", cache_dir=tmp_path / "other", seed=5, progress=False)
    assert all(a[i].tolist() == b[i].tolist() for i in store.ids)
    rec = get_rankings(store, "recency", cache_dir=tmp_path, progress=False)
    for ex in store.examples:
        dates = [tuple(map(int, p["date"].split("-"))) for p in ex.profile]
        assert rec[ex.id].tolist() == sorted(range(len(dates)), key=dates.__getitem__)[::-1]
    none = get_rankings(store, "none", cache_dir=tmp_path / "none", progress=False)
    assert len(none) == len(store) and all(len(none[i]) == 0 for i in store.ids)
    assert not (tmp_path / "none").exists()  # nothing to cache


def test_rankings_api_and_compact_file(tmp_path):
    exs = reviews()
    r = Rankings.from_items([(ex.id, np.arange(len(ex.profile))[::-1]) for ex in exs], meta={"x": 1})
    ex = next(e for e in exs if len(e.profile) > 3)
    assert len(r) == len(exs) and list(r) == [e.id for e in exs] and ex.id in r and "nope" not in r
    assert r.top_k(ex.id, 2).tolist() == [len(ex.profile) - 1, len(ex.profile) - 2]
    assert r.top_k(ex.id, 1000).tolist() == r[ex.id].tolist()  # k beyond the profile: all of it
    assert r.top_k(ex.id, 0).tolist() == [] and len(r.top_k(ex.id)) == len(ex.profile)
    assert r.item_ids(ex, 2) == [ex.profile[-1]["id"], ex.profile[-2]["id"]]
    with pytest.raises(ValueError):
        r[ex.id][0] = 5  # read-only: callers cannot corrupt the cache
    r.save(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz") as z:
        assert z["positions"].dtype == np.int32 and z["positions"].ndim == 1
        assert len(z["offsets"]) == len(exs) + 1
    back = Rankings.load(tmp_path / "r.npz")
    assert back.meta == {"x": 1} and all(back[i].tolist() == r[i].tolist() for i in r)
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]  # no temp file left behind
    with pytest.raises(LaMPError, match="duplicate"):
        Rankings.from_items([("a", [0]), ("a", [1])])


def test_a_damaged_cache_file_is_recomputed(tmp_path, count_ranks):
    store = MemoryStore("LaMP_3", reviews())
    first = get_rankings(store, "bm25", cache_dir=tmp_path, progress=False)
    (path,) = (tmp_path / "rankings").glob("*.npz")
    path.write_bytes(b"not a zip")
    again = get_rankings(store, "bm25", cache_dir=tmp_path, progress=False)
    assert count_ranks == ["bm25", "bm25"]
    assert all(first[i].tolist() == again[i].tolist() for i in store.ids)
    assert Rankings.load(path).meta["retriever"] == "bm25"


# --- the command --------------------------------------------------------------------------------

@pytest.fixture
def lamp3_files(tmp_path):
    fake = pytest.importorskip("lamp_fid.data.fake")
    q, o = fake.write_fake_split(tmp_path / "data", "LaMP_3", "dev", 10, profile_size=(0, 12),
                                 questions_per_user=3)
    return q, o


def official_file_rankings(questions) -> dict[str, list[str]]:
    """The official per-question procedure on the JSON file (docs/official_mode.md#retrievers), LaMP_3."""
    out = {}
    for rec in json.loads(questions.read_text()):
        query = rec["input"][rec["input"].find("review:") + len("review:"):].strip()
        profile = rec["profile"]
        if not profile:
            out[rec["id"]] = []
            continue
        bm25 = BM25Okapi([p["text"].split() for p in profile])
        out[rec["id"]] = [p["id"] for p in bm25.get_top_n(query.split(), profile, n=len(profile))]
    return out


def test_rank_command_writes_the_official_rankings(tmp_path, lamp3_files):
    q, o = lamp3_files
    out = tmp_path / "ranked.json"
    args = ["rank", "--task", "LaMP-3", "--questions", str(q), "--outputs", str(o),
            "--cache_dir", str(tmp_path / "cache"), "--output", str(out)]
    assert main(args) == 0
    want = official_file_rankings(q)
    got = json.loads(out.read_text())
    assert list(got) == list(want) and got == want
    assert any(len(v) == 0 for v in want.values())  # an empty profile in the file

    with pytest.raises(SystemExit) as err:  # never overwrite silently
        main(args + ["--k", "2"])
    assert err.value.code == 1 and json.loads(out.read_text()) == want
    assert main(args + ["--k", "2", "--overwrite", "true"]) == 0
    assert json.loads(out.read_text()) == {i: v[:2] for i, v in want.items()}


def test_rank_command_stdout_and_errors(tmp_path, lamp3_files, capsys):
    q, _ = lamp3_files
    base = ["rank", "--task", "LaMP_3", "--questions", str(q), "--cache_dir", str(tmp_path / "c")]
    assert main(base + ["--retriever", "recency", "--k", "3"]) == 0
    got = json.loads(capsys.readouterr().out)
    for rec in json.loads(q.read_text()):
        dates = [tuple(map(int, p["date"].split("-"))) for p in rec["profile"]]
        order = sorted(range(len(dates)), key=dates.__getitem__)[::-1][:3]
        assert got[rec["id"]] == [rec["profile"][i]["id"] for i in order]
    for bad, message in [(["--k", "-1"], "k must be"), (["--retriever", "random", "--task", "LaMP_9"], "unknown"),
                         (["--questions", str(tmp_path / "missing.json")], "no such file")]:
        with pytest.raises(SystemExit) as err:
            main(base + bad)
        assert err.value.code == 1 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--retriever", "tfidf"])  # not a choice: jsonargparse refuses it
    assert "bm25,dense,recency,random,none" in capsys.readouterr().err.replace(" ", "")


def test_rank_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["rank", "--help"])
    text = capsys.readouterr().out
    for opt in ("--task", "--questions", "--retriever", "--output", "--k", "--outputs", "--cache_dir",
                "--use_date", "--encoder", "--batch_size", "--device", "--seed", "--tie_break", "--overwrite"):
        assert opt in text
    assert "{bm25,dense,recency,random,none}" in text


def test_rank_command_bad_date_is_one_line(tmp_path, capsys):
    q = tmp_path / "dev_questions.json"
    q.write_text(json.dumps([{"id": "1", "input": "review: good", "profile": [
        {"id": "a", "text": "x", "score": "1", "date": "2020-01-01"},
        {"id": "b", "text": "y", "score": "2", "date": "soon"}]}]))
    with pytest.raises(SystemExit) as err:
        main(["rank", "--task", "LaMP_3", "--questions", str(q), "--retriever", "recency",
              "--cache_dir", str(tmp_path / "c")])
    assert err.value.code == 1
    # the store is built (and its progress bar finished) before the recorded date problem is raised
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert msg.startswith("lamp-fid rank: error: ") and "date" in msg and "'1'" in msg


def test_unknown_retriever_in_get_rankings(tmp_path):
    with pytest.raises(LaMPError, match="unknown retriever"):
        get_rankings(MemoryStore("LaMP_3", reviews()), "tfidf", cache_dir=tmp_path)


def test_cache_module_does_not_import_torch():
    # `lamp-fid rank --help` and bm25 stay fast: torch/transformers load only for the dense retriever
    code = "import sys, lamp_fid.retrieval.rank; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
