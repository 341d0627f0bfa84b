"""``lamp-fid report``: every finished run's ``results.json`` in one table, with gains over the baseline.

A run folder holds ``results.json`` after ``fit`` (the best epoch's validation metrics) and
``test|validate/version_N/results.json`` after ``test``/``validate`` (see lamp_fid/train.py). Runs are
compared only within a group of the same task, stage, split, split kind (user/time) and model; the
group's non-personalized run (mode ``none``) is the baseline of every other row.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write, check_target
from lamp_fid.setting import RunSetting, read_results
from lamp_fid.tasks import Task, get_task

STAGES = ("fit", "validate", "test")
CSV_FIELDS = ("task", "stage", "split", "time_split", "model", "mode", "layout", "retriever", "k", "run_name",
              "metric", "direction", "value", "baseline", "baseline_run", "relative_gain", "best", "source")


@dataclass
class Result:
    """One ``results.json``: a run's setting and its official metrics (names without ``val/``/``test/``)."""

    setting: RunSetting
    stage: str
    split: str
    run_name: str
    metrics: dict[str, float]
    source: Path
    version: int = -1  #: N of the ``<stage>/version_N`` log folder; -1 for the fit summary

    @property
    def task(self) -> Task:
        return get_task(self.setting.task)

    @property
    def group(self) -> tuple:
        """Runs in one group are comparable: same task, stage, split, split kind and model."""
        return (self.task.name, STAGES.index(self.stage) if self.stage in STAGES else 9, self.stage,
                self.split, self.setting.time_split, self.setting.model)

    @property
    def is_baseline(self) -> bool:
        return self.setting.is_baseline

    def label(self) -> str:
        """``fid-bm25`` (``fid-separate-bm25`` for a non-official layout, ``pplug+fid-bm25`` for PPlug
        with FiD, ``pplug`` for PPlug alone, which retrieves nothing): one line of a plot."""
        s = self.setting
        if s.mode == "pplug":
            return "pplug"
        return f"{s.mode}{'' if s.layout == 'official' else f'-{s.layout}'}-{s.retriever}"


def direction(task: Task, metric: str) -> str:
    """``"min"`` or ``"max"``: every official metric of a LaMP task points the way its monitor does
    (MAE and RMSE down; accuracy, F1, ROUGE-1 and ROUGE-L up), so the task table's one direction holds."""
    return task.monitor_mode


def relative_gain(value: float, baseline: float | None, mode: str) -> float | None:
    """Gain over the baseline as a fraction, positive when ``value`` is better.

    ``(baseline - value) / baseline`` for lower-is-better metrics, ``(value - baseline) / baseline``
    otherwise; ``None`` without a baseline or when it is 0 (undefined).
    """
    if baseline is None or baseline == 0 or not math.isfinite(baseline) or not math.isfinite(value):
        return None
    return (baseline - value) / baseline if mode == "min" else (value - baseline) / baseline


