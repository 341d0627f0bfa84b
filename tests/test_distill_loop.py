"""The distill-loop command (lamp_fid.distill.loop): the order of its steps, restarts, settings checks
and results; its slow steps (reader fit, scoring, distillation, quality) replaced by recording fakes.
The real steps run end to end in test_loop_end_to_end (slow)."""

import functools
import json
from pathlib import Path

import pytest

from lamp_fid.distill import loop
from lamp_fid.distill.scores import write_scores
from lamp_fid.distill.trainer import INFO_FILE
from lamp_fid.errors import LaMPError
from lamp_fid.paper import CONFIGS_DIR

CONFIG = CONFIGS_DIR / "demo_lamp2.yaml"
# the real parser, each (config, overrides) parsed once for this module: it takes seconds
_read_fit_config = functools.cache(loop.read_fit_config)


class Fakes:
    """Stand-ins for the loop's steps that record every call and write what the real ones write."""

    def __init__(self, monkeypatch, fail: dict | None = None):
        self.calls: list[tuple] = []
        self.fail = dict(fail or {})  # step name -> round at which it raises once
        for name in ("fit_reader", "score_split", "distill_encoder", "dev_quality"):
            monkeypatch.setattr(loop, name, getattr(self, name))
        monkeypatch.setattr(loop, "read_fit_config", _read_fit_config)

    def _maybe_fail(self, step: str, r: int) -> None:
        if self.fail.get(step) == r:
            del self.fail[step]
            raise RuntimeError(f"{step} crashed in round {r}")

    def fit_reader(self, config, run_dir, retriever, encoder, overrides):
        r = int(run_dir.parent.name.removeprefix("round"))
        self.calls.append(("fit", r, retriever, encoder))
        if not (run_dir / "results.json").exists():
            self._maybe_fail("fit", r)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "results.json").write_text("{}")
        return {"metrics": {"val/accuracy": 0.5 + 0.1 * r, "val/f1": 0.4 + 0.1 * r},
                "best_checkpoint": str(run_dir / "best.ckpt"), "step": 10}

    def score_split(self, run_dir, checkpoint, split, candidates, out, overrides, variant="fid"):
        r = int(run_dir.parent.name.removeprefix("round"))
        self.calls.append(("score", r, split, candidates))
        self._maybe_fail(f"score-{split}", r)
        write_scores(out, {f"{split}-q": {"i1": 1.0, "i2": 0.0}})

    def distill_encoder(self, start, data, train_scores, dev_scores, out, settings):
        r = int(out.parent.name.removeprefix("round"))
        self.calls.append(("distill", r, start, Path(train_scores).name, Path(dev_scores).name, settings.steps))
        self._maybe_fail("distill", r)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / INFO_FILE).write_text(json.dumps({"best_step": 3, "base_encoder": start}))

    def dev_quality(self, data, retriever, encoder, scores, useful, recall_k):
        self.calls.append(("quality", retriever, encoder))
        return {"ndcg_dev": 0.8 if retriever == "bm25" else 0.95,
                **({f"recall@{recall_k}": 0.2 if retriever == "bm25" else 0.6} if useful is not None else {})}

    def steps(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]


def run(tmp_path, **kwargs):
    args = {"fit_config": CONFIG, "loop_dir": tmp_path / "loop", "rounds": 2, "encoder": "start-encoder",
            "candidates": 6, "steps": 7,
            "overrides": [f"--data.data_dir={tmp_path / 'data'}", f"--data.cache_dir={tmp_path / 'cache'}"]}
    return loop.distill_loop(**{**args, **kwargs})


def test_rounds_read_distill_and_rerank_in_order(tmp_path, monkeypatch):
    fakes = Fakes(monkeypatch)
    useful = tmp_path / "useful.json"
    useful.write_text('{"q": ["i1"]}')
    summary = run(tmp_path, useful_items=useful)
    r0, r1 = (str(tmp_path / "loop" / f"round{r}" / "encoder") for r in (0, 1))
    assert fakes.steps("fit") == [("fit", 0, "bm25", "start-encoder"), ("fit", 1, "dense", r0), ("fit", 2, "dense", r1)]
    # dev scores every round; train scores only where an encoder is distilled; k = the candidates
    assert fakes.steps("score") == [("score", 0, "dev", 6), ("score", 0, "train", 6), ("score", 1, "dev", 6),
                                    ("score", 1, "train", 6), ("score", 2, "dev", 6)]
    # round 0 distills the starting encoder, later rounds keep training the previous round's
    assert fakes.steps("distill") == [("distill", 0, "start-encoder", "scores-train.json", "scores-dev.json", 7),
                                      ("distill", 1, r0, "scores-train.json", "scores-dev.json", 7)]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["retriever_label"] for r in rounds] == ["bm25", "dense (distilled)", "dense (distilled)"]
    assert [r["metrics"]["val/accuracy"] for r in rounds] == pytest.approx([0.5, 0.6, 0.7])
    assert [r["recall@4"] for r in rounds] == [0.2, 0.6, 0.6] and [r["ndcg_dev"] for r in rounds] == [0.8, 0.95, 0.95]
    assert rounds[0]["distilled"] == {"encoder": r0, "best_step": 3, "base_encoder": "start-encoder"}
    assert rounds[2]["distilled"] is None
    results = json.loads((tmp_path / "loop" / "results.json").read_text())
    assert results == summary and results["monitor"] == "val/accuracy"
    table = (tmp_path / "loop" / "results.md").read_text()
    assert "| 1 | dense (distilled) | 0.6000 | 0.9500 | 0.6000 |" in table
    assert "| 0 | bm25 | 0.5000 | 0.8000 | 0.2000 |" in table


