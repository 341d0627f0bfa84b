"""`lamp-fid tune`: the grid, its restart logic, the best setting in both directions, failed cells."""

import json
from pathlib import Path

import pytest

import lamp_fid.train as train
from lamp_fid.cli import main
from lamp_fid.errors import LaMPError
from lamp_fid import tune as tune_module
from lamp_fid.tune import tune

from lamp_fid.paper import CONFIGS_DIR as CONFIGS


@pytest.fixture(autouse=True)
def no_gc(monkeypatch, request):
    """A full gc.collect after each fake fit costs ~0.3 s on this box; real fits keep it."""
    if "end_to_end" not in request.node.name:
        monkeypatch.setattr(tune_module, "_release_memory", lambda: None)


def opts(args: list[str]) -> dict:
    """``["fit", "--a", "1", "--b", "2"]`` -> ``{"--a": "1", "--b": "2"}`` (tune passes pairs)."""
    out, i = {}, 1
    while i < len(args):
        name, eq, val = args[i].partition("=")
        if eq:
            out[name] = val
            i += 1
        else:
            out[name] = args[i + 1]
            i += 2
    return out


class FakeFit:
    """Stands in for ``lightning_main``: records calls, writes the results.json a real fit would."""

    def __init__(self, task: str, score, fail: dict | None = None):
        self.task, self.score, self.fail, self.calls = task, score, fail or {}, []

    def __call__(self, args: list[str]):
        self.calls.append(args)
        o = opts(args)
        name = o["--run_name"]
        if name in self.fail:
            raise self.fail[name]
        run = Path(o["--runs_dir"]) / name
        run.mkdir(parents=True, exist_ok=True)
        (run / "last.ckpt").write_text("ckpt")
        mode, retriever, k = o["--data.mode"], o["--data.retriever"], int(o["--data.k"])
        metrics = self.score(mode, retriever, k)
        (run / "results.json").write_text(json.dumps({
            "task": self.task, "mode": mode, "retriever": "none" if mode == "none" else retriever,
            "k": 0 if mode == "none" else k, "layout": "official", "time_split": False, "split": "dev",
            "stage": "fit", "run_name": name, "best_checkpoint": str(run / "best.ckpt"), "epoch": 1,
            "metrics": {f"val/{m}": v for m, v in metrics.items()}}))


def config(tmp_path: Path, task: str) -> Path:
    path = tmp_path / f"{task}.yaml"
    path.write_text(f"data:\n  task: {task}\n  mode: fid\n  k: 4\n")
    return path


def mae(mode, retriever, k):  # LaMP_3: recency k2 is the lowest MAE; the baseline is worse than all
    if mode == "none":
        return {"MAE": 0.9, "RMSE": 1.2}
    value = {"bm25": 0.5, "recency": 0.4}[retriever] + abs(k - 2) / 10
    return {"MAE": value, "RMSE": 1.0 - value}  # RMSE alone would pick another cell


def accuracy(mode, retriever, k):  # LaMP_2: the baseline is the highest, but it is not personalized
    if mode == "none":
        return {"accuracy": 0.99, "f1": 0.9}
    return {"accuracy": {"bm25": 0.3, "recency": 0.2}[retriever] + k / 100, "f1": 0.5 - k / 100}


