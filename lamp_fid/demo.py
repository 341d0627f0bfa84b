"""``lamp-fid demo``: the offline demo, personalized FiD next to the non-personalized baseline.

For each seed and demo task it generates the data, tokenizer and tiny T5 (once per seed), trains the
non-personalized baseline and personalized FiD with the same settings from ``configs/demo_<task>.yaml``
(through ``lamp-fid tune``'s restartable grid, so an interrupted demo resumes), then prints and saves the
dev metrics side by side (``<output_dir>/demo_results.md`` and ``.json``: mean and min-max over the
seeds, every seed's values, and whether FiD beat the baseline on every metric in every seed), with a full
report and plots per seed.

Determinism: a seed fixes everything (the generated data, the tokenizer's ids, the model's
initialisation, Lightning's ``seed_everything`` and so the training order), and the demo runs torch with
a fixed thread count (``--threads``), so one machine gives the same numbers run after run. Other
machines may differ: float rounding of CPU/BLAS kernels (instruction set, library versions) is
amplified by training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from lamp_fid.errors import LaMPError
from lamp_fid.paper import CONFIGS_DIR
from lamp_fid.predictions import atomic_write
from lamp_fid.tasks import get_task

# One torch thread: with another process busy on a 2-core machine, a training step of the demo's
# ~0.2 M-parameter model took 3-6x longer with two threads (benchmarks/RESULTS.md, "Demo threads").
DEFAULT_THREADS = 1
# Options the demo sets for every run itself: an override of one would make its folders or seeds lie.
OWNED = ("--seed_everything", "--data.data_dir", "--data.cache_dir", "--model.model_name_or_path")
MAX_SEED = 2**32 - 1  # Lightning's seed_everything range


def _config_of(task: str, configs_dir: Path) -> Path:
    path = configs_dir / f"demo_{task.lower().replace('_', '')}.yaml"
    if not path.exists():
        raise LaMPError(f"{path}: no demo config for {task} (demo tasks have configs/demo_lamp<N>.yaml)")
    return path


def _task_names(tasks: list[str]) -> list[str]:
    """Canonical task names, in order, without repeats; a ``LaMPError`` for an unknown or empty list."""
    names = []
    for t in tasks:
        try:
            names.append(get_task(t).name)
        except ValueError as err:
            raise LaMPError(f"--tasks: {err}") from None
    if not names:
        raise LaMPError("--tasks: give at least one demo task, e.g. '[LaMP_3, LaMP_2]'")
    return list(dict.fromkeys(names))


def _check_options(seeds: list[int], threads: int, overrides: list[str]) -> list[int]:
    if not seeds:
        raise LaMPError("--seeds: give at least one seed, e.g. '[0, 1, 2]'")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED]
    if bad:
        raise LaMPError(f"--seeds: {bad[0]!r} is not a seed (integers 0 .. {MAX_SEED})")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise LaMPError(f"--threads: {threads!r} is not a thread count (1 or more)")
    for arg in overrides:
        name = str(arg).partition("=")[0]
        if name in OWNED:
            raise LaMPError(f"override {arg!r}: the demo sets {name} itself (seeds: --seeds; folders: "
                            "--output_dir)")
    return list(dict.fromkeys(seeds))


def _settings(config: Path, seed: int, threads: int, overrides: list[str]) -> dict:
    """Everything a seed's runs of one task depend on; finished runs are reused only if it is unchanged."""
    import torch

    from lamp_fid import __version__
    from lamp_fid.data.demo import DEMO_ENCODER, DEMO_MODEL, FORMAT_VERSION

    return {"config": str(config), "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
            "seed": seed, "threads": threads, "overrides": list(overrides),
            "demo_data": {"format_version": FORMAT_VERSION, "model": DEMO_MODEL, "encoder": DEMO_ENCODER},
            "lamp_fid": __version__, "torch": torch.__version__}


