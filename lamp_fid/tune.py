"""``lamp-fid tune``: the paper's "tuned profile", a grid of retrievers x k (x modes) trained on dev.

Every cell is one ``lamp-fid fit`` into its own run folder
``<runs_dir>/<prefix>-<task>-<mode>-<retriever>-k<k>`` (the baseline: ``<prefix>-<task>-none``, PPlug
alone: ``<prefix>-<task>-pplug``), run in
this process one after another. The grid restarts where it stopped: a cell with ``results.json`` is done,
a cell with ``last.ckpt`` only is resumed. Rankings are cached by the data layer, so each retriever ranks
once and changing k never re-ranks. The summary, with the best setting by the task's official metric in
its direction, goes to ``<runs_dir>/<prefix>-<task>[-<layout>][-time]-tuned.json``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import get_args

from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write
from lamp_fid.report import best_of, relative_gain
from lamp_fid.setting import PersonalMode, PersonalRetriever, RunSetting, is_baseline, read_results
from lamp_fid.tasks import Task, get_task

# tune owns these options for every cell; an override of one would make the grid's run folders lie
OWNED = ("--data.retriever", "--data.k", "--data.mode", "--run_name", "--runs_dir", "--ckpt_path",
         "--overwrite")
# settings that, if the config pins them, would send every cell's checkpoints to one folder
PINNED = ("run_name", "checkpoint.dirpath", "trainer.default_root_dir")


def base_setting(config: Path, overrides: list[str]) -> RunSetting:
    """The setting ``lamp-fid fit --config <config> <overrides>`` trains, read by the fit command's own
    parser (``lamp_fid.train.fit_config``).

    Also refuses overrides of the options tune sets itself, and configs that pin one folder for
    every run (a run's saved ``config.yaml``).
    """
    from lamp_fid.train import fit_config  # Lightning loads in seconds; `lamp-fid tune --help` needs none

    for arg in overrides:
        name = arg.partition("=")[0]
        if name in OWNED:
            raise LaMPError(f"override {arg!r}: tune sets {name} for every cell itself")
    try:
        cfg = fit_config(["--config", str(config), *overrides])
    except LaMPError as err:
        raise LaMPError(f"{config}{' with the overrides' if overrides else ''}: {err}") from None
    for key in PINNED:
        if cfg.get(key):
            where = f"{config}{' with the overrides' if overrides else ''}"
            raise LaMPError(f"{where} sets {key}: {cfg.get(key)}, so every cell would share one folder "
                            "(is it a run's saved config.yaml?); tune from a task config such as "
                            "configs/fid_lamp3.yaml")
    return RunSetting.from_data(dict(cfg.data), model=cfg.model.model_name_or_path)


def plan(run_dir: Path) -> tuple[str, list[str], str]:
    """What a cell's run folder calls for: (status, extra fit arguments, what to print).

    results.json: done; last.ckpt alone: resume from it; other checkpoints alone (a crash between
    saving best and last): start over, as nothing can be resumed; nothing: train.
    """
    if (run_dir / "results.json").exists():
        return "done", [], "skip (done)"
    if (run_dir / "last.ckpt").exists():
        return "resumed", ["--ckpt_path", str(run_dir / "last.ckpt")], f"resume from {run_dir / 'last.ckpt'}"
    if any(run_dir.glob("*.ckpt")):
        return "trained", ["--overwrite", "true"], "train (no last.ckpt to resume from: starting over)"
    return "trained", [], "train"


def _one_line(err: BaseException) -> str:
    if isinstance(err, SystemExit):  # jsonargparse/LightningCLI print the reason above and exit
        return f"the command line was rejected (exit {err.code}); see the message above"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _read_cell(run_dir: Path, cell: RunSetting) -> dict:
    """The cell's ``results.json`` fields; a ``LaMPError`` if it is missing or of another setting."""
    path = run_dir / "results.json"
    if not path.exists():
        raise LaMPError(f"{path}: the fit ended without writing it (no validation ran? see "
                        "--trainer.limit_val_batches / check_val_every_n_epoch)")
    results = read_results(path)
    got, want = ({"mode": s.mode, "retriever": s.retriever, "k": s.k} for s in (results.setting, cell))
    if got != want or results.setting.task != cell.task:
        raise LaMPError(f"{path} holds the results of another setting ({results.setting.task} {got}, "
                        f"expected {cell.task} {want}); move that run folder or use another --prefix")
    return {"metrics": results.metrics, "best_checkpoint": results.best_checkpoint, "epoch": results.epoch,
            "step": results.step, "split": results.split, "monitor": results.monitor}


def run_in_process(args: list[str]):
    """One ``lamp-fid fit/validate/test/predict`` run in this process, through the same Lightning CLI
    code path as the command line (``train.lightning_main``); its memory is released afterwards.
    Returns the finished CLI (its trainer and callbacks)."""
    from lamp_fid import train

    try:
        with warnings.catch_warnings():
            # expected: the run's args differ from the calling command's own sys.argv
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            return train.lightning_main(args)
    finally:
        _release_memory()


def _release_memory() -> None:
    """Free the finished cell's model before the next one is built (GPU memory is not shared back
    to the allocator until the last reference to the trainer goes)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _table(cells: list[dict], task: Task, monitor: str, best: dict | None) -> str:
    metrics = [f"val/{m}" for m in task.metrics]
    head = ["", "run", "mode", "retriever", "k", *[m.removeprefix("val/") for m in metrics], "status"]
    rows = [head]
    for c in cells:
        vals = [f"{c['metrics'][m]:.4f}" if m in (c.get("metrics") or {}) else "—" for m in metrics]
        rows.append(["*" if c is best else "", c["run_name"], c["mode"], c["retriever"], str(c["k"]),
                     *vals, c["status"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    arrow = "lower" if task.monitor_mode == "min" else "higher"
    lines.append(f"* best personalized setting by {monitor} ({arrow} is better)")
    return "\n".join(lines)


def summarize(cells: list[dict], task: Task, **extra) -> dict:
    """The tuned profile: every cell, the baseline, the best personalized cell and its gains."""
    monitor = f"val/{task.monitor}"
    done = [c for c in cells if c.get("metrics")]
    baseline = next((c for c in done if is_baseline(c["mode"])), None)
    best = best_of([c for c in done if not is_baseline(c["mode"])], lambda c: c["metrics"].get(monitor),
                   task.monitor_mode)
    gain = None
    if best is not None and baseline is not None:
        # every official metric of a task points the way its monitor does (see report.direction)
        gain = {m: relative_gain(best["metrics"][f"val/{m}"], baseline["metrics"].get(f"val/{m}"),
                                 task.monitor_mode)
                for m in task.metrics if f"val/{m}" in best["metrics"]}
    return {"task": task.name, "monitor": monitor, "monitor_mode": task.monitor_mode, **extra,
            "best": best, "baseline": baseline, "gain_over_baseline": gain, "cells": cells,
            "failed": [c["run_name"] for c in cells if c["status"] == "failed"]}


def tune(
    fit_config: Path,
    retrievers: list[PersonalRetriever] = ["bm25", "recency", "random", "dense"],  # noqa: B006 (read only)
    ks: list[int] = [1, 2, 4, 8],  # noqa: B006
    modes: list[PersonalMode] = ["fid"],  # noqa: B006
    runs_dir: Path = Path("checkpoints"),
    baseline: bool = True,
    prefix: str = "tune",
    overrides: list[str] = [],  # noqa: B006
    output: Path | None = None,
) -> dict:
    """Train every retriever x k x mode of the task of ``fit_config`` and the baseline; pick the best on dev.

    Restartable: a cell whose run folder has results.json is skipped, one with only last.ckpt is
    resumed. A failed cell is reported and the grid goes on; the summary keeps every finished cell and
    the command then exits with an error naming the failed cells (rerun the same command to retry them).

    Args:
        fit_config: `lamp-fid fit` config of the task (e.g. configs/fid_lamp3.yaml); its data.task picks
            the task. (Not named config: jsonargparse reserves that name for its own config files.)
        retrievers: retrievers to try (bm25, recency, random, dense).
        ks: numbers of retrieved profile items to try.
        modes: how the k items reach the model: fid (one passage each), ipa (one prompt); pplug
            (PPlug's soft tokens alone: one cell, whatever the retrievers and ks), pplug+ipa,
            pplug+fid (PPlug's soft tokens added to ipa/fid).
        runs_dir: folder that holds the run folders (one per cell).
        baseline: also train the non-personalized baseline (mode none) once.
        prefix: first part of every cell's run folder name and of the summary's file name.
        overrides: more `lamp-fid fit` arguments for every cell, e.g.
            '["--trainer.max_epochs=3", "--data.batch_size=8"]'.
        output: summary JSON (default: <runs_dir>/<prefix>-<task>[-<layout>][-time]-tuned.json); it lists
            this grid's cells, rebuilt from their results.json on every run.

    Returns:
        The summary written to ``output``.
    """
    from lightning.pytorch.utilities import rank_zero_only


    config, runs_dir, overrides = Path(fit_config), Path(runs_dir), [str(o) for o in overrides]
    if not config.is_file():
        raise LaMPError(f"{config}: no such config file (e.g. configs/fid_lamp3.yaml)")
    if not prefix or "/" in prefix:
        raise LaMPError(f"prefix {prefix!r}: give a non-empty name without '/'")
    if any(k < 1 for k in ks):
        raise LaMPError(f"ks {list(ks)}: every k must be >= 1 (the baseline is --baseline true)")
    for given, allowed in ((retrievers, PersonalRetriever), (modes, PersonalMode)):
        bad = [v for v in given if v not in get_args(allowed)]
        if bad:  # "none" included: the baseline is one cell, --baseline true
            raise LaMPError(f"{bad}: not among {list(get_args(allowed))} (the baseline: --baseline true)")
    retrievers, ks, modes = (list(dict.fromkeys(v)) for v in (retrievers, ks, modes))
    base = base_setting(config, overrides)
    task = get_task(base.task)
    output = Path(output) if output else runs_dir / (
        f"{prefix}-{task.name}{'' if base.layout == 'official' else '-' + base.layout}"
        f"{'-time' if base.time_split else ''}-tuned.json")

    grid = [dataclasses.replace(base, mode="none")] if baseline else []
    grid += [dataclasses.replace(base, mode=m, retriever=r, k=k)
             for m in modes for r in retrievers for k in ks]  # k innermost: one ranking per retriever
    grid = list(dict.fromkeys(grid))  # pplug retrieves nothing: one cell whatever the retriever and k
    if not grid:
        raise LaMPError("empty grid: give at least one retriever, k and mode, or --baseline true")
    cells: list[dict] = []

    def save() -> dict:
        summary = summarize(cells, task, config=str(config), overrides=overrides, runs_dir=str(runs_dir),
                            grid={"retrievers": retrievers, "ks": ks, "modes": modes, "baseline": baseline})
        if rank_zero_only.rank == 0:  # under DDP every rank walks the grid; one writes
            atomic_write(output, json.dumps(summary, indent=2) + "\n", overwrite=True)
        return summary

    for i, setting in enumerate(grid, 1):
        name = f"{prefix}-{setting.run_name()}"
        run_dir = runs_dir / name
        cell = {"run_name": name, "task": task.name, "mode": setting.mode, "retriever": setting.retriever,
                "k": setting.k, "run_dir": str(run_dir), "status": "done"}
        cells.append(cell)
        where = f"[{i}/{len(grid)}] {name}"
        args = ["fit", "--config", str(config), "--data.mode", setting.mode, "--data.retriever",
                setting.retriever, "--data.k", str(setting.k), "--run_name", name,
                "--runs_dir", str(runs_dir), *overrides]
        cell["status"], extra, says = plan(run_dir)
        args += extra
        print(f"{where}: {says}", flush=True)
        try:
            if cell["status"] != "done":
                run_in_process(args)
            cell.update(_read_cell(run_dir, setting))
        except KeyboardInterrupt:
            cell.update(status="interrupted", error="interrupted")
            save()
            raise
        except (Exception, SystemExit) as err:  # one cell's failure must not lose the others
            if not isinstance(err, (LaMPError, SystemExit)):  # those already say all there is to say
                traceback.print_exc(file=sys.stderr)
            cell.update(status="failed", error=_one_line(err))
            print(f"{where}: FAILED: {cell['error']}", file=sys.stderr, flush=True)
        save()  # after every cell, so a crash of the process loses nothing finished

    summary = save()
    print(_table(cells, task, summary["monitor"], summary["best"]))
    if summary["best"] and summary["gain_over_baseline"]:
        gains = ", ".join(f"{m} {100 * g:+.2f}%" for m, g in summary["gain_over_baseline"].items()
                          if g is not None)
        print(f"tuned profile: {summary['best']['run_name']} ({gains} over the baseline)")
    print(f"summary: {output}")
    failed = [c for c in cells if c["status"] == "failed"]
    if failed:
        raise LaMPError(f"{len(failed)} of {len(grid)} cells failed: "
                        + "; ".join(f"{c['run_name']}: {c['error']}" for c in failed)
                        + f" (finished cells are kept in {output}; rerun the same command to retry)")
    return summary
