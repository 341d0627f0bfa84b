"""`lamp-fid distill` through the CLI: scores from `lamp-fid predict` in, an encoder folder that the dense
retriever ranks with out; every bad input is one line and exit 1."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_distill_train import build_encoder, firsts, themed_examples
from tiny import build_tiny_t5

from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.store import LaMPStore
from lamp_fid.distill import command
from lamp_fid.distill.collect import scores_path
from lamp_fid.distill.scores import read_scores, write_scores
from lamp_fid.distill.trainer import INFO_FILE, DistillSettings
from lamp_fid.retrieval.dense import DenseRetriever
from lamp_fid.retrieval.rank import get_rankings


def write_questions(path: Path, examples) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"id": ex.id, "input": ex.input, "profile": ex.profile} for ex in examples]))
    return path


@pytest.fixture(scope="module")
def themed(tmp_path_factory):
    """LaMP_3 questions whose reader scores prefer the item of the query's theme; a tiny BERT."""
    root = tmp_path_factory.mktemp("distill")
    train, train_scores = themed_examples(32, seed=2)
    dev, dev_scores = themed_examples(16, seed=3)
    files = {"questions": write_questions(root / "train_questions.json", train),
             "dev_questions": write_questions(root / "dev_questions.json", dev),
             "scores": root / "train.scores.json", "dev_scores": root / "dev.scores.json"}
    write_scores(files["scores"], train_scores)
    write_scores(files["dev_scores"], dev_scores)
    return root, files, build_encoder(root / "bert"), train, dev


def args(root: Path, files: dict, encoder: str, output: Path, *extra: str) -> list[str]:
    return ["distill", "--task", "LaMP_3", "--questions", str(files["questions"]), "--scores",
            str(files["scores"]), "--encoder", encoder, "--output", str(output), "--cache_dir",
            str(root / "cache"), "--progress", "false", *extra]


