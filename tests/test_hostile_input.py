"""Hostile input and faults in the reader, metrics, evaluate, submit and the CLI (issue 7).

One test per finding: each failed before its fix (a traceback, or a silently different result) and
now gets one line naming the file, record id and field (or the option, or the path) and exit 1.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lamp_fid import cli
from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.reader import iter_examples
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.metrics import aggregate, score
from lamp_fid.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, args: list[str]) -> str:
    """Run ``lamp-fid args`` in-process, expect exit 1, return its one-line error."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"lamp-fid {args[0]}: error: ")
    return err


def review_file(path: Path, score_json: str = '"4"', extra: str = "") -> Path:
    """A LaMP_3 questions file whose second profile item's score is ``score_json`` (raw JSON text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[{"id": "q1", "input": "review: NaN Infinity, and great", "profile": ['
                    '{"id": "a", "text": "NaN is fine in a string", "score": "5"}, '
                    f'{{"id": "b", "text": "meh", "score": {score_json}{extra}}}]}}]')
    return path


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_refused_naming_record_and_field(tmp_path, capsys, literal):
    """Python's json accepts them, JSON does not; a NaN score reached prompts as "nan is the score"."""
    good = review_file(tmp_path / "good" / "dev_questions.json")
    assert [e.profile[1]["score"] for e in iter_examples("LaMP_3", good)] == ["4"]  # words in strings are fine

    q = review_file(tmp_path / "dev_questions.json", literal)
    err = run_cli(capsys, ["rank", "--task", "LaMP_3", "--questions", str(q), "--cache_dir", str(tmp_path / "c")])
    assert str(q) in err and "record id 'q1'" in err and "field 'profile[1].score'" in err
    assert f"{literal} is not valid JSON" in err

    o = tmp_path / "dev_outputs.json"
    o.write_text(f'{{"task": "LaMP_3", "golds": [{{"id": "q1", "output": {literal}}}]}}')
    with pytest.raises(LaMPDataError) as info:
        list(iter_examples("LaMP_3", good, o))
    msg = str(info.value)
    # one validator of the outputs format (shared with prediction files): the field within the record
    assert msg.startswith(str(o)) and "record id 'q1'" in msg and "field 'output'" in msg
    assert f"{literal} is not valid JSON" in msg


def test_deeply_nested_json_is_one_line(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    q = review_file(tmp_path / "dev_questions.json", '"4"', f', "extra": {deep}')
    err = run_cli(capsys, ["rank", "--task", "LaMP_3", "--questions", str(q), "--cache_dir", str(tmp_path / "c")])
    assert str(q) in err and "record index 0" in err and "nested too deeply" in err

    good = review_file(tmp_path / "good" / "dev_questions.json")
    o = tmp_path / "dev_outputs.json"
    o.write_text(f'{{"task": "LaMP_3", "golds": [{{"id": "q1", "output": "4", "extra": {deep}}}]}}')
    with pytest.raises(LaMPDataError, match="nested too deeply") as info:
        list(iter_examples("LaMP_3", good, o))
    assert str(info.value).startswith(str(o))


def test_off_label_gold_is_a_data_error_and_a_non_label_prediction_never_hits(tmp_path, capsys):
    """LaMP_2 news golds scored with the movie labels: 20/20 wrong predictions gave accuracy 1.0."""
    news = get_task("LaMP_2N").labels
    golds = {str(i): news[i % len(news)] for i in range(20)}
    preds = {str(i): news[(i + 1) % len(news)] for i in range(20)}  # every prediction wrong
    assert score("LaMP_2N", list(preds.values()), list(golds.values()))["accuracy"] == 0.0
    for name, outputs in (("g.json", golds), ("p.json", preds)):
        (tmp_path / name).write_text(json.dumps({"task": "LaMP_2", "golds": [
            {"id": i, "output": o} for i, o in outputs.items()]}))
    err = run_cli(capsys, ["evaluate", "--golds", str(tmp_path / "g.json"), "--preds", str(tmp_path / "p.json")])
    assert str(tmp_path / "g.json") in err and "example '0'" in err and repr(news[0]) in err
    assert "--task LaMP_2N" in err

    with pytest.raises(LaMPError, match="not one of the LaMP_1 labels") as info:
        score("LaMP_1", ["[3]"], ["[3]"])
    assert "--task" not in str(info.value)  # no other task has that label: no hint
    # rows given directly: -1 (not a label) on both sides is no hit either
    assert aggregate("LaMP_1", np.array([[-1.0, -1.0], [0.0, 0.0]]))["accuracy"] == 0.5


@pytest.mark.parametrize("n_boot", ["0", "-3"])
def test_evaluate_n_boot_below_one_is_one_line(tmp_path, capsys, n_boot):
    _, o = write_fake_split(tmp_path / "data", "LaMP_7", "dev", 4, profile_size=(1, 2))
    err = run_cli(capsys, ["evaluate", "--golds", str(o), "--preds", str(o), "--bootstrap", "true",
                           "--n_boot", n_boot])
    assert "--n_boot must be >= 1" in err and f"got {n_boot}" in err
    with pytest.raises(LaMPError, match="n_boot"):
        score("LaMP_7", ["a b"], ["a b"], bootstrap=True, n_boot=int(n_boot))


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_evaluate_seed_outside_numpy_range_is_one_line(tmp_path, capsys, seed):
    _, o = write_fake_split(tmp_path / "data", "LaMP_7", "dev", 4, profile_size=(1, 2))
    err = run_cli(capsys, ["evaluate", "--golds", str(o), "--preds", str(o), "--bootstrap", "true",
                           "--seed", seed])
    assert "--seed must be in [0, 2**32)" in err and f"got {seed}" in err


@pytest.mark.parametrize("source", ["golds_dir", "questions_dir"])
def test_submit_split_must_be_an_official_split(tmp_path, capsys, source):
    """The split names the zip's members: ``--split ../../x`` wrote a path-traversal member."""
    q, o = write_fake_split(tmp_path / "data", "LaMP_3", "dev", 3, profile_size=(1, 2))
    write_fake_split(tmp_path / "data", "LaMP_3", "test", 3, profile_size=(1, 2))
    ids = [rec["id"] for rec in json.loads(q.read_text())]
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "p.json").write_text(json.dumps({"task": "LaMP_3", "golds": [
        {"id": i, "output": "3"} for i in ids]}))
    out = tmp_path / "submission.zip"
    ref = ["--golds_dir", str(o)] if source == "golds_dir" else ["--questions_dir", str(tmp_path / "data")]
    err = run_cli(capsys, ["submit", "--preds_dir", str(tmp_path / "preds"), "--output", str(out),
                           *ref, "--split", "../../x"])
    assert "unknown split '../../x'" in err and "train, dev, test" in err
    assert not out.exists()
    assert main(["submit", "--preds_dir", str(tmp_path / "preds"), "--output", str(out), *ref,
                 "--split", "dev" if source == "golds_dir" else "test"]) == 0
    with zipfile.ZipFile(out) as zf:
        assert all("/" not in n and ".." not in n for n in zf.namelist())