def better(a: float, b: float, mode: str) -> bool:
    """Is ``a`` strictly better than ``b`` in direction ``mode``? NaN is never better."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a < b if mode == "min" else a > b


def best_of(results: list, metric, mode: str):
    """The element with the best ``metric(element)`` (first one on ties), or ``None`` if none has it."""
    best = None
    for r in results:
        v = metric(r)
        if v is not None and (best is None or better(v, metric(best), mode)):
            best = r
    return best


def read_result(path: Path) -> Result:
    """One ``results.json`` (``lamp_fid.setting.read_results``) with the task's official metrics; a
    ``LaMPError`` naming the file if it is not one."""
    results = read_results(path)
    if results.stage is None:
        raise LaMPError(f"{path}: not a lamp-fid results.json (no stage)")
    stage = str(results.stage)
    prefix = {"fit": "val/", "validate": "val/"}.get(stage, f"{stage}/")
    try:
        metrics = {m: float(results.metrics[prefix + m]) for m in get_task(results.setting.task).metrics
                   if results.metrics.get(prefix + m) is not None}
    except (ValueError, TypeError) as err:
        raise LaMPError(f"{path}: not a lamp-fid results.json ({type(err).__name__}: {err})") from None
    version = re.fullmatch(r"version_(\d+)", Path(path).parent.name)
    return Result(setting=results.setting, stage=stage, split=str(results.split or "?"),
                  run_name=results.run_name, metrics=metrics, source=Path(path),
                  version=int(version.group(1)) if version else -1)


def collect(runs_dir: Path) -> tuple[list[Result], list[str]]:
    """Every ``results.json`` under ``runs_dir``: the newest ``version_N`` per run, stage and split.

    Returns the results and one warning line per file that could not be read (skipped, not fatal: one
    foreign file must not hide every other run).
    """
    newest: dict[tuple, Result] = {}
    warnings = []
    for path in sorted(Path(runs_dir).rglob("results.json")):
        try:
            r = read_result(path)
        except LaMPError as err:
            warnings.append(f"skipped {err}")
            continue
        run_dir = path.parents[2] if r.version >= 0 else path.parent
        key = (str(run_dir), r.stage, r.split)
        if key not in newest or r.version > newest[key].version:
            newest[key] = r
    return list(newest.values()), warnings


@dataclass
class Group:
    """Comparable results (see ``Result.group``), the baseline and the best personalized run."""

    key: tuple
    rows: list[Result]
    baseline: Result | None = None
    best: Result | None = None
    extra_baselines: list[Result] = field(default_factory=list)

    @property
    def task(self) -> Task:
        return self.rows[0].task

    @property
    def monitor(self) -> str:
        return self.task.monitor

    def gain(self, r: Result, metric: str) -> float | None:
        base = self.baseline.metrics.get(metric) if self.baseline else None
        return None if r.is_baseline or metric not in r.metrics else \
            relative_gain(r.metrics[metric], base, direction(self.task, metric))


def group_results(results: list[Result]) -> list[Group]:
    """Group, pick each group's baseline (the best ``none`` run, if there are several) and best run.

    Rows are ordered baseline first, then by mode, layout, retriever and k.
    """
    by_key: dict[tuple, list[Result]] = {}
    for r in results:
        by_key.setdefault(r.group, []).append(r)
    groups = []
    for key in sorted(by_key, key=repr):
        rows = by_key[key]
        task = rows[0].task
        monitor = lambda r: r.metrics.get(task.monitor)  # noqa: E731
        baselines = [r for r in rows if r.is_baseline]
        personal = [r for r in rows if not r.is_baseline]
        baseline = best_of(baselines, monitor, task.monitor_mode)
        if baseline is None and baselines:
            baseline = baselines[0]
        personal.sort(key=lambda r: (r.setting.mode, r.setting.layout, r.setting.retriever, r.setting.k,
                                     r.run_name))
        baselines.sort(key=lambda r: r is not baseline)
        groups.append(Group(key, baselines + personal, baseline,
                            best_of(personal, monitor, task.monitor_mode),
                            [b for b in baselines if b is not baseline]))
    return groups


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:+.2f}%"


def _split_text(split: str, time_split: bool) -> str:
    return f"{split} ({'time' if time_split else 'user'} split)"


STAGE_TEXT = {"fit": "fit: the best epoch's validation metrics", "validate": "validate",
              "test": "test"}


def markdown(groups: list[Group], title: str) -> str:
    """The markdown report: one section per task, one table per group, baseline first, best in bold."""
    lines = [f"# {title}", "",
             "Relative gain = (x - baseline) / baseline for metrics where higher is better, "
             "(baseline - x) / baseline where lower is better (↓): positive is better than the "
             "non-personalized baseline of the same task, stage, split and model. **Bold** (★): the best "
             "personalized run by the task's official monitor metric.", ""]
    current_task = None
    for g in groups:
        task = g.task
        if task.name != current_task:
            current_task = task.name
            lines += [f"## {task.name}: {task.title}", ""]
        first = g.rows[0]
        stage = STAGE_TEXT.get(first.stage, first.stage)
        split = _split_text(first.split, first.setting.time_split)
        lines += [f"### {stage} · {split} · model `{first.setting.model}`", ""]
        heads = []
        for m in task.metrics:
            arrow = " ↓" if direction(task, m) == "min" else ""
            heads += [f"{m}{arrow}", "gain"]
        lines.append("| run | mode | retriever | k | layout | " + " | ".join(heads) + " |")
        lines.append("|" + "---|" * 5 + "---:|" * len(heads))
        for r in g.rows:
            cells = []
            for m in task.metrics:
                cells += [_fmt(r.metrics.get(m)), "baseline" if r is g.baseline else _pct(g.gain(r, m))]
            s = r.setting
            row = [r.run_name, s.mode, s.retriever, str(s.k), s.layout, *cells]
            if r is g.best:
                row = [f"**{c}**" for c in row]
                row[0] = "★ " + row[0]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if g.baseline is None:
            lines += ["No non-personalized run (mode none) in this group: no gains.", ""]
        if g.extra_baselines:
            lines += [f"Several non-personalized runs: the best ({g.baseline.run_name}) is the baseline; "
                      "also " + ", ".join(b.run_name for b in g.extra_baselines) + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(groups: list[Group]) -> str:
    """Flat CSV: one row per run x official metric (see ``CSV_FIELDS``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for g in groups:
        for r in g.rows:
            for m in g.task.metrics:
                if m not in r.metrics:
                    continue
                base = g.baseline.metrics.get(m) if g.baseline else None
                gain = g.gain(r, m)
                w.writerow({
                    "task": r.task.name, "stage": r.stage, "split": r.split,
                    "time_split": r.setting.time_split, "model": r.setting.model, "mode": r.setting.mode,
                    "layout": r.setting.layout, "retriever": r.setting.retriever, "k": r.setting.k,
                    "run_name": r.run_name, "metric": m, "direction": direction(r.task, m),
                    "value": repr(r.metrics[m]), "baseline": "" if base is None else repr(base),
                    "baseline_run": g.baseline.run_name if g.baseline else "",
                    "relative_gain": "" if gain is None else repr(gain), "best": r is g.best,
                    "source": str(r.source)})
    return buf.getvalue()


def _model_name(model: str) -> str:
    """``flan-t5-base`` for ``google/flan-t5-base`` or a local path ending in it."""
    return Path(model).name or model


def _stem(g: Group) -> str:
    r = g.rows[0]
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", _model_name(r.setting.model))
    return f"{r.task.name}_{r.stage}_{r.split}{'_time' if r.setting.time_split else ''}_{model}"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def plot_k(g: Group, plt) -> bytes | None:
    """The monitor metric against k, one line per mode/layout/retriever, the baseline dashed, PPlug
    alone (no k) dotted."""
    task, metric = g.task, g.monitor
    lines: dict[str, list[tuple[int, float]]] = {}
    flat: dict[str, float] = {}  # runs without k other than the baseline: PPlug alone
    for r in g.rows:
        if not r.is_baseline and metric in r.metrics:
            if r.setting.k == 0:
                flat[r.label()] = r.metrics[metric]
            else:
                lines.setdefault(r.label(), []).append((r.setting.k, r.metrics[metric]))
    if not lines and not flat:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ks = sorted({k for pts in lines.values() for k, _ in pts})
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=label)
    if g.baseline is not None and metric in g.baseline.metrics:
        ax.axhline(g.baseline.metrics[metric], color="black", linestyle="--", linewidth=1.2,
                   label="non-personalized")
    for label, value in sorted(flat.items()):
        ax.axhline(value, color="tab:purple", linestyle=":", linewidth=1.5, label=label)
    if ks and min(ks) > 0 and len(ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    arrow = " (lower is better)" if direction(task, metric) == "min" else " (higher is better)"
    r = g.rows[0]
    ax.set_xlabel("k (retrieved profile items)")
    ax.set_ylabel(f"{metric}{arrow}")
    ax.set_title(f"{task.name} {task.title}: {metric} vs k\n{r.stage} · "
                 f"{_split_text(r.split, r.setting.time_split)} · {_model_name(r.setting.model)}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def plot_best_vs_baseline(groups: list[Group], plt) -> bytes | None:
    """One panel per task: the best personalized run's monitor metric next to the baseline's."""
    panels = [g for g in groups if g.best is not None or g.baseline is not None]
    if not panels:
        return None
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n + 0.6, 4.2), squeeze=False)
    for ax, g in zip(axes[0], panels):
        metric, task = g.monitor, g.task
        best = f"best: {g.best.label()} k={g.best.setting.k}" if g.best else "best personalized"
        bars = [("non-personalized", g.baseline, "tab:gray"), (best, g.best, "tab:blue")]
        names = [b[0] for b in bars]
        values = [b[1].metrics.get(metric, math.nan) if b[1] else math.nan for b in bars]
        ax.bar(range(2), [0 if math.isnan(v) else v for v in values], color=[b[2] for b in bars])
        for i, v in enumerate(values):
            ax.text(i, 0 if math.isnan(v) else v, "n/a" if math.isnan(v) else f"{v:.4f}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(2), names, fontsize=8, rotation=12)
        ax.set_ylabel(f"{metric} ({'lower' if direction(task, metric) == 'min' else 'higher'} is better)")
        gain = relative_gain(values[1], values[0], direction(task, metric)) \
            if not any(math.isnan(v) for v in values) else None
        r = g.rows[0]
        split = f"{r.split}{' time' if r.setting.time_split else ''}"
        several = len({p.rows[0].setting.model for p in panels}) > 1
        model = f", {_model_name(r.setting.model)}" if several else ""
        ax.set_title(f"{task.name} ({r.stage}, {split}{model})\ngain {_pct(gain)}", fontsize=9)
        ax.margins(y=0.15)
    fig.suptitle("personalized (best setting) vs non-personalized", fontsize=11)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


#: How :func:`plot_modes` names each mode (a mode not listed keeps its own name).
MODE_NAMES = {"none": "non-personalized", "fid": "FiD", "ipa": "IPA", "pplug": "PPlug",
              "pplug+ipa": "PPlug+IPA", "pplug+fid": "PPlug+FiD"}


def mode_bars(g: Group) -> list[tuple[str, Result]]:
    """The bars of :func:`plot_modes`: the group's baseline, then the best run of each mode by the
    monitor metric (modes in :data:`MODE_NAMES` order, others after them by name), each labelled with
    its mode's name and, for a mode that reads retrieved items, its layout (if not official), retriever
    and k: ``non-personalized``, ``FiD (bm25, k=4)``, ``PPlug``, ``PPlug+FiD (separate, bm25, k=4)``."""
    bars = [(MODE_NAMES["none"], g.baseline)] if g.baseline is not None else []
    by_mode: dict[str, list[Result]] = {}
    for r in g.rows:
        if not r.is_baseline:
            by_mode.setdefault(r.setting.mode, []).append(r)
    known = list(MODE_NAMES)
    for mode in sorted(by_mode, key=lambda m: (known.index(m) if m in known else len(known), m)):
        runs = by_mode[mode]
        best = best_of(runs, lambda r: r.metrics.get(g.monitor), g.task.monitor_mode) or runs[0]
        s = best.setting
        detail = ""
        if s.retriever != "none" and s.k:
            detail = f" ({'' if s.layout == 'official' else f'{s.layout}, '}{s.retriever}, k={s.k})"
        bars.append((MODE_NAMES.get(mode, mode) + detail, best))
    return bars


def plot_modes(g: Group, plt) -> bytes | None:
    """The monitor metric of the baseline and of each mode's best run side by side (FiD, IPA, PPlug,
    PPlug+FiD, ...), one bar each, labelled by :func:`mode_bars`; None unless the group has at least
    two personalized modes (one is already :func:`plot_best_vs_baseline`)."""
    bars = mode_bars(g)
    if sum(r is not g.baseline for _, r in bars) < 2:
        return None
    task, metric = g.task, g.monitor
    values = [r.metrics.get(metric, math.nan) for _, r in bars]
    colors = ["tab:gray" if r is g.baseline else f"C{i}" for i, (_, r) in enumerate(bars)]
    fig, ax = plt.subplots(figsize=(1.5 * len(bars) + 2.0, 4.2))
    ax.bar(range(len(bars)), [0 if math.isnan(v) else v for v in values], color=colors)
    for i, v in enumerate(values):
        ax.text(i, 0 if math.isnan(v) else v, "n/a" if math.isnan(v) else f"{v:.4f}", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=8, rotation=12)
    ax.set_ylabel(f"{metric} ({'lower' if direction(task, metric) == 'min' else 'higher'} is better)")
    r = g.rows[0]
    ax.set_title(f"{task.name} {task.title}: {metric} by mode (best run of each)\n{r.stage} · "
                 f"{_split_text(r.split, r.setting.time_split)} · {_model_name(r.setting.model)}", fontsize=10)
    ax.margins(y=0.15)
    ax.grid(alpha=0.3, axis="y")
    data = _png(fig)
    plt.close(fig)
    return data


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def report(
    runs_dir: Path = Path("checkpoints"),
    output: Path = Path("reports"),
    title: str = "lamp-fid results",
    overwrite: bool = False,
) -> list[Path]:
    """Collect every finished run under ``runs_dir`` into ``results.md``, ``results.csv`` and plots.

    Args:
        runs_dir: folder holding run folders (every results.json below it is read: fit, validate, test).
        output: folder to write results.md, results.csv and the PNG plots into.
        title: title of the markdown report.
        overwrite: replace report files that already exist in output.

    Returns:
        The paths written.
    """
    runs_dir, output = Path(runs_dir), Path(output)
    if not runs_dir.is_dir():
        raise LaMPError(f"{runs_dir}: no such folder (pass --runs_dir, the folder that holds run folders)")
    results, warnings = collect(runs_dir)
    for w in warnings:
        print(f"lamp-fid report: {w}")
    if not results:
        raise LaMPError(f"no results.json under {runs_dir}: finish a `lamp-fid fit` first")
    groups = group_results(results)

    files: dict[Path, bytes | str] = {output / "results.md": markdown(groups, title),
                                      output / "results.csv": csv_text(groups)}
    plt = _pyplot()
    if plt is not None:
        for g in groups:
            png = plot_k(g, plt)
            if png is not None:
                files[output / f"{_stem(g)}_k.png"] = png
            png = plot_modes(g, plt)
            if png is not None:
                files[output / f"{_stem(g)}_modes.png"] = png
        by_stage: dict[tuple, list[Group]] = {}
        for g in groups:
            r = g.rows[0]
            by_stage.setdefault((r.stage, r.split, r.setting.time_split), []).append(g)
        for (stage, split, time_split), gs in by_stage.items():
            png = plot_best_vs_baseline(gs, plt)
            if png is not None:
                files[output / f"best_vs_baseline_{stage}_{split}{'_time' if time_split else ''}.png"] = png

    for path in files:  # all refused before any is written
        check_target(path, overwrite=overwrite)
    for path, data in files.items():
        atomic_write(path, data, overwrite=overwrite)
    print(f"lamp-fid report: {len(results)} result(s) in {len(groups)} group(s) -> {output / 'results.md'}, "
          f"{output / 'results.csv'}, {sum(p.suffix == '.png' for p in files)} plot(s)")
    if plt is None:
        print("lamp-fid report: plots skipped: matplotlib is not installed (pip install 'lamp-fid[plot]')")
    return list(files)