def test_grid_calls_then_restart_skips_every_done_cell(tmp_path, monkeypatch, capsys):
    fake = FakeFit("LaMP_3", mae)
    monkeypatch.setattr(train, "lightning_main", fake)
    runs = tmp_path / "runs"
    summary = tune(config(tmp_path, "LaMP_3"), retrievers=["bm25", "recency"], ks=[1, 2, 4], runs_dir=runs,
                   overrides=["--trainer.max_epochs=1"])
    assert len(fake.calls) == 1 + 2 * 3
    first = opts(fake.calls[0])
    assert (first["--data.mode"], first["--data.retriever"], first["--data.k"]) == ("none", "none", "0")
    assert first["--run_name"] == "tune-LaMP_3-none" and first["--trainer.max_epochs"] == "1"
    cells = [(o["--data.retriever"], o["--data.k"], o["--run_name"]) for o in map(opts, fake.calls[1:])]
    assert cells[0] == ("bm25", "1", "tune-LaMP_3-fid-bm25-k1") and cells[-1][:2] == ("recency", "4")
    assert all(c[0] == "fit" and "--ckpt_path" not in c for c in fake.calls)

    assert summary["best"]["run_name"] == "tune-LaMP_3-fid-recency-k2"
    assert summary["baseline"]["run_name"] == "tune-LaMP_3-none"
    assert summary["gain_over_baseline"]["MAE"] == pytest.approx((0.9 - 0.4) / 0.9)
    written = json.loads((runs / "tune-LaMP_3-tuned.json").read_text())
    assert written["best"]["run_name"] == "tune-LaMP_3-fid-recency-k2" and written["monitor"] == "val/MAE"
    assert len(written["cells"]) == 7 and written["failed"] == []

    capsys.readouterr()
    fake.calls.clear()
    again = tune(config(tmp_path, "LaMP_3"), retrievers=["bm25", "recency"], ks=[1, 2, 4], runs_dir=runs)
    assert fake.calls == []
    assert capsys.readouterr().out.count("skip (done)") == 7
    assert again["best"]["run_name"] == summary["best"]["run_name"]
    assert {c["status"] for c in again["cells"]} == {"done"}


def test_best_setting_for_a_higher_is_better_task_ignores_the_baseline(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "lightning_main", FakeFit("LaMP_2", accuracy))
    summary = tune(config(tmp_path, "LaMP_2"), retrievers=["bm25", "recency"], ks=[1, 8],
                   modes=["fid", "ipa"], runs_dir=tmp_path / "runs", prefix="grid")
    assert summary["monitor"] == "val/accuracy" and summary["monitor_mode"] == "max"
    assert summary["best"]["run_name"] == "grid-LaMP_2-fid-bm25-k8"  # first of the tied fid/ipa cells
    assert summary["gain_over_baseline"]["accuracy"] == pytest.approx((0.38 - 0.99) / 0.99)
    assert (tmp_path / "runs" / "grid-LaMP_2-tuned.json").exists()
    assert any(c["run_name"] == "grid-LaMP_2-ipa-recency-k1" for c in summary["cells"])


def test_a_cell_with_only_last_ckpt_is_resumed(tmp_path, monkeypatch):
    fake = FakeFit("LaMP_3", mae)
    monkeypatch.setattr(train, "lightning_main", fake)
    runs = tmp_path / "runs"
    (runs / "tune-LaMP_3-fid-bm25-k1").mkdir(parents=True)
    (runs / "tune-LaMP_3-fid-bm25-k1" / "last.ckpt").write_text("half done")
    (runs / "tune-LaMP_3-fid-bm25-k2").mkdir(parents=True)
    (runs / "tune-LaMP_3-fid-bm25-k2" / "best-epoch=0-step=1.ckpt").write_text("no last")
    summary = tune(config(tmp_path, "LaMP_3"), retrievers=["bm25"], ks=[1, 2, 4], runs_dir=runs,
                   baseline=False)
    calls = {opts(c)["--run_name"]: opts(c) for c in fake.calls}
    resumed = runs / "tune-LaMP_3-fid-bm25-k1" / "last.ckpt"
    assert calls["tune-LaMP_3-fid-bm25-k1"]["--ckpt_path"] == str(resumed)
    assert calls["tune-LaMP_3-fid-bm25-k2"]["--overwrite"] == "true"
    assert "--ckpt_path" not in calls["tune-LaMP_3-fid-bm25-k4"]
    status = {c["run_name"]: c["status"] for c in summary["cells"]}
    assert status == {"tune-LaMP_3-fid-bm25-k1": "resumed", "tune-LaMP_3-fid-bm25-k2": "trained",
                      "tune-LaMP_3-fid-bm25-k4": "trained"}
    assert summary["baseline"] is None and summary["gain_over_baseline"] is None


