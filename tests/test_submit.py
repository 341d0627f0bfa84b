"""`lamp-fid submit`: one official-format file per task, zipped, ids checked against the questions."""

import json
import zipfile

import pytest

from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.evaluate import evaluate
from lamp_fid.predictions import read_predictions, write_predictions
from lamp_fid.submit import submit
from lamp_fid.tasks import get_task

TASKS = ("LaMP_1", "LaMP_2", "LaMP_3", "LaMP_7")


def output(task: str, example_id: str) -> str:
    """A prediction; a label for the label tasks (the package is also scored as golds below)."""
    labels = get_task(task).labels
    return labels[len(example_id) % len(labels)] if labels else f"out {example_id}"


@pytest.fixture
def suite(tmp_path):
    """Test questions in the downloader's layout (user split) and predictions for every question."""
    data, preds_dir, ids = tmp_path / "data", tmp_path / "preds", {}
    for task in TASKS:
        questions, outputs = write_fake_split(data, task, "test", 6, profile_size=(1, 2), seed=task)
        assert outputs is None
        ids[task] = [q["id"] for q in json.loads(questions.read_text())]
        # predictions in reverse order: the package follows the questions' order
        write_predictions(preds_dir / f"{task}.json", task, {i: output(task, i) for i in reversed(ids[task])})
    return data, preds_dir, ids


def test_package(tmp_path, suite, capsys):
    data, preds_dir, ids = suite
    out = submit(preds_dir, tmp_path / "submission.zip", questions_dir=data)
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
        contents = {n: json.loads(zf.read(n)) for n in names}
    assert names == [f"{t}_test_outputs.json" for t in TASKS]
    for task in TASKS:
        content = contents[f"{task}_test_outputs.json"]
        assert content == {"task": task, "golds": [{"id": i, "output": output(task, i)} for i in ids[task]]}
    assert "no LaMP_4, LaMP_5, LaMP_6" in capsys.readouterr().err
    # what the leaderboard's evaluator will do with it: match files by "task" and score them
    extracted = tmp_path / "extracted"
    zipfile.ZipFile(out).extractall(extracted)
    for task in TASKS:
        assert read_predictions(extracted / f"{task}_test_outputs.json", task)[0] == task
    assert set(evaluate(out, preds_dir)) == set(TASKS)  # every id answered, byte-for-byte the same outputs
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_missing_and_extra_ids_are_refused(tmp_path, suite):
    data, preds_dir, ids = suite
    preds = {i: "x" for i in ids["LaMP_3"][1:]}
    preds["not-a-question"] = "y"
    write_predictions(preds_dir / "LaMP_3.json", "LaMP_3", preds, overwrite=True)
    with pytest.raises(LaMPDataError) as err:
        submit(preds_dir, tmp_path / "s.zip", questions_dir=data)
    msg = str(err.value)
    assert "LaMP_3.json" in msg and f"1 of 6 gold ids have no prediction: {ids['LaMP_3'][0]!r}" in msg
    assert "'not-a-question'" in msg
    assert not (tmp_path / "s.zip").exists()


def test_subset_overwrite_and_golds_mode(tmp_path, suite):
    data, preds_dir, ids = suite
    target = tmp_path / "s.zip"
    submit(preds_dir, target, questions_dir=data, tasks=["LaMP-3", "7"])
    assert sorted(zipfile.ZipFile(target).namelist()) == ["LaMP_3_test_outputs.json", "LaMP_7_test_outputs.json"]
    with pytest.raises(LaMPError, match="already exists"):
        submit(preds_dir, target, questions_dir=data)
    submit(preds_dir, target, questions_dir=data, overwrite=True)
    assert len(zipfile.ZipFile(target).namelist()) == 4
    # reference ids from official-format outputs files (e.g. a dry run against dev golds)
    golds = tmp_path / "golds"
    write_predictions(golds / "g.json", "LaMP_1", {i: "[1]" for i in ids["LaMP_1"]})
    submit(preds_dir, tmp_path / "g.zip", golds_dir=golds, tasks=["LaMP_1"], split="dev")
    assert zipfile.ZipFile(tmp_path / "g.zip").namelist() == ["LaMP_1_dev_outputs.json"]
    with pytest.raises(LaMPError, match="no outputs file for LaMP_2"):
        submit(preds_dir, tmp_path / "g2.zip", golds_dir=golds)


def test_errors(tmp_path, suite):
    data, preds_dir, _ = suite
    with pytest.raises(LaMPError, match="not both"):
        submit(preds_dir, tmp_path / "s.zip", questions_dir=data, golds_dir=preds_dir)
    with pytest.raises(LaMPError, match="no predictions for LaMP_5"):
        submit(preds_dir, tmp_path / "s.zip", questions_dir=data, tasks=["LaMP_5"])
    with pytest.raises(LaMPError, match="no questions file .*time/LaMP_1/test/test_questions.json"):
        submit(preds_dir, tmp_path / "s.zip", questions_dir=data, time_split=True)
    with pytest.raises(LaMPError, match="unknown split"):
        submit(preds_dir, tmp_path / "s.zip", questions_dir=data, split="val")
    assert not (tmp_path / "s.zip").exists()


def test_default_questions_dir(tmp_path, suite, monkeypatch):
    data, preds_dir, _ = suite
    monkeypatch.setenv("LAMP_FID_DATA", str(data))
    submit(preds_dir, tmp_path / "s.zip")
    assert len(zipfile.ZipFile(tmp_path / "s.zip").namelist()) == 4


def test_cli(tmp_path, suite):
    data, preds_dir, _ = suite
    assert main(["submit", "--preds_dir", str(preds_dir), "--output", str(tmp_path / "s.zip"),
                 "--questions_dir", str(data), "--tasks", '["LaMP_1"]']) == 0
    assert zipfile.ZipFile(tmp_path / "s.zip").namelist() == ["LaMP_1_test_outputs.json"]
