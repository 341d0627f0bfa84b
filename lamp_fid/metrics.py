"""Official-equivalent LaMP metrics: ``score`` for prediction files and for training's eval epochs.

``score`` reproduces the official evaluator (LaMP's eval/evaluation.py; docs/official_mode.md#metrics): every
example becomes a row of two numbers chosen by the task's kind, and the rows are aggregated by the
kind. ``FiDModule`` scores each eval epoch's outputs with it, once they are gathered from every rank
and deduplicated (one gather per epoch; see ``FiDModule._eval_epoch_end``). The rows are

- classification: (prediction's label index, gold's label index), -1 for a prediction that is not a
  label (never a hit); a gold that is not a label is a data error (the official evaluator maps it to
  -1 as well and counts every non-label prediction for it as correct);
- regression: (predicted rating, gold rating) in float32 precision, the official fallback applied to
  unparsable predictions;
- generation: (ROUGE-1 F, ROUGE-L F) of ``rouge_score`` without stemming.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

from lamp_fid.errors import LaMPError
from lamp_fid.tasks import TASKS, Task, get_task

# The official ROUGE (HF evaluate's wrapper over rouge_score) bootstraps these types in this order,
# all from numpy's global RNG, which evaluate seeds with the metric's `seed` just before computing
# (unset: a word of numpy's current state). Drawing for the types we do not report keeps a seeded run
# identical to the official one loaded with `evaluate.load("rouge", seed=seed)` on the same example
# order (the official order is that of a Python set of ids, so it varies from run to run).
OFFICIAL_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_KEYS = {"rouge1": "rouge-1", "rougeL": "rouge-L"}


# --- per-example rows ---------------------------------------------------------------------------

def _off_label_gold(task: Task, gold: str, name: str) -> LaMPError:
    """A gold outside the task's labels is a data error (the official evaluator would map it and every
    non-label prediction to -1 and count them as hits); name the task whose labels it is, if any."""
    others = [t.name for t in TASKS.values() if t.name != task.name and gold.strip() in t.labels]
    hint = (f"; it is a label of {others[0]}: score these golds as {others[0]} (e.g. evaluate --task "
            f"{others[0]})" if others else "")
    return LaMPError(f"the gold output of example {name} is {gold!r}, not one of the {task.name} labels "
                     f"({', '.join(task.labels)}){hint}")


def _label_rows(task: Task, preds: Sequence[str], golds: Sequence[str], names: Sequence[str]) -> np.ndarray:
    rows = []
    for p, g, name in zip(preds, golds, names):
        gold = task.label_index(g)
        if gold < 0:
            raise _off_label_gold(task, g, name)
        rows.append([task.label_index(p), gold])
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def parse_rating(pred: str, gold: float) -> float:
    """LaMP_3: ``float(pred)``; if that fails, whichever of 1.0 and 5.0 is farther from ``gold``.

    A tie (gold 3) gives 5.0, as in the official code. The value is then rounded to float32, as the
    official evaluator's metric library stores it (HF evaluate's MAE/MSE inputs are float32 columns):
    "3.7" counts as 3.700000047683716. Values that are not finite in float32 ("nan", "inf", "1e39")
    also take the fallback; the official evaluator crashes on them (scikit-learn rejects NaN/inf).
    """
    try:
        value = float(pred.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
        value = 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0
    return float(np.float32(value))


def _gold_rating(gold: str, name: str) -> float:
    try:
        value = float(gold.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
        raise LaMPError(f"the LaMP_3 gold output of example {name} is {gold!r}, not a number")
    return value


def _rating_rows(task: Task, preds: Sequence[str], golds: Sequence[str], names: Sequence[str]) -> np.ndarray:
    rows = []
    for p, g, name in zip(preds, golds, names):
        gold = _gold_rating(g, name)
        rows.append([parse_rating(p, gold), float(np.float32(gold))])
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    # lazy: rouge_score (with nltk) takes seconds to import and only the generation tasks need it
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_KEYS), use_stemmer=False)


def _rouge_rows(task: Task, preds: Sequence[str], golds: Sequence[str], names: Sequence[str]) -> np.ndarray:
    scorer = _rouge_scorer()
    rows = []
    for p, g in zip(preds, golds):
        s = scorer.score(g.strip(), p.strip())  # rouge_score takes (target, prediction)
        rows.append([s["rouge1"].fmeasure, s["rougeL"].fmeasure])
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


# --- aggregation --------------------------------------------------------------------------------

def _classification(task: Task, rows: np.ndarray, **_) -> dict[str, float]:
    pred, gold = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    f1 = []
    # Macro-F1 over the task's labels only: -1 is a miss with no class of its own, and a label that
    # neither side uses scores 0 (scikit-learn's zero_division default, which the official relies on).
    for c in range(len(task.labels)):
        tp = int(np.sum((pred == c) & (gold == c)))
        denom = int(np.sum(pred == c)) + int(np.sum(gold == c))
        f1.append(2 * tp / denom if denom else 0.0)
    return {"accuracy": float(np.mean((pred == gold) & (pred >= 0))), "f1": float(np.mean(f1))}  # -1 never hits


def _regression(task: Task, rows: np.ndarray, **_) -> dict[str, float]:
    err = rows[:, 0] - rows[:, 1]
    return {"MAE": float(np.mean(np.abs(err))), "RMSE": float(np.sqrt(np.mean(err ** 2)))}


def bootstrap_medians(columns: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """The official ROUGE estimate: per ROUGE type, the median of ``n_boot`` means of resamples.

    Follows rouge_score's ``BootstrapAggregator`` as the official evaluator calls it: for each type of
    ``OFFICIAL_ROUGE_TYPES`` in turn, ``n_boot`` draws of ``choice(arange(n), size=n)`` from one
    ``RandomState(seed)``, then the 50th percentile of the means. ``columns`` maps a type
    (``rouge1``, ``rougeL``) to its per-example F-measures.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise LaMPError(f"n_boot (the number of bootstrap resamples) must be an integer >= 1, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise LaMPError(f"the bootstrap seed must be an integer in [0, 2**32), got {seed!r}")
    rng = np.random.RandomState(seed)
    n = len(next(iter(columns.values())))
    out = {}
    for rouge_type in OFFICIAL_ROUGE_TYPES:
        if len(out) == len(columns):
            break  # nothing reported comes later: no need to draw for the rest
        column = columns.get(rouge_type)
        means = np.empty(n_boot)
        for i in range(n_boot):
            idx = rng.choice(np.arange(n), size=n)
            if column is not None:
                means[i] = np.mean(column[idx])
        if column is not None:
            out[rouge_type] = float(np.percentile(means, 50))
    return out


def _generation(task: Task, rows: np.ndarray, bootstrap: bool = False, n_boot: int = 1000,
                seed: int = 0) -> dict[str, float]:
    columns = {"rouge1": rows[:, 0], "rougeL": rows[:, 1]}
    if bootstrap:
        values = bootstrap_medians(columns, n_boot=n_boot, seed=seed)
    else:
        values = {k: float(np.mean(v)) for k, v in columns.items()}
    return {ROUGE_KEYS[k]: values[k] for k in ROUGE_KEYS}


_ROWS: dict[str, Callable[[Task, Sequence[str], Sequence[str], Sequence[str]], np.ndarray]] = {
    "classification": _label_rows, "regression": _rating_rows, "generation": _rouge_rows,
}
_AGGREGATE: dict[str, Callable[..., dict[str, float]]] = {
    "classification": _classification, "regression": _regression, "generation": _generation,
}


def example_rows(task: str | Task, preds: Sequence[str], golds: Sequence[str],
                 ids: Sequence[str] | None = None) -> np.ndarray:
    """Per-example rows ``[n, 2]`` of the task's kind (see the module docstring); ``ids`` name the
    examples in errors (default: their positions)."""
    task = get_task(task)
    preds, golds = list(preds), list(golds)
    if len(preds) != len(golds):
        raise LaMPError(f"{len(preds)} predictions but {len(golds)} golds")
    names = [repr(str(i)) for i in ids] if ids is not None else [f"#{i}" for i in range(len(preds))]
    for what, values in (("prediction", preds), ("gold", golds)):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise LaMPError(f"the {what} of example {names[bad]} is {type(values[bad]).__name__} "
                            f"{values[bad]!r}, not a string")
    return _ROWS[task.kind](task, preds, golds, names)


def aggregate(task: str | Task, rows: np.ndarray, *, bootstrap: bool = False, n_boot: int = 1000,
              seed: int = 0) -> dict[str, float]:
    """The task's official metrics from per-example rows (``bootstrap`` only affects ROUGE)."""
    task = get_task(task)
    if len(rows) == 0:
        raise LaMPError(f"{task.name}: no examples to score")
    values = _AGGREGATE[task.kind](task, np.asarray(rows, dtype=np.float64), bootstrap=bootstrap,
                                   n_boot=n_boot, seed=seed)
    assert tuple(values) == task.metrics, (values, task.metrics)
    return values


def score(task: str | Task, preds: Sequence[str], golds: Sequence[str], *, bootstrap: bool = False,
          n_boot: int = 1000, seed: int = 0, ids: Sequence[str] | None = None) -> dict[str, float]:
    """Score predictions against golds exactly as LaMP's official evaluator does.

    Both sides are stripped. LaMP_1/2: ``{"accuracy", "f1"}`` (macro-F1 over the task's labels);
    LaMP_3: ``{"MAE", "RMSE"}``; LaMP_4..7: ``{"rouge-1", "rouge-L"}``, the plain mean of per-example
    F-measures, or with ``bootstrap=True`` the official estimate (median of ``n_boot`` bootstrap means,
    seeded; the order of the examples matters for it, as it does for any seeded resampling).
    ``ids`` (optional) only name the examples in error messages.
    """
    return aggregate(task, example_rows(task, preds, golds, ids), bootstrap=bootstrap, n_boot=n_boot, seed=seed)
