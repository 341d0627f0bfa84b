"""`lamp_fid.setting`: one run setting, one baseline, one run-name rule, one results.json reader/writer."""

import json
from typing import get_args

import pytest

from lamp_fid.errors import LaMPError
from lamp_fid.setting import (Mode, PersonalMode, PersonalRetriever, RetrieverName, RunResults, RunSetting,
                              is_baseline, read_results, write_results)

BASELINE = {"mode": "none", "retriever": "none", "k": 0}


@pytest.mark.parametrize("spelling", [
    {"mode": "none", "retriever": "bm25", "k": 4},
    {"mode": "fid", "retriever": "none", "k": 4},
    {"mode": "ipa", "retriever": "recency", "k": 0},
])
def test_every_spelling_of_the_baseline_is_the_one_baseline(spelling):
    s = RunSetting("LaMP-3", **spelling)
    assert {"mode": s.mode, "retriever": s.retriever, "k": s.k} == BASELINE
    assert s.is_baseline and is_baseline(**spelling)
    assert s.task == "LaMP_3" and s.run_name() == "LaMP_3-none"
    assert RunSetting("LaMP_3", **spelling, time_split=True).run_name() == "LaMP_3-none-time"


def test_run_names_of_personalized_settings():
    assert RunSetting("LaMP_3", "fid", "bm25", 4).run_name() == "LaMP_3-fid-bm25-k4"
    assert RunSetting("2", "ipa", "dense", 8, time_split=True).run_name() == "LaMP_2-ipa-dense-k8-time"
    assert RunSetting("LaMP_2N", "fid", "random", 1, layout="separate").run_name() == \
        "LaMP_2N-fid-separate-random-k1"
    assert not is_baseline("fid", "bm25", 1) and not is_baseline("ipa")


def test_one_set_of_names():
    assert get_args(Mode) == (*get_args(PersonalMode), "none")
    assert get_args(RetrieverName) == (*get_args(PersonalRetriever), "none")


@pytest.mark.parametrize("field, value", [("mode", "pplug2"), ("retriever", "bm26"), ("layout", "mixed"),
                                          ("val_split", "validation"), ("task", "LaMP_9")])
def test_a_bad_value_is_refused(field, value):
    kwargs = {"task": "LaMP_3", "mode": "fid", "retriever": "bm25", "k": 1, field: value}
    with pytest.raises(ValueError, match=value):
        RunSetting(**kwargs)


def test_results_round_trip_and_the_written_fields(tmp_path):
    setting = RunSetting("LaMP_3", "fid", "bm25", 4, model="m")
    fit = RunResults(setting, "run", "fit", "dev", {"val/MAE": 0.5}, monitor="val/MAE",
                     best_checkpoint="run/best.ckpt", epoch=1, step=6)
    path = write_results(tmp_path / "results.json", fit)
    assert read_results(path) == fit
    assert json.loads(path.read_text()) == {
        "task": "LaMP_3", "mode": "fid", "retriever": "bm25", "k": 4, "layout": "official",
        "time_split": False, "val_split": "dev", "test_split": "dev", "model": "m", "run_name": "run",
        "stage": "fit", "split": "dev", "metrics": {"val/MAE": 0.5}, "monitor": "val/MAE",
        "best_checkpoint": "run/best.ckpt", "epoch": 1, "step": 6}
    test = RunResults(setting, "run", "test", "dev", {"test/MAE": 0.25})
    write_results(path, test)  # replaces the older file
    assert set(json.loads(path.read_text())) >= {"stage", "split", "metrics"}
    assert "epoch" not in json.loads(path.read_text()) and read_results(path) == test


def test_an_older_file_without_layout_split_kind_or_model_reads_with_the_defaults(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"task": "lamp2", "mode": "none", "stage": "fit", "metrics": {}}))
    r = read_results(path)
    assert r.setting == RunSetting("LaMP_2", "none", "none", 0) and r.setting.model == "?"
    assert (r.run_name, r.split, r.epoch) == ("", None, None)


@pytest.mark.parametrize("text, detail", [
    ("[1, 2]", "a JSON list, not an object"), ("{", "JSONDecodeError"), ('{"task": "LaMP_3"}', "'mode'"),
    ('{"task": "LaMP_3", "mode": "fid", "retriever": "bm25"}', "'k'"),
    ('{"task": "LaMP_9", "mode": "none"}', "unknown LaMP task"),
    ('{"task": "LaMP_3", "mode": "none", "metrics": [1]}', "metrics is a list"),
])
def test_a_foreign_file_is_one_line_naming_it(tmp_path, text, detail):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(LaMPError) as err:
        read_results(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a lamp-fid results.json") and detail in message
    assert "\n" not in message