def _claim_runs(runs_dir: Path, task: str, settings: dict, overwrite: bool) -> None:
    """Record ``settings`` for the task's runs in ``runs_dir``; runs trained with other settings are
    retrained with ``overwrite`` (their folders removed) and refused without it."""
    path = runs_dir / f"demo-{task}-settings.json"
    runs = sorted(p for p in runs_dir.glob(f"demo-{task}-*") if p.is_dir())
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if runs and old != settings:
        changed = sorted(k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k])
        if not overwrite:
            raise LaMPError(f"{runs_dir}: the {task} runs there were trained with other settings "
                            f"({', '.join(changed)} changed); pass --overwrite true to retrain them, or "
                            "choose another --output_dir")
        print(f"{task}: retraining the runs in {runs_dir} ({', '.join(changed)} changed)", flush=True)
        for run in runs:
            shutil.rmtree(run)
    atomic_write(path, json.dumps(settings, indent=2) + "\n", overwrite=True)


def _stats(values: list[float | None]) -> dict:
    known = [v for v in values if v is not None]
    if len(known) < len(values) or not known:
        return {"mean": None, "min": None, "max": None, "per_seed": values}
    return {"mean": sum(known) / len(known), "min": min(known), "max": max(known), "per_seed": values}


def _num(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}%" if percent else f"{value:.4f}"


def _fmt(stats: dict, percent: bool = False) -> str:
    """``mean`` for one seed, ``mean (min – max)`` for several."""
    if stats["mean"] is None or len(stats["per_seed"]) == 1:
        return _num(stats["mean"], percent)
    return f"{_num(stats['mean'], percent)} ({_num(stats['min'], percent)} – {_num(stats['max'], percent)})"


def _run_seed(seed: int, seed_dir: Path, names: list[str], configs: dict[str, Path], threads: int,
              overrides: list[str], overwrite: bool) -> dict[str, dict]:
    """Train one seed's baseline and FiD for every task; ``{task: tune summary}``."""
    from lamp_fid.data.demo import demo_data
    from lamp_fid.report import report
    from lamp_fid.tune import tune

    data_root, runs_dir = seed_dir / "data", seed_dir / "runs"
    # every demo task with the default generator: one tokenizer and model for all of them
    demo_data(data_root, tasks=["LaMP_3", "LaMP_2"], seed=seed)
    paths = ["--data.data_dir", str(data_root / "LaMP"), "--data.cache_dir", str(seed_dir / "cache"),
             "--model.model_name_or_path", str(data_root / "tiny-t5"), "--seed_everything", str(seed)]
    summaries = {}
    for name in names:
        _claim_runs(runs_dir, name, _settings(configs[name], seed, threads, overrides), overwrite)
        summaries[name] = tune(configs[name], retrievers=["bm25"], ks=[4], modes=["fid"], runs_dir=runs_dir,
                               baseline=True, prefix="demo", overrides=[*paths, *overrides])
    report(runs_dir=runs_dir, output=seed_dir / "report", title=f"lamp-fid offline demo, seed {seed}",
           overwrite=True)
    return summaries


def _rows(names: list[str], seeds: list[int], summaries: list[dict[str, dict]]) -> list[dict]:
    """One row per task and metric: baseline, FiD and gain over the seeds, and the seeds FiD won."""
    from lamp_fid.report import relative_gain

    rows = []
    for name in names:
        task = get_task(name)
        for metric in task.metrics:
            key, base, fid, gain = f"val/{metric}", [], [], []
            for per_task in summaries:
                b = ((per_task[name].get("baseline") or {}).get("metrics") or {}).get(key)
                f = ((per_task[name].get("best") or {}).get("metrics") or {}).get(key)
                base.append(b)
                fid.append(f)
                gain.append(None if b is None or f is None else relative_gain(f, b, task.monitor_mode))
            rows.append({"task": name, "metric": metric, "direction": task.monitor_mode,
                         "non_personalized": _stats(base), "fid": _stats(fid), "gain": _stats(gain),
                         "fid_better_seeds": [s for s, g in zip(seeds, gain) if g is not None and g > 0]})
    return rows


def _failures(rows: list[dict], seeds: list[int]) -> list[str]:
    """One line per seed, task and metric where FiD is not strictly better than the baseline."""
    return [f"seed {s}: FiD does not beat the baseline on {r['task']} {r['metric']} ({_num(f)} vs {_num(b)})"
            for r in rows for s, b, f in zip(seeds, r["non_personalized"]["per_seed"], r["fid"]["per_seed"])
            if s not in r["fid_better_seeds"]]


