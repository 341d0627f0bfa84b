"""Prediction file I/O and `lamp-fid evaluate`: single files, folders, zips; errors; nothing deleted."""

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.evaluate import evaluate
from lamp_fid.metrics import score
from lamp_fid.predictions import check_ids, read_predictions, write_predictions

MOVIE_TAGS = ["sci-fi", "comedy", "action", "classic"]


def golds_for(task: str, n: int = 12) -> dict[str, str]:
    if task in ("LaMP_1",):
        return {f"{task}-{i}": ["[1]", "[2]"][i % 2] for i in range(n)}
    if task == "LaMP_2":
        return {f"{task}-{i}": MOVIE_TAGS[i % 4] for i in range(n)}
    if task == "LaMP_3":
        return {f"{task}-{i}": str(1 + i % 5) for i in range(n)}
    return {f"{task}-{i}": f"Headline number {i} about café 東京" for i in range(n)}


def preds_for(task: str, golds: dict[str, str]) -> dict[str, str]:
    """Half right, half wrong in the task's typical ways (invalid labels, empty outputs, whitespace)."""
    wrong = {"LaMP_1": "[3]", "LaMP_2": "Comedy", "LaMP_3": "five"}.get(task, "")
    return {i: (f"  {g}\n" if k % 2 == 0 else wrong) for k, (i, g) in enumerate(golds.items())}