def test_a_finished_loop_is_not_redone(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    first = run(tmp_path)
    again = Fakes(monkeypatch)
    second = run(tmp_path)
    assert again.calls == [] and second == first


@pytest.mark.parametrize("step, r", [("fit", 1), ("score-train", 1), ("distill", 0), ("score-dev", 2)])
def test_a_crashed_round_goes_on_from_its_first_unfinished_step(tmp_path, monkeypatch, step, r):
    Fakes(monkeypatch)
    clean = run(tmp_path / "one")
    fakes = Fakes(monkeypatch, fail={step: r})
    with pytest.raises(RuntimeError, match=f"crashed in round {r}"):
        run(tmp_path / "two")
    assert not (tmp_path / "two" / "loop" / f"round{r}" / "round.json").exists()
    before = list(fakes.calls)
    rerun = run(tmp_path / "two")
    redo = fakes.calls[len(before):]
    # finished rounds are skipped; the crashed round's finished steps are not redone
    assert all(c[1] >= r for c in redo if c[0] in ("fit", "score", "distill"))
    kinds = {c[0] for c in redo if c[0] != "quality" and c[1] == r}
    if step == "distill":
        assert ("distill", r) in {c[:2] for c in redo} and ("score", r) not in {c[:2] for c in redo}
    if step == "score-dev":
        assert kinds == {"fit", "score"}  # the fit step only reads the finished run's results
    for a, b in zip(clean["rounds"], rerun["rounds"]):
        strip = lambda rec: {k: v for k, v in rec.items() if k not in ("wall_s",)}  # noqa: E731
        assert json.dumps(strip(a)).replace("/one/", "/") == json.dumps(strip(b)).replace("/two/", "/")


def test_more_rounds_extend_a_finished_loop(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    run(tmp_path, rounds=1)
    fakes = Fakes(monkeypatch)
    summary = run(tmp_path, rounds=2)
    # round 0 is done; round 1 was the last one: it now scores train and distills; round 2 is new
    assert [c[:3] for c in fakes.steps("score")] == [("score", 1, "train"), ("score", 2, "dev")]
    assert [c[1] for c in fakes.steps("distill")] == [1]
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]


def test_other_settings_are_refused_unless_overwrite(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    run(tmp_path)
    with pytest.raises(LaMPError, match=r"other settings \(candidates changed\).*--overwrite true"):
        run(tmp_path, candidates=8)
    fakes = Fakes(monkeypatch)
    summary = run(tmp_path, candidates=8, overwrite=True)
    assert len(fakes.steps("fit")) == 3 and all(c[3] == 8 for c in fakes.steps("score"))
    assert len(summary["rounds"]) == 3


def test_a_folder_of_other_files_is_left_alone(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    (tmp_path / "loop" / "round0").mkdir(parents=True)
    for overwrite in (False, True):
        with pytest.raises(LaMPError, match="no readable loop_settings.json, so it is not a distill-loop folder"):
            run(tmp_path, overwrite=overwrite)
    assert (tmp_path / "loop" / "round0").is_dir()


@pytest.mark.parametrize("kwargs, words", [
    ({"rounds": -1}, "--rounds"), ({"candidates": 0}, "--candidates"), ({"retriever": "recency"}, "--retriever"),
    ({"overrides": ["--data.k=8"]}, "the loop sets --data.k itself"), ({"steps": 0}, "steps must be >= 1"),
    ({"fit_config": Path("missing.yaml")}, "no such config file"),
    ({"scores": "ropg"}, "--scores 'ropg': use fid, atlas or pdist"),
])
def test_bad_options_are_one_line(tmp_path, monkeypatch, kwargs, words):
    fakes = Fakes(monkeypatch)
    with pytest.raises(LaMPError, match=words):
        run(tmp_path, **kwargs)
    assert fakes.calls == []


def test_reader_order_puts_scored_items_first_by_score():
    ranked = {"q": ["a", "b", "c", "d"]}
    assert loop.reader_order({"q": {"b": 0.1, "c": 2.0}}, ranked) == {"q": ["c", "b", "a", "d"]}
    assert loop.reader_order({}, ranked) == ranked


def test_plot_and_table_without_useful_items(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    Fakes(monkeypatch)
    summary = run(tmp_path, rounds=1)
    assert summary["plot"] and Path(summary["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert "recall" not in (tmp_path / "loop" / "results.md").read_text()


@pytest.fixture(scope="module")
def tiny_words(tmp_path_factory) -> dict:
    """A tiny words-mislead task, word-level tokenizer, tiny T5 and demo encoder."""
    from lamp_fid.data import demo_words as dw
    from lamp_fid.data.demo import build_tiny_t5, build_tokenizer

    root = tmp_path_factory.mktemp("words")
    dw.generate_words_data(root / "LaMP", seed=0, n_train_users=6, n_dev_users=3, train_questions_per_user=2,
                           dev_questions_per_user=2, profile_size=(4, 6))
    build_tokenizer(root / "LaMP", root / "t5")
    build_tiny_t5(root / "t5", root / "t5", d_model=16, d_ff=32, num_layers=1, num_heads=2)
    dw.build_demo_encoder(root / "t5", root / "enc", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32)
    return {"root": root, "useful": dw.useful_path(root / "LaMP", "dev")}


@pytest.mark.slow
def test_loop_end_to_end(tiny_words, tmp_path):
    """One distillation round through the real steps: fit, predict with passage scores, distill, re-rank,
    fit again; a second call does nothing."""
    root = tiny_words["root"]
    overrides = [f"--data.data_dir={root / 'LaMP'}", f"--data.cache_dir={tmp_path / 'cache'}",
                 f"--model.model_name_or_path={root / 't5'}", "--trainer.max_steps=2",
                 "--trainer.val_check_interval=2", "--data.batch_size=4", "--data.eval_batch_size=8",
                 "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
    args = dict(fit_config=CONFIG, loop_dir=tmp_path / "loop", rounds=1, encoder=str(root / "enc"), candidates=5,
                useful_items=tiny_words["useful"], steps=2, batch_size=4, eval_every=1, overrides=overrides)
    summary = loop.distill_loop(**args)
    r0, r1 = summary["rounds"]
    assert (r0["retriever"], r1["retriever"]) == ("bm25", "dense")
    assert r1["encoder"] == str(tmp_path / "loop" / "round0" / "encoder")
    assert r0["distilled"]["base_encoder"] == str(root / "enc") and r1["distilled"] is None
    for r in (r0, r1):
        assert "val/accuracy" in r["metrics"] and 0 <= r["ndcg_dev"] <= 1 + 1e-9 and 0 <= r["recall@4"] <= 1
        assert 0 <= r["reader_recall@4"] <= 1
    scores = json.loads((tmp_path / "loop" / "round0" / "scores-train.json").read_text())
    assert len(scores) == 12 and all(2 <= len(items) <= 5 for items in scores.values())
    assert not (tmp_path / "loop" / "round1" / "scores-train.json").exists()
    # the distilled encoder ranks: round 1's rankings come from it
    assert (tmp_path / "loop" / "round0" / "encoder" / "config.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "loop").rglob("*") if p.is_file()}
    again = loop.distill_loop(**args)
    assert again["rounds"] == summary["rounds"]
    changed = [p for p in (tmp_path / "loop").rglob("*") if p.is_file() and p.stat().st_mtime_ns != mtimes.get(p)]
    assert all(p.name.startswith("results.") for p in changed)


TINY_FIT = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.batch_size=4",
            "--data.eval_batch_size=8", "--trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_demo_distill_tiny(tmp_path):
    """The demo command end to end with tiny step counts: the table, the json and the verdict lines."""
    from lamp_fid.demo_distill import demo_distill

    result = demo_distill(output_dir=tmp_path / "demo", rounds=1, encoder_steps=2, lamp2=False, users=(6, 3),
                          overrides=TINY_FIT)
    assert [r["retriever"] for r in result["words"]] == ["BM25", "untrained encoder", "distilled, round 1"]
    assert all(0 <= r["recall@4"] <= 1 and 0 <= r["accuracy"] <= 1 for r in result["words"])
    assert len(result["verdict"]) == 2 and all(v.startswith(("MET", "NOT MET")) for v in result["verdict"])
    table = (tmp_path / "demo" / "demo_distill.md").read_text()
    assert "| distilled, round 1 |" in table and "Wall time" in table
    with pytest.raises(LaMPError, match="demo_distill.md exists"):
        demo_distill(output_dir=tmp_path / "demo", rounds=1, lamp2=False, users=(6, 3), overrides=TINY_FIT)


@pytest.mark.parametrize("kwargs, words", [({"threads": 0}, "--threads"), ({"rounds": 0}, "--rounds")])
def test_demo_distill_bad_options(tmp_path, kwargs, words):
    from lamp_fid.demo_distill import demo_distill

    with pytest.raises(LaMPError, match=words):
        demo_distill(output_dir=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_a_changed_start_encoder_folder_is_another_loop(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text('{"a": 1}')
    run(tmp_path, rounds=0, encoder=str(enc))
    run(tmp_path, rounds=0, encoder=str(enc))  # same content: the same loop
    (enc / "config.json").write_text('{"a": 2}')
    with pytest.raises(LaMPError, match=r"other settings \(encoder_identity changed\)"):
        run(tmp_path, rounds=0, encoder=str(enc))