def demo(output_dir: Path = Path("demo_runs"), tasks: list[str] = ["LaMP_3", "LaMP_2"],
         seeds: list[int] = [0], threads: int = DEFAULT_THREADS, configs_dir: Path = CONFIGS_DIR,
         overrides: list[str] = [], overwrite: bool = False) -> dict:
    """Run the offline demo: baseline vs personalized FiD on generated data, with a results table.

    Args:
        output_dir: folder for the demo: per seed <output_dir>/seed<N>/ with the data (data/), caches
            (cache/), runs (runs/) and report (report/); the results over all seeds in
            <output_dir>/demo_results.md and demo_results.json.
        tasks: demo tasks to run (each needs configs/demo_lamp<N>.yaml): LaMP_3 and/or LaMP_2.
        seeds: one full demo per seed (the seed fixes the generated data, the tokenizer, the model's
            initialisation and the training order); the table shows the mean and min-max over them,
            e.g. '[0, 1, 2]'.
        threads: torch threads for training and evaluation. One is the default: with anything else
            running on a small machine, a second thread slows each step 3-6x; on a dedicated machine
            2 may be faster. The numbers are reproducible for a given seed and thread count on one
            machine (another thread count gives slightly different ones).
        configs_dir: folder that holds the demo configs.
        overrides: extra `lamp-fid fit` options for every run, e.g. ["--trainer.max_steps=100"].
        overwrite: replace an existing demo report and retrain runs that were trained with other
            settings (without it such runs are refused; finished runs of the same settings are always
            reused, never retrained).
    """
    import torch

    output_dir = Path(output_dir)
    names = _task_names(tasks)
    overrides = [str(o) for o in overrides]
    seeds = _check_options(seeds, threads, overrides)
    configs = {name: _config_of(name, Path(configs_dir)) for name in names}
    out_md, out_json = output_dir / "demo_results.md", output_dir / "demo_results.json"
    if out_md.exists() and not overwrite:
        raise LaMPError(f"{out_md} exists: pass --overwrite true to write the demo report again")

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start, per_seed, summaries = time.time(), [], []
    try:
        for seed in seeds:
            t0 = time.time()
            seed_dir = output_dir / f"seed{seed}"
            summaries.append(_run_seed(seed, seed_dir, names, configs, threads, overrides, overwrite))
            per_seed.append({"seed": seed, "dir": str(seed_dir), "wall_s": round(time.time() - t0, 1)})
    finally:
        torch.set_num_threads(previous)
    wall = time.time() - start

    rows = _rows(names, seeds, summaries)
    failures = _failures(rows, seeds)
    for p in per_seed:
        p["fid_beats_baseline"] = all(p["seed"] in r["fid_better_seeds"] for r in rows)
    n = len(seeds)
    lines = ["| task | metric | non-personalized | FiD k=4 (BM25) | relative gain | seeds where FiD is better |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {_fmt(r['non_personalized'])} | {_fmt(r['fid'])} "
                     f"| {_fmt(r['gain'], percent=True)} | {len(r['fid_better_seeds'])}/{n} |")
    table = "\n".join(lines)
    verdict = ("\n".join(failures) if failures else
               f"FiD beats the non-personalized baseline on every metric in every seed ({', '.join(map(str, seeds))}).")
    times = ", ".join(f"seed {p['seed']}: {p['wall_s']:.0f} s" for p in per_seed)
    text = (f"# lamp-fid offline demo (dev split of the generated data)\n\n"
            f"Seeds {', '.join(map(str, seeds))}; {threads} torch thread(s)"
            f"{'' if n == 1 else '; each cell: mean (min – max) over the seeds'}.\n\n{table}\n\n{verdict}\n\n"
            f"Wall time: {wall:.0f} s (data, baseline and FiD training, validation; {times}).\n"
            "Gain is direction-aware: positive = better (lower MAE/RMSE, higher accuracy/F1).\n")
    result = {"seeds": seeds, "threads": threads, "spread": "min-max over seeds", "rows": rows,
              "per_seed": per_seed, "fid_beats_baseline_in_every_seed": not failures, "failures": failures,
              "wall_s": wall}
    atomic_write(out_md, text, overwrite=True)  # refused above unless --overwrite
    atomic_write(out_json, json.dumps(result, indent=2) + "\n", overwrite=True)
    print(f"\n{table}\n\n{verdict}\n\nwall time {wall:.0f} s; saved {out_md}, {out_json} and the reports "
          f"in {output_dir}/seed<N>/report/")
    return result