def test_a_failed_cell_is_named_and_the_others_are_kept(tmp_path, monkeypatch, capsys):
    boom = RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nlong details")
    fake = FakeFit("LaMP_3", mae, fail={"tune-LaMP_3-fid-bm25-k2": boom,
                                         "tune-LaMP_3-fid-bm25-k4": SystemExit(2)})
    monkeypatch.setattr(train, "lightning_main", fake)
    runs = tmp_path / "runs"
    with pytest.raises(LaMPError) as err:
        tune(config(tmp_path, "LaMP_3"), retrievers=["bm25"], ks=[1, 2, 4, 8], runs_dir=runs)
    message = str(err.value)
    assert "2 of 5 cells failed" in message and "\n" not in message
    assert "tune-LaMP_3-fid-bm25-k2: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB;" in message
    assert "tune-LaMP_3-fid-bm25-k4: the command line was rejected (exit 2)" in message
    assert "FAILED: RuntimeError: CUDA out of memory" in capsys.readouterr().err
    written = json.loads((runs / "tune-LaMP_3-tuned.json").read_text())
    assert written["failed"] == ["tune-LaMP_3-fid-bm25-k2", "tune-LaMP_3-fid-bm25-k4"]
    done = {c["run_name"] for c in written["cells"] if c["status"] == "trained"}
    assert done == {"tune-LaMP_3-none", "tune-LaMP_3-fid-bm25-k1", "tune-LaMP_3-fid-bm25-k8"}
    assert written["best"]["run_name"] == "tune-LaMP_3-fid-bm25-k1"  # k2 (the true best) failed

    fake.fail, fake.calls = {}, []  # fixed: the rerun trains only the two failed cells
    summary = tune(config(tmp_path, "LaMP_3"), retrievers=["bm25"], ks=[1, 2, 4, 8], runs_dir=runs)
    assert sorted(opts(c)["--run_name"] for c in fake.calls) == ["tune-LaMP_3-fid-bm25-k2",
                                                                   "tune-LaMP_3-fid-bm25-k4"]
    assert summary["best"]["run_name"] == "tune-LaMP_3-fid-bm25-k2" and summary["failed"] == []


def test_interrupt_keeps_the_finished_cells(tmp_path, monkeypatch):
    fake = FakeFit("LaMP_3", mae, fail={"tune-LaMP_3-fid-bm25-k2": KeyboardInterrupt()})
    monkeypatch.setattr(train, "lightning_main", fake)
    with pytest.raises(KeyboardInterrupt):
        tune(config(tmp_path, "LaMP_3"), retrievers=["bm25"], ks=[1, 2, 4], runs_dir=tmp_path / "runs")
    written = json.loads((tmp_path / "runs" / "tune-LaMP_3-tuned.json").read_text())
    assert [c["status"] for c in written["cells"]] == ["trained", "trained", "interrupted"]
    assert len(fake.calls) == 3


def test_results_of_another_setting_are_not_taken_for_the_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "lightning_main", FakeFit("LaMP_3", mae))
    runs = tmp_path / "runs"
    (runs / "tune-LaMP_3-fid-bm25-k1").mkdir(parents=True)
    (runs / "tune-LaMP_3-fid-bm25-k1" / "results.json").write_text(json.dumps(
        {"task": "LaMP_3", "mode": "fid", "retriever": "bm25", "k": 8, "metrics": {"val/MAE": 0.0}}))
    with pytest.raises(LaMPError, match="1 of 1 cells failed.*another setting"):
        tune(config(tmp_path, "LaMP_3"), retrievers=["bm25"], ks=[1], runs_dir=runs, baseline=False)


def test_bad_options_are_one_line_errors(tmp_path, monkeypatch):
    fake = FakeFit("LaMP_3", mae)
    monkeypatch.setattr(train, "lightning_main", fake)
    cfg = config(tmp_path, "LaMP_3")
    with pytest.raises(LaMPError, match="tune sets --data.k"):
        tune(cfg, overrides=["--data.k", "3"], runs_dir=tmp_path)
    with pytest.raises(LaMPError, match="no such config"):
        tune(tmp_path / "missing.yaml", runs_dir=tmp_path)
    with pytest.raises(LaMPError, match="k must be >= 1"):
        tune(cfg, ks=[0], runs_dir=tmp_path)
    with pytest.raises(LaMPError, match="the baseline: --baseline true"):
        tune(cfg, modes=["fid", "none"], runs_dir=tmp_path)
    pinned = tmp_path / "run_config.yaml"
    pinned.write_text("data:\n  task: LaMP_3\ncheckpoint:\n  dirpath: /somewhere/run\n")
    with pytest.raises(LaMPError, match="share one folder"):
        tune(pinned, runs_dir=tmp_path)
    assert fake.calls == []


