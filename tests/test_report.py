"""`lamp-fid report` on hand-written results.json files (the contract lamp_fid/train.py writes)."""

import csv
import json
from pathlib import Path

import pytest

from lamp_fid import report as report_module
from lamp_fid.cli import main
from lamp_fid.errors import LaMPError
from lamp_fid.report import collect, relative_gain, report


def write_result(runs: Path, name: str, task: str, mode: str, retriever: str, k: int, metrics: dict,
                 stage: str = "fit", version: int | None = None, model: str = "google/flan-t5-base",
                 time_split: bool = False) -> Path:
    folder = runs / name if stage == "fit" else runs / name / stage / f"version_{version}"
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "val/" if stage == "fit" else f"{stage}/"
    path = folder / "results.json"
    path.write_text(json.dumps({
        "task": task, "mode": mode, "retriever": retriever, "k": k, "layout": "official",
        "time_split": time_split, "val_split": "dev", "test_split": "dev", "run_name": name, "model": model,
        "stage": stage, "split": "dev", "monitor": prefix + "x", "best_checkpoint": "x.ckpt",
        "metrics": {prefix + m: v for m, v in metrics.items()}, "epoch": 0, "step": 1}))
    return path


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    # LaMP_3: lower is better. k1 wins on MAE (the monitor) although k2 wins on RMSE.
    write_result(runs, "LaMP_3-none", "LaMP_3", "none", "none", 0, {"MAE": 0.5, "RMSE": 1.0, "loss": 3.0})
    write_result(runs, "LaMP_3-fid-bm25-k1", "LaMP_3", "fid", "bm25", 1, {"MAE": 0.4, "RMSE": 0.9})
    write_result(runs, "LaMP_3-fid-bm25-k2", "LaMP_3", "fid", "bm25", 2, {"MAE": 0.45, "RMSE": 0.8})
    # LaMP_2: higher is better; the baseline (0.5) is not a candidate for "best"
    write_result(runs, "LaMP_2-none", "LaMP_2", "none", "none", 0, {"accuracy": 0.5, "f1": 0.25})
    write_result(runs, "LaMP_2-fid-recency-k4", "LaMP_2", "fid", "recency", 4, {"accuracy": 0.6, "f1": 0.3})
    write_result(runs, "LaMP_2-ipa-recency-k4", "LaMP_2", "ipa", "recency", 4, {"accuracy": 0.45, "f1": 0.2})
    # test stage: the newest version of a run's test counts
    write_result(runs, "LaMP_3-none", "LaMP_3", "none", "none", 0, {"MAE": 0.8, "RMSE": 1.0}, "test", 0)
    write_result(runs, "LaMP_3-fid-bm25-k1", "LaMP_3", "fid", "bm25", 1, {"MAE": 0.9, "RMSE": 2.0}, "test", 0)
    write_result(runs, "LaMP_3-fid-bm25-k1", "LaMP_3", "fid", "bm25", 1, {"MAE": 0.6, "RMSE": 0.5}, "test", 1)
    return runs