def write_official(path: Path, task: str, outputs: dict[str, str]) -> Path:
    """An official-format file written by hand (json.dump), independent of write_predictions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task, "golds": [{"id": i, "output": o} for i, o in outputs.items()]}))
    return path


def snapshot(*roots: Path) -> dict:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


# --- predictions.py ---------------------------------------------------------------------------

def test_write_read_roundtrip(tmp_path):
    preds = {"b": " x\n", "a": "東京 é", "10": ""}
    path = write_predictions(tmp_path / "sub" / "p.json", "LaMP_2N", preds)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "task": "LaMP_2", "golds": [{"id": "b", "output": " x\n"}, {"id": "a", "output": "東京 é"},
                                    {"id": "10", "output": ""}]}
    assert read_predictions(path) == ("LaMP_2", preds)
    assert read_predictions(path, task="LaMP-2") == ("LaMP_2", preds)
    with pytest.raises(LaMPError, match="already exists"):
        write_predictions(path, "LaMP_2", {"a": "b"})
    write_predictions(path, "LaMP_3", {"a": "4"}, overwrite=True)
    assert read_predictions(path) == ("LaMP_3", {"a": "4"})
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temp files left behind
    with pytest.raises(LaMPError, match="not a string"):
        write_predictions(tmp_path / "q.json", "LaMP_3", {"a": 4})
    assert not (tmp_path / "q.json").exists()


@pytest.mark.parametrize("content, match", [
    ("", "not valid JSON"),
    ("<html>error</html>", "not valid JSON"),
    ('[{"id": "1", "input": "x", "profile": []}]', "a questions file"),
    ('{"golds": []}', "field 'task': missing"),
    ('{"task": "LaMP_1"}', "field 'golds': missing"),
    ('{"task": "LaMP-3", "golds": []}', "did you mean 'LaMP_3'"),
    ('{"task": "LaMP_9", "golds": []}', "not an official task name"),
    ('{"task": "LaMP_1", "golds": {}}', "field 'golds': expected a list"),
    ('{"task": "LaMP_1", "golds": ["x"]}', r"golds\[0\] is a JSON str"),
    ('{"task": "LaMP_1", "golds": [{"output": "x"}]}', "field 'id'"),
    ('{"task": "LaMP_1", "golds": [{"id": "7"}]}', "record id '7', field 'output': missing"),
    ('{"task": "LaMP_1", "golds": [{"id": "7", "output": null}]}', "record id '7', field 'output'"),
    ('{"task": "LaMP_1", "golds": [{"id": "7", "output": "a"}, {"id": "7", "output": "b"}]}',
     "record id '7', field 'id': duplicate id"),
])
def test_read_errors_name_file_record_and_field(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LaMPDataError, match=match) as err:
        read_predictions(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_read_lenient_types_and_task_check(tmp_path):
    path = write_official(tmp_path / "p.json", "LaMP_3", {})
    path.write_text('\ufeff{"task": "LaMP_3", "golds": [{"id": "5", "output": 4}, {"id": "6", "output": 2.5}]}',
                    encoding="utf-8")
    assert read_predictions(path) == ("LaMP_3", {"5": "4", "6": "2.5"})  # LaMP_3 outputs may be numbers
    # one validator for golds and predictions: string ids, as in the official files (and as the store
    # requires of gold files); numbers only where the metric reads numbers (LaMP_3)
    for golds, field in (('[{"id": 5, "output": "4"}]', "golds[0].id"), ('[{"id": "5", "output": 4}]', "output")):
        bad = tmp_path / f"bad_{field}.json"
        bad.write_text('{"task": "%s", "golds": %s}' % ("LaMP_3" if field != "output" else "LaMP_4", golds))
        with pytest.raises(LaMPDataError, match=f"field '{re.escape(field)}': must be a string"):
            read_predictions(bad)
    with pytest.raises(LaMPDataError, match="the file is for LaMP_3, not LaMP_4"):
        read_predictions(path, task="LaMP_4")
    with pytest.raises(LaMPError, match="no such file"):
        read_predictions(tmp_path / "missing.json")


def test_check_ids_lists_missing_and_extra():
    check_ids(["b", "a"], ["a", "b"], "p.json")
    golds = [str(i) for i in range(20)]
    with pytest.raises(LaMPDataError) as err:
        check_ids(golds[2:] + ["x"], golds, "p.json")
    msg = str(err.value)
    assert "2 of 20 gold ids have no prediction: '0', '1'" in msg
    assert "1 prediction ids are not gold ids: 'x'" in msg
    with pytest.raises(LaMPDataError, match=r"'0', '1', '2', '3', '4', ... \(15 more\)"):
        check_ids([], golds, "p.json")


# --- evaluate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["LaMP_1", "LaMP_2", "LaMP_3", "LaMP_5"])
def test_single_files(tmp_path, task, capsys):
    golds = golds_for(task)
    preds = preds_for(task, golds)
    g = write_official(tmp_path / "golds.json", task, golds)
    p = write_predictions(tmp_path / "preds.json", task, dict(reversed(list(preds.items()))))
    result = evaluate(g, p, output=tmp_path / "out" / "result.json")
    want = score(task, list(preds.values()), list(golds.values()))
    assert result == want
    assert json.loads(capsys.readouterr().out) == want
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == want
    with pytest.raises(LaMPError, match="already exists"):
        evaluate(g, p, output=tmp_path / "out" / "result.json")


def test_bootstrap_option(tmp_path):
    golds = {str(i): f"w{i} common words here" for i in range(30)}
    preds = {str(i): ("common words" if i % 3 else f"w{i} here") for i in range(30)}
    g = write_official(tmp_path / "g.json", "LaMP_7", golds)
    p = write_official(tmp_path / "p.json", "LaMP_7", preds)
    assert evaluate(g, p, bootstrap=True, seed=3) == score(
        "LaMP_7", list(preds.values()), list(golds.values()), bootstrap=True, seed=3)


def test_single_file_errors(tmp_path):
    golds = golds_for("LaMP_3")
    g = write_official(tmp_path / "g.json", "LaMP_3", golds)
    p4 = write_official(tmp_path / "p4.json", "LaMP_4", golds_for("LaMP_4"))
    with pytest.raises(LaMPDataError, match="the predictions are for LaMP_4 but the golds .* are for LaMP_3"):
        evaluate(g, p4)
    p = write_official(tmp_path / "p.json", "LaMP_3", {**dict(list(golds.items())[1:]), "extra": "3"})
    with pytest.raises(LaMPDataError, match="1 of 12 gold ids have no prediction: 'LaMP_3-0'.*'extra'"):
        evaluate(g, p)
    with pytest.raises(LaMPError, match="unknown LaMP task"):
        evaluate(g, g, task="LaMP_8")
    with pytest.raises(LaMPDataError, match="the golds are for LaMP_3, not LaMP_4"):
        evaluate(g, g, task="LaMP_4")
    bad_gold = write_official(tmp_path / "bad_gold.json", "LaMP_3", {"a": "4", "b": "three"})
    with pytest.raises(LaMPDataError, match=r"bad_gold.json: .*example 'b' is 'three', not a number"):
        evaluate(bad_gold, write_official(tmp_path / "pb.json", "LaMP_3", {"a": "4", "b": "4"}))
    named = write_official(tmp_path / "LaMP_5_preds.json", "LaMP_3", golds)
    with pytest.raises(LaMPDataError, match="file name says LaMP_5"):
        evaluate(g, named)


def test_lamp2_news_needs_the_task_option(tmp_path):
    golds = {"1": "sports", "2": "crime", "3": "women"}
    preds = {"1": "sports", "2": "politics", "3": "Women"}
    g = write_official(tmp_path / "g.json", "LaMP_2", golds)
    p = write_official(tmp_path / "p.json", "LaMP_2", preds)
    news = evaluate(g, p, task="LaMP_2N")
    assert news == score("LaMP_2N", list(preds.values()), list(golds.values()))
    assert news["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(LaMPDataError, match="--task LaMP_2N"):  # movie labels: news golds are off-label
        evaluate(g, p)


def make_suite(root: Path, tasks=("LaMP_1", "LaMP_3", "LaMP_4", "LaMP_7")):
    """Golds in the downloader's layout (fake data, questions files included) and matching preds."""
    data, preds_dir, expected = root / "data", root / "preds", {}
    for task in tasks:
        _, outputs = write_fake_split(data, task, "dev", 9, profile_size=(1, 3))
        _, golds = read_predictions(outputs)
        preds = preds_for(task, golds)
        write_predictions(preds_dir / f"{task}_dev_preds.json", task, preds)
        expected[task] = score(task, [preds[i] for i in golds], list(golds.values()))
    return data, preds_dir, expected