def test_distill_saves_an_encoder_the_dense_retriever_ranks_with(themed, capsys):
    root, files, encoder, train, dev = themed
    out = root / "distilled"
    dev_args = ("--dev_questions", str(files["dev_questions"]), "--dev_scores", str(files["dev_scores"]))
    # the settings of test_distill_train's ranking test (wide margins there), through the CLI
    assert main(args(root, files, encoder, out, "--steps", "80", "--batch_size", "8", "--lr", "5e-3",
                     "--warmup_ratio", "0.1", "--eval_every", "40", *dev_args)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"distilled {encoder} on 32 training questions, 16 dev questions"
    assert lines[1].startswith("train KL (batch mean): first 10 steps ") and lines[1].endswith("(80 steps)")
    assert lines[2].startswith("dev KL: start ") and f"saved: step {info_best(out)}" in lines[2]
    assert len(lines) == 4 and str(out) in lines[3]
    info = json.loads((out / INFO_FILE).read_text())
    assert info["base_encoder"] == encoder and info["settings"]["steps"] == 80 and info["best_step"] in (40, 80)
    assert firsts(str(out), dev) == len(dev) > firsts(encoder, dev)

    # ranked through the ranking cache, the new encoder is used; retrained in place, never a stale ranking
    store = LaMPStore.open("LaMP_3", files["dev_questions"], None, cache_dir=root / "cache", progress=False)

    def ranked(enc: str):
        return get_rankings(store, "dense", encoder=enc, cache_dir=root / "cache", progress=False)

    def direct(enc: str) -> dict:
        return dict(DenseRetriever("LaMP_3", encoder=enc, progress=False).rank_all(iter(store), progress=False))

    first = ranked(str(out))
    want = direct(str(out))
    assert all(np.array_equal(first[i], want[i]) for i in store.ids)
    assert main(args(root, files, encoder, out, "--steps", "2", "--lr", "1e-2", "--seed", "5",
                     "--overwrite", "true")) == 0  # two steps away from the start: another ranking
    second = ranked(str(out))
    want = direct(str(out))
    assert second.meta != first.meta
    assert all(np.array_equal(second[i], want[i]) for i in store.ids)
    assert any(not np.array_equal(second[i], first[i]) for i in store.ids)


def info_best(out: Path) -> int:
    return json.loads((out / INFO_FILE).read_text())["best_step"]


def test_the_defaults_are_the_distill_settings():
    params = inspect.signature(command.distill).parameters
    for f in dataclasses.fields(DistillSettings):
        assert params[f.name].default == f.default, f.name


@pytest.fixture(scope="module")
def bad_inputs(themed) -> dict[str, tuple[list[str], str]]:
    """case -> (argument changes, the expected error line's pattern)."""
    root, files, _, train, _ = themed
    ex = train[0]
    unknown_q = root / "bad" / "unknown_q.json"
    write_scores(unknown_q, {"nobody": {"x": 1.0}})
    unknown_item = root / "bad" / "unknown_item.json"
    write_scores(unknown_item, {ex.id: {ex.profile[0]["id"]: 1.0, "not-in-profile": 2.0}})
    empty = root / "bad" / "empty.json"
    empty.write_text("{}")
    broken = root / "bad" / "broken.json"
    broken.write_text('{"a": {"b": 1.0')
    single = root / "bad" / "single.json"
    write_scores(single, {ex.id: {ex.profile[0]["id"]: 1.0}})
    existing = root / "bad" / "existing"
    existing.mkdir(parents=True, exist_ok=True)
    (existing / "notes.txt").write_text("mine")
    return {
        "missing questions": (["--questions", str(root / "nope.json")], r"nope\.json: no such file"),
        "missing scores": (["--scores", str(root / "nope.scores.json")], r"nope\.scores\.json: no such file"),
        "unknown question": (["--scores", str(unknown_q)], r"unknown_q\.json, record id 'nobody': no such question"),
        "unknown item": (["--scores", str(unknown_item)],
                         rf"record id '{ex.id}', field 'not-in-profile': profile item 'not-in-profile' is not"),
        "empty scores": (["--scores", str(empty)], r"empty\.json: no scores"),
        "not json": (["--scores", str(broken)], r"broken\.json: not a JSON scores file"),
        "nothing to learn": (["--scores", str(single)], r"single\.json: no question has two or more scored items"),
        "existing output": (["--output", str(existing)], r"existing already exists: pass --overwrite true"),
        "not an encoder folder": (["--output", str(existing), "--overwrite", "true"], "is not an encoder folder"),
        "dev half": (["--dev_scores", str(files["dev_scores"])], "--dev_questions and --dev_scores go together"),
        "bad steps": (["--steps", "0"], "steps must be >= 1"),
        "bad encoder": (["--encoder", str(root / "no-encoder")], "cannot load dense encoder"),
    }


CASES = ["missing questions", "missing scores", "unknown question", "unknown item", "empty scores", "not json",
         "nothing to learn", "existing output", "not an encoder folder", "dev half", "bad steps", "bad encoder"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_1(themed, bad_inputs, capsys, case):
    root, files, encoder, _, _ = themed
    change, pattern = bad_inputs[case]
    argv = args(root, files, encoder, root / "never", "--steps", "1")
    for name, value in zip(change[::2], change[1::2]):
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    # a cold store (this case first, e.g. in random order) draws its build's progress bar first
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    err = "\n".join(lines)
    assert len(lines) == 1 and err.startswith("lamp-fid distill: error: "), err
    assert re.search(pattern, err), err
    assert not (root / "never").exists()
    assert (root / "bad" / "existing" / "notes.txt").read_text() == "mine"


# --- the whole chain: a fit, scores on train questions through `lamp-fid predict`, then distill --------

def test_scores_of_train_questions_through_predict_then_distill(tmp_path, themed, capsys):
    _, _, encoder, _, _ = themed
    data = tmp_path / "data"
    for split, n in (("train", 10), ("dev", 4)):
        write_fake_split(data, "LaMP_3", split, n, profile_size=(2, 8), words=(5, 12), seed=1)
    model = build_tiny_t5(tmp_path / "t5")
    common = ["--data.task", "LaMP_3", "--data.data_dir", str(data), "--data.cache_dir", str(tmp_path / "cache"),
              "--data.download", "false", "--data.batch_size", "4", "--data.max_length", "64",
              "--data.mode", "fid", "--model.model_name_or_path", str(model), "--model.num_beams", "1",
              "--model.max_new_tokens", "4", "--runs_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    main(["fit", *common, "--data.k", "2", "--trainer.max_epochs", "1"])
    run = tmp_path / "runs" / "LaMP_3-fid-bm25-k2"
    best = next(run.glob("best-*.ckpt"))
    # another k than the fit's, on the train split (which has outputs), in the run's own folder
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(best), "--run_name", run.name,
          "--data.predict_split", "train", "--data.k", "6", "--model.passage_scores", "fid"])
    preds = next(run.glob("predict/version_*/LaMP_3-predict-predictions.json"))
    scores = read_scores(scores_path(preds))
    store = LaMPStore.open("LaMP_3", data / "LaMP_3" / "train" / "train_questions.json", None,
                           cache_dir=tmp_path / "cache", progress=False)
    assert list(scores) == list(store.ids)
    for ex in store:
        assert set(scores[ex.id]) <= {item["id"] for item in ex.profile}
        assert len(scores[ex.id]) == min(6, len(ex.profile))  # max_length 64: no budget fallback here
    capsys.readouterr()
    assert main(["distill", "--task", "LaMP_3", "--questions", str(store.questions_path), "--scores",
                 str(scores_path(preds)), "--encoder", encoder, "--output", str(tmp_path / "enc"), "--steps", "2",
                 "--cache_dir", str(tmp_path / "cache"), "--progress", "false"]) == 0
    assert "distilled" in capsys.readouterr().out and (tmp_path / "enc" / "config.json").exists()