@pytest.fixture
def tables_only(monkeypatch):
    """Skip the plots where a test is about the tables (matplotlib costs ~0.5 s a figure here)."""
    monkeypatch.setattr(report_module, "_pyplot", lambda: None)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_rows(md: str, heading: str) -> list[str]:
    """The table rows (no header) under the first markdown heading that contains ``heading``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append(line)
    return rows[2:]


def test_relative_gain_is_direction_aware():
    assert relative_gain(0.4, 0.5, "min") == pytest.approx(0.2)     # MAE 0.5 -> 0.4: 20 % better
    assert relative_gain(0.6, 0.5, "min") == pytest.approx(-0.2)
    assert relative_gain(0.6, 0.5, "max") == pytest.approx(0.2)     # accuracy 0.5 -> 0.6
    assert relative_gain(0.45, 0.5, "max") == pytest.approx(-0.1)
    assert relative_gain(0.3, 0.0, "max") is None and relative_gain(0.3, None, "min") is None


def test_csv_has_one_row_per_run_and_metric_with_hand_computed_gains(runs, tmp_path, tables_only):
    out = tmp_path / "rep"
    report(runs, out)
    rows = read_csv(out / "results.csv")
    # 6 fit runs + 2 test runs (newest version only), 2 official metrics each; val/loss is not official
    assert len(rows) == 16
    assert {r["metric"] for r in rows} == {"MAE", "RMSE", "accuracy", "f1"}
    by = {(r["stage"], r["run_name"], r["metric"]): r for r in rows}
    expected = {
        ("fit", "LaMP_3-fid-bm25-k1", "MAE"): 0.2, ("fit", "LaMP_3-fid-bm25-k1", "RMSE"): 0.1,
        ("fit", "LaMP_3-fid-bm25-k2", "MAE"): 0.1, ("fit", "LaMP_3-fid-bm25-k2", "RMSE"): 0.2,
        ("fit", "LaMP_2-fid-recency-k4", "accuracy"): 0.2, ("fit", "LaMP_2-fid-recency-k4", "f1"): 0.2,
        ("fit", "LaMP_2-ipa-recency-k4", "accuracy"): -0.1, ("fit", "LaMP_2-ipa-recency-k4", "f1"): -0.2,
        ("test", "LaMP_3-fid-bm25-k1", "MAE"): 0.25, ("test", "LaMP_3-fid-bm25-k1", "RMSE"): 0.5,
    }
    for key, gain in expected.items():
        assert float(by[key]["relative_gain"]) == pytest.approx(gain), key
    assert float(by[("test", "LaMP_3-fid-bm25-k1", "MAE")]["value"]) == 0.6  # version_1, not version_0
    base = by[("fit", "LaMP_3-none", "MAE")]
    assert base["relative_gain"] == "" and base["baseline_run"] == "LaMP_3-none" and base["k"] == "0"
    assert by[("fit", "LaMP_3-fid-bm25-k2", "RMSE")]["baseline"] == "1.0"
    assert by[("fit", "LaMP_3-fid-bm25-k1", "MAE")]["direction"] == "min"
    assert by[("fit", "LaMP_2-fid-recency-k4", "f1")]["direction"] == "max"
    best = {(r["stage"], r["task"]): r["run_name"] for r in rows if r["best"] == "True"}
    assert best == {("fit", "LaMP_3"): "LaMP_3-fid-bm25-k1", ("fit", "LaMP_2"): "LaMP_2-fid-recency-k4",
                    ("test", "LaMP_3"): "LaMP_3-fid-bm25-k1"}


def test_markdown_sections_baseline_first_best_marked(runs, tmp_path, tables_only):
    out = tmp_path / "rep"
    report(runs, out, title="my results")
    md = (out / "results.md").read_text()
    assert md.startswith("# my results")
    assert md.index("## LaMP_2") < md.index("## LaMP_3")
    fit3 = table_rows(md[md.index("## LaMP_3"):], "### fit")
    assert len(fit3) == 3
    assert fit3[0].startswith("| LaMP_3-none |") and "baseline" in fit3[0] and "0.5000" in fit3[0]
    best = [r for r in fit3 if "★" in r]
    assert len(best) == 1 and "LaMP_3-fid-bm25-k1" in best[0] and "**0.4000**" in best[0]
    assert "**+20.00%**" in best[0] and "**+10.00%**" in best[0]
    k2 = next(r for r in fit3 if "k2" in r)
    assert "0.4500" in k2 and "+10.00%" in k2 and "+20.00%" in k2 and "**" not in k2
    fit2 = table_rows(md[md.index("## LaMP_2"):], "### fit")
    assert fit2[0].startswith("| LaMP_2-none |")
    assert "-10.00%" in next(r for r in fit2 if "ipa" in r)
    assert "LaMP_2-fid-recency-k4" in next(r for r in fit2 if "★" in r)
    assert "MAE ↓" in md and "accuracy ↓" not in md


def test_plots_are_written_and_non_empty(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    written = report(runs, out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "LaMP_3_fit_dev_flan-t5-base_k.png" in pngs and "LaMP_2_fit_dev_flan-t5-base_k.png" in pngs
    assert "best_vs_baseline_fit_dev.png" in pngs and "best_vs_baseline_test_dev.png" in pngs
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert sorted(p.name for p in written if p.suffix == ".png") == pngs
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_without_matplotlib_tables_only(runs, tmp_path, tables_only, capsys):
    out = tmp_path / "rep"
    report(runs, out)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md"]
    assert "plots skipped" in capsys.readouterr().out


def test_refuses_to_overwrite_unless_asked(runs, tmp_path, tables_only):
    out = tmp_path / "rep"
    report(runs, out)
    before = (out / "results.md").read_text()
    write_result(runs, "LaMP_3-fid-bm25-k8", "LaMP_3", "fid", "bm25", 8, {"MAE": 0.1, "RMSE": 0.1})
    with pytest.raises(LaMPError, match="already exists"):
        report(runs, out)
    assert (out / "results.md").read_text() == before
    with pytest.raises(SystemExit) as exit_info:  # through the CLI: one line, exit 1
        main(["report", "--runs_dir", str(runs), "--output", str(out)])
    assert exit_info.value.code == 1
    main(["report", "--runs_dir", str(runs), "--output", str(out), "--overwrite", "true"])
    assert "LaMP_3-fid-bm25-k8" in (out / "results.md").read_text()


def test_groups_never_mix_models_or_split_kinds(tmp_path, tables_only):
    runs = tmp_path / "runs"
    write_result(runs, "a-none", "LaMP_3", "none", "none", 0, {"MAE": 0.5, "RMSE": 1.0}, model="m1")
    write_result(runs, "b-fid", "LaMP_3", "fid", "bm25", 1, {"MAE": 0.4, "RMSE": 1.0}, model="m2")
    write_result(runs, "c-fid", "LaMP_3", "fid", "bm25", 1, {"MAE": 0.25, "RMSE": 1.0}, model="m1",
                 time_split=True)
    report(runs, tmp_path / "rep")
    rows = read_csv(tmp_path / "rep" / "results.csv")
    personal = [r for r in rows if r["mode"] != "none"]
    assert len(personal) == 4 and all(r["baseline"] == r["relative_gain"] == "" for r in personal)
    assert "no gains" in (tmp_path / "rep" / "results.md").read_text()


def test_foreign_results_json_is_skipped_with_a_warning(runs, tmp_path, tables_only, capsys):
    (runs / "junk").mkdir()
    (runs / "junk" / "results.json").write_text('{"hello": 1}')
    results, warnings = collect(runs)
    assert len(results) == 8 and len(warnings) == 1 and "junk" in warnings[0]
    report(runs, tmp_path / "rep")
    assert "skipped" in capsys.readouterr().out


def test_empty_or_missing_runs_dir_is_a_clear_error(tmp_path):
    with pytest.raises(LaMPError, match="no such folder"):
        report(tmp_path / "nope", tmp_path / "rep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LaMPError, match="no results.json"):
        report(tmp_path / "empty", tmp_path / "rep")


@pytest.mark.parametrize("mode, retriever, k", [("fid", "none", 4), ("ipa", "bm25", 0)])
def test_every_spelling_of_the_baseline_is_the_groups_baseline(tmp_path, tables_only, mode, retriever, k):
    """A fit with --data.retriever none or --data.k 0 trained on the bare input: it is the baseline."""
    runs = tmp_path / "runs"
    write_result(runs, "bare", "LaMP_3", mode, retriever, k, {"MAE": 0.5, "RMSE": 1.0})
    write_result(runs, "LaMP_3-fid-bm25-k1", "LaMP_3", "fid", "bm25", 1, {"MAE": 0.4, "RMSE": 0.9})
    report(runs, tmp_path / "rep")
    rows = {(r["run_name"], r["metric"]): r for r in read_csv(tmp_path / "rep" / "results.csv")}
    bare, fid = rows[("bare", "MAE")], rows[("LaMP_3-fid-bm25-k1", "MAE")]
    assert (bare["mode"], bare["retriever"], bare["k"]) == ("none", "none", "0")
    assert fid["baseline_run"] == "bare" and float(fid["relative_gain"]) == pytest.approx(0.2)
    assert fid["best"] == "True" and bare["best"] == "False"