def test_folders_with_a_subset_of_tasks(tmp_path, capsys):
    data, preds_dir, expected = make_suite(tmp_path)
    write_fake_split(data, "LaMP_5", "dev", 5)  # golds without predictions: skipped
    (preds_dir / "notes.json").write_text('{"comment": "not a predictions file"}')
    (preds_dir / "ranking.json").write_text("[1, 2]")  # JSON lists (questions, rankings) are skipped
    before = snapshot(tmp_path)
    assert evaluate(data, preds_dir, output=tmp_path / "results.json") == expected
    assert json.loads(capsys.readouterr().out) == expected
    after = snapshot(tmp_path)
    assert after.pop(str(tmp_path / "results.json"))
    assert after == before
    assert evaluate(data, preds_dir, task="LaMP_3") == {"LaMP_3": expected["LaMP_3"]}
    with pytest.raises(LaMPError, match="no predictions for LaMP_5"):
        evaluate(data, preds_dir, task="LaMP_5")


def test_data_folder_with_train_and_dev_golds(tmp_path):
    data, preds_dir, expected = make_suite(tmp_path, tasks=("LaMP_1", "LaMP_4"))
    for task in ("LaMP_1", "LaMP_4"):
        write_fake_split(data, task, "train", 9, profile_size=(1, 2), first_id=5000)
    assert evaluate(data, preds_dir) == expected  # each prediction file picks the golds it answers
    _, dev = read_predictions(data / "LaMP_1" / "dev" / "dev_outputs.json")
    write_predictions(preds_dir / "LaMP_1_dev_preds.json", "LaMP_1", dict(list(dev.items())[1:]), overwrite=True)
    with pytest.raises(LaMPDataError, match="1 of 9 gold ids have no prediction"):
        evaluate(data, preds_dir)
    write_predictions(preds_dir / "LaMP_1_dev_preds.json", "LaMP_1", {"nope": "[1]"}, overwrite=True)
    with pytest.raises(LaMPError, match="shares no id with any of the LaMP_1 gold files"):
        evaluate(data, preds_dir)


def zip_dir(src: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*.json")):
            zf.write(p, prefix + p.relative_to(src).as_posix())
    return dest


def test_zips(tmp_path, monkeypatch):
    data, preds_dir, expected = make_suite(tmp_path / "suite")
    golds_zip = zip_dir(data, tmp_path / "golds.zip", prefix="golds/")
    preds_zip = zip_dir(preds_dir, tmp_path / "preds.zip")
    with zipfile.ZipFile(preds_zip, "a") as zf:  # macOS litter must not break anything
        zf.writestr("__MACOSX/._LaMP_1_dev_preds.json", b"\x00\x05\x16\x07binary")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    assert evaluate(golds_zip, preds_zip) == expected
    assert evaluate(golds_zip, preds_dir) == expected
    assert snapshot(tmp_path) == before  # nothing extracted, nothing deleted (no ./tmp either)


@pytest.mark.parametrize("member", ["../evil.json", "/abs/evil.json", "a/../../evil.json", "C:\\evil.json"])
def test_zip_slip_is_refused(tmp_path, member):
    preds = tmp_path / "preds.zip"
    with zipfile.ZipFile(preds, "w") as zf:
        zf.writestr("LaMP_3.json", json.dumps({"task": "LaMP_3", "golds": []}))
        zf.writestr(member, json.dumps({"task": "LaMP_3", "golds": []}))
    g = write_official(tmp_path / "g.json", "LaMP_3", {"1": "3"})
    before = snapshot(tmp_path)
    with pytest.raises(LaMPError, match="refusing member"):
        evaluate(g, preds)
    assert snapshot(tmp_path) == before and not (tmp_path.parent / "evil.json").exists()


def test_folder_errors(tmp_path):
    data, preds_dir, _ = make_suite(tmp_path, tasks=("LaMP_3",))
    write_predictions(preds_dir / "LaMP_4.json", "LaMP_4", {"1": "x"})
    with pytest.raises(LaMPError, match="no golds for LaMP_4"):
        evaluate(data, preds_dir)
    write_predictions(preds_dir / "again.json", "LaMP_4", {"1": "x"})
    with pytest.raises(LaMPError, match="2 files for LaMP_4"):
        evaluate(data, preds_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LaMPError, match="no LaMP outputs files"):
        evaluate(data, empty)


def test_cli(tmp_path, capsys):
    golds = golds_for("LaMP_1")
    g = write_official(tmp_path / "g.json", "LaMP_1", golds)
    p = write_official(tmp_path / "p.json", "LaMP_1", preds_for("LaMP_1", golds))
    assert main(["evaluate", "--golds", str(g), "--preds", str(p)]) == 0
    assert json.loads(capsys.readouterr().out) == evaluate(g, p)
    capsys.readouterr()
    bad = write_official(tmp_path / "bad.json", "LaMP_1", {"zzz": "[1]"})
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--golds", str(g), "--preds", str(bad)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamp-fid evaluate: error:") and "'zzz'" in err and "\n" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0
    assert "--bootstrap" in capsys.readouterr().out
