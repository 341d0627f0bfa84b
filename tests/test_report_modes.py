"""`lamp-fid report`'s per-mode plot: every mode's best run beside the baseline, with readable labels."""

from pathlib import Path

import pytest

from lamp_fid import report as report_module
from lamp_fid.report import collect, group_results, mode_bars, report
from test_report import write_result


def lamp3_runs(runs: Path, modes: list[tuple[str, str, str, int, float]]) -> Path:
    write_result(runs, "LaMP_3-none", "LaMP_3", "none", "none", 0, {"MAE": 1.0, "RMSE": 1.5})
    for name, mode, retriever, k, mae in modes:
        write_result(runs, name, "LaMP_3", mode, retriever, k, {"MAE": mae, "RMSE": 1.0})
    return runs


def test_each_mode_gets_its_best_run_and_a_clear_label(tmp_path):
    runs = lamp3_runs(tmp_path / "runs", [
        ("ipa-k1", "ipa", "bm25", 1, 0.7), ("fid-k4", "fid", "bm25", 4, 0.5), ("fid-k1", "fid", "recency", 1, 0.6)])
    (group,) = group_results(collect(runs)[0])
    bars = mode_bars(group)
    assert [(label, r.run_name, r.metrics["MAE"]) for label, r in bars] == [
        ("non-personalized", "LaMP_3-none", 1.0), ("FiD (bm25, k=4)", "fid-k4", 0.5),
        ("IPA (bm25, k=1)", "ipa-k1", 0.7)]


def test_the_modes_plot_is_written_only_with_two_personalized_modes(tmp_path):
    pytest.importorskip("matplotlib")
    runs = lamp3_runs(tmp_path / "runs", [("ipa-k1", "ipa", "bm25", 1, 0.7), ("fid-k4", "fid", "bm25", 4, 0.5)])
    write_result(runs, "LaMP_2-none", "LaMP_2", "none", "none", 0, {"accuracy": 0.3, "f1": 0.2})
    write_result(runs, "LaMP_2-fid", "LaMP_2", "fid", "bm25", 4, {"accuracy": 0.8, "f1": 0.7})
    out = tmp_path / "rep"
    written = report(runs, out)
    modes = sorted(p.name for p in written if p.name.endswith("_modes.png"))
    assert modes == ["LaMP_3_fit_dev_flan-t5-base_modes.png"]  # LaMP_2 has one personalized mode
    data = (out / modes[0]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_the_plot_draws_the_labels_and_values(tmp_path, monkeypatch):
    """The figure's tick labels and value texts are the bars' (matplotlib's own objects, read back)."""
    plt = pytest.importorskip("matplotlib.pyplot")
    runs = lamp3_runs(tmp_path / "runs", [("ipa-k1", "ipa", "bm25", 1, 0.7), ("fid-k4", "fid", "bm25", 4, 0.5)])
    (group,) = group_results(collect(runs)[0])
    seen = {}
    close = plt.close

    def keep(fig):
        ax = fig.axes[0]
        seen["ticks"] = [t.get_text() for t in ax.get_xticklabels()]
        seen["texts"] = [t.get_text() for t in ax.texts]
        seen["title"] = ax.get_title()
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    assert report_module.plot_modes(group, plt)[:4] == b"\x89PNG"
    assert seen["ticks"] == ["non-personalized", "FiD (bm25, k=4)", "IPA (bm25, k=1)"]
    assert seen["texts"] == ["1.0000", "0.5000", "0.7000"]
    assert seen["title"].startswith("LaMP_3 ") and "MAE by mode" in seen["title"]