def test_cli_time_split_override_names_runs_and_summary(tmp_path, monkeypatch):
    fake = FakeFit("LaMP_3", mae)
    monkeypatch.setattr(train, "lightning_main", fake)
    main(["tune", "--fit_config", str(CONFIGS / "fid_lamp3.yaml"), "--retrievers", "[recency]", "--ks", "[2]",
          "--runs_dir", str(tmp_path / "runs"), "--overrides", '["--data.time_split", "true"]'])
    assert [opts(c)["--run_name"] for c in fake.calls] == ["tune-LaMP_3-none-time",
                                                            "tune-LaMP_3-fid-recency-k2-time"]
    assert (tmp_path / "runs" / "tune-LaMP_3-time-tuned.json").exists()


def test_end_to_end_tiny_grid_then_report(tmp_path):
    """Two real in-process fits (baseline and one FiD cell) on fake LaMP_3 data with a tiny T5."""
    from lamp_fid.data.fake import write_fake_split
    from lamp_fid.report import report
    from tests.tiny import build_tiny_t5

    data = tmp_path / "data"
    for split, n in (("train", 8), ("dev", 4)):
        write_fake_split(data, "LaMP_3", split, n, profile_size=(1, 5), words=(5, 12), seed=1)
    model = build_tiny_t5(tmp_path / "tiny")
    runs = tmp_path / "runs"
    overrides = ["--data.data_dir", str(data), "--data.cache_dir", str(tmp_path / "cache"),
                 "--data.download", "false", "--data.batch_size", "4", "--data.max_length", "64",
                 "--model.model_name_or_path", str(model), "--model.num_beams", "1",
                 "--model.max_new_tokens", "4", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                 "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false", "--trainer.logger", "false"]
    summary = tune(CONFIGS / "fid_lamp3.yaml", retrievers=["bm25"], ks=[2], runs_dir=runs,
                   overrides=overrides)
    assert [c["status"] for c in summary["cells"]] == ["trained", "trained"]
    best = summary["best"]
    assert best["run_name"] == "tune-LaMP_3-fid-bm25-k2" and set(best["metrics"]) >= {"val/MAE", "val/RMSE"}
    assert Path(best["best_checkpoint"]).exists()
    assert tune(CONFIGS / "fid_lamp3.yaml", retrievers=["bm25"], ks=[2], runs_dir=runs,
                overrides=overrides)["cells"][1]["status"] == "done"

    report(runs, tmp_path / "rep", overwrite=False)
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "| tune-LaMP_3-none |" in md and "tune-LaMP_3-fid-bm25-k2" in md


def test_overrides_are_read_by_the_fit_parser_config_files_included(tmp_path, monkeypatch):
    """A second --config among the overrides sets the split kind and layout the cells train with: the
    run names and the summary's name follow (a hand-read of --data.* overrides missed them)."""
    fake = FakeFit("LaMP_3", mae)
    monkeypatch.setattr(train, "lightning_main", fake)
    extra = tmp_path / "extra.yaml"
    extra.write_text("data:\n  time_split: true\n  layout: separate\n")
    tune(CONFIGS / "fid_lamp3.yaml", retrievers=["recency"], ks=[2], runs_dir=tmp_path / "runs",
         overrides=["--config", str(extra)])
    assert [opts(c)["--run_name"] for c in fake.calls] == ["tune-LaMP_3-none-time",
                                                            "tune-LaMP_3-fid-separate-recency-k2-time"]
    assert (tmp_path / "runs" / "tune-LaMP_3-separate-time-tuned.json").exists()


@pytest.mark.parametrize("overrides, message", [
    (["--data.layuot", "separate"], "unrecognized arguments: --data.layuot separate"),
    (["--data.time_split=maybe"], "data.time_split"),
    (["--checkpoint.dirpath", "/somewhere/run"],
     "checkpoint.dirpath: /somewhere/run, so every cell would share"),
])
def test_an_override_the_fit_parser_refuses_stops_tune_before_any_cell(tmp_path, monkeypatch, overrides,
                                                                       message):
    fake = FakeFit("LaMP_3", mae)
    monkeypatch.setattr(train, "lightning_main", fake)
    with pytest.raises(LaMPError) as err:
        tune(config(tmp_path, "LaMP_3"), retrievers=["bm25"], ks=[1], runs_dir=tmp_path / "runs",
             overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert fake.calls == [] and not (tmp_path / "runs").exists()