def _raise(err: OSError):
    def command(name, args):
        raise err
    return command


@pytest.mark.parametrize("fault", ["EISDIR", "ENOTDIR", "ENOSPC", "EACCES"])
def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch, fault):
    """A directory as --output, a file as --cache_dir, a full disk, a folder we may not write."""
    q = review_file(tmp_path / "dev_questions.json")
    rank = ["rank", "--task", "LaMP_3", "--questions", str(q), "--cache_dir", str(tmp_path / "c")]
    if fault == "EISDIR":
        (tmp_path / "out").mkdir()
        args, path = rank + ["--output", str(tmp_path / "out"), "--overwrite", "true"], tmp_path / "out"
    elif fault == "ENOTDIR":
        (tmp_path / "afile").write_text("")
        args, path = rank[:-1] + [str(tmp_path / "afile")], tmp_path / "afile"
    else:  # cannot be provoked portably (root ignores permissions): the OSError the system would raise
        path = tmp_path / "c" / "rankings" / "x.npz"
        monkeypatch.setattr(cli, "run_command", _raise(OSError(getattr(errno, fault), os.strerror(
            getattr(errno, fault)), str(path))))
        args = rank
    err = run_cli(capsys, args)
    if fault in ("EISDIR", "ENOTDIR"):  # met by lamp_fid.io's writers, which say what is wrong in words
        words = {"EISDIR": f"{path} is a folder, not a file name", "ENOTDIR": f"{path} is a file, not a folder"}
        assert err.startswith("lamp-fid rank: error: ") and words[fault] in err
    else:  # the CLI's catch-all for an OSError that no writer turned into a LaMPError
        assert err.startswith(f"lamp-fid rank: error: {os.strerror(getattr(errno, fault))}: {path}")


def test_broken_pipe_exits_quietly(tmp_path):
    """``lamp-fid rank ... | head -1``: the reader is gone; no traceback, the status of SIGPIPE (141)."""
    q = review_file(tmp_path / "dev_questions.json")
    read, write = os.pipe()
    os.close(read)  # nobody will ever read: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "lamp_fid.cli", "rank", "--task", "LaMP_3",
                               "--questions", str(q), "--cache_dir", str(tmp_path / "c")],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    finally:
        os.close(write)
    assert proc.returncode == 141
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "error" not in proc.stderr
