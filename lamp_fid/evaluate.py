"""``lamp-fid evaluate``: score prediction files against gold outputs with the official metrics.

Like the official eval_task.py (one file each) and eval_all.py (zips of every task), except that any
subset of tasks is fine (LaMP_6 needs the licensed Avocado corpus), folders work as well as zips, and
nothing is extracted or deleted: zips are read in memory and the only file written is ``output``.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_write, check_target
from lamp_fid.metrics import score
from lamp_fid.predictions import OutputsFile, check_ids, matching_golds, outputs_by_task
from lamp_fid.tasks import Task, resolve_task, task_for


def score_file(golds: OutputsFile, preds: OutputsFile, task: Task, *, bootstrap: bool = False,
               seed: int = 0, n_boot: int = 1000) -> dict[str, float]:
    """Check that ``preds`` has exactly the gold ids, then score it in the golds' order."""
    if preds.task != golds.task:
        raise LaMPDataError(preds.where, f"the predictions are for {preds.task} but the golds "
                                         f"({golds.where}) are for {golds.task}", field="task")
    check_ids(preds.outputs, golds.outputs, preds.where)
    ids = list(golds.outputs)
    try:
        return score(task, [preds.outputs[i] for i in ids], [golds.outputs[i] for i in ids],
                     bootstrap=bootstrap, n_boot=n_boot, seed=seed, ids=ids)
    except LaMPDataError:
        raise
    except LaMPError as err:  # e.g. a LaMP_3 gold that is not a number
        raise LaMPDataError(golds.where, str(err)) from None


def evaluate(
    golds: Path,
    preds: Path,
    task: str | None = None,
    output: Path | None = None,
    bootstrap: bool = False,
    seed: int = 0,
    n_boot: int = 1000,
    overwrite: bool = False,
) -> dict:
    """Score LaMP predictions against gold outputs with the official metrics.

    Prints the official result JSON: ``{metric: value}`` when golds and preds are single files,
    ``{task: {metric: value}}`` for folders and zips (any subset of tasks, matched by each file's
    "task" field). Prediction ids must equal the gold ids exactly.

    Args:
        golds: gold outputs: an official-format JSON file ({"task", "golds": [{"id", "output"}]}),
            or a folder or zip of such files (e.g. the LaMP data folder; *questions.json files are skipped).
        preds: predictions in the same format: a JSON file, or a folder or zip with one file per task.
        task: score only this task (LaMP_1 .. LaMP_7). Also picks the label set of "LaMP_2" files:
            movie tagging by default, LaMP_2N for the deprecated news categorization.
        output: also write the result JSON here (refused if the file exists, unless --overwrite).
        bootstrap: report ROUGE as the official evaluator does (median of bootstrap means, seeded)
            instead of the plain mean; accuracy, F1, MAE and RMSE are unaffected.
        seed: seed of the bootstrap resampling (0 .. 2**32 - 1).
        n_boot: number of bootstrap resamples, >= 1 (the official evaluator uses 1000).
        overwrite: allow replacing an existing output file.
    """
    if n_boot < 1:
        raise LaMPError(f"--n_boot must be >= 1 (the number of bootstrap resamples), got {n_boot}")
    if not 0 <= seed < 2 ** 32:
        raise LaMPError(f"--seed must be in [0, 2**32) (numpy's RandomState seeds), got {seed}")
    chosen = resolve_task(task)
    golds, preds = Path(golds), Path(preds)
    if output is not None:
        check_target(output, overwrite=overwrite)  # before any scoring
    gold_files, pred_files = outputs_by_task(golds, several=True), outputs_by_task(preds)
    single = golds.is_file() and preds.is_file() and not _is_zip(golds) and not _is_zip(preds)

    if single:
        ((g,),), (p,) = gold_files.values(), pred_files.values()
        if chosen is not None and g.task != chosen.official_name:
            raise LaMPDataError(g.where, f"the golds are for {g.task}, not {chosen.official_name}", field="task")
        results = score_file(g, p, task_for(g.task, chosen), bootstrap=bootstrap, seed=seed, n_boot=n_boot)
        print(f"{g.task}: {len(g.outputs)} examples", file=sys.stderr)
    else:
        names = [chosen.official_name] if chosen else sorted(pred_files)
        for name in names:
            if name not in pred_files:
                raise LaMPError(f"{preds}: no predictions for {name}")
            if name not in gold_files:
                raise LaMPError(f"{golds}: no golds for {name} (predictions: {pred_files[name].where})")
        # a data folder holds several gold files per task (train, dev, the time split): the one
        # whose ids the predictions answer is meant
        results = {}
        for name in names:
            p = pred_files[name]
            g = matching_golds(gold_files[name], p)
            results[name] = score_file(g, p, task_for(name, chosen), bootstrap=bootstrap, seed=seed, n_boot=n_boot)
            print(f"{name}: {len(g.outputs)} examples ({p.where})", file=sys.stderr)

    text = json.dumps(results, indent=2)
    print(text)
    if output is not None:
        atomic_write(output, text + "\n", overwrite=overwrite)
    return results


def _is_zip(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)
