"""``lamp-fid distill-loop``: the iterative reader -> retriever loop (Izacard & Grave 2021) as one
restartable command.

Round 0 reads with the starting retriever (``bm25``, or ``dense`` with the starting encoder). Every
round r:

1. **reader**: ``lamp-fid fit --config <fit_config>`` with round r's retriever (k as the config says),
   in this process, through the same Lightning CLI code path ``tune`` uses, into
   ``<loop_dir>/round<r>/reader``;
2. **scores**: the best checkpoint predicts the dev questions (and, unless it is the last round, the
   train questions) with ``k = candidates`` and ``--model.passage_scores <--scores>``: the reader's score of each
   of the current retriever's top-n items, ``round<r>/scores-{train,dev}.json``;
3. **quality** on dev: the reader's dev metric, the nDCG of the retriever's ranking against the reader's
   dev scores (:func:`lamp_fid.distill.quality.mean_ndcg`) and, with ``--useful_items``, recall@k of the
   items known to carry the signal, for the retriever and for the reader's own order of its candidates;
4. **distill** (all rounds but the last): the encoder is trained towards the train scores (dev scores
   pick the best step) starting from the previous round's encoder (round 0: the starting encoder; the
   retriever keeps its weights from round to round, as FiD's loop does), saved as
   ``round<r>/encoder``; round r + 1 ranks with it (``--data.retriever dense --data.encoder``; the
   ranking cache keys on the encoder's content, so it re-ranks).

``rounds`` = N distillations, so N + 1 readers. Restart: every step's output is written atomically and a
finished step is never redone: a round with ``round.json`` is done, and an unfinished round continues
at its first unfinished step (a reader fit with ``last.ckpt`` resumes from it, as in ``tune``). Raising
``--rounds`` later extends a finished loop. The loop's settings are kept in ``loop_settings.json``; a
loop folder made with other settings is refused (``--overwrite true`` starts it afresh).

Results: ``results.json`` (every round's record), ``results.md`` (a table) and ``results.png`` (the dev
metric, nDCG and recall against the round; needs matplotlib, the ``plot`` extra).

Cost per round, as counts (train questions Q, dev questions D, candidates n, reader steps S, encoder
steps E): one reader fit (S steps on k passages), one scoring pass of Q + D questions of n passages each
(one encoder pass and one decoder step per question on top of generation), E encoder steps on
batches of questions with n + 1 texts each. ROPG's per-item feedback would take Q * n full generations
(one per question and item) for the same n.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write

SETTINGS_FILE = "loop_settings.json"
ROUND_FILE = "round.json"
RESULTS = ("results.json", "results.md", "results.png")
FORMAT = 1  # bump when a round's steps change: old loop folders are then refused
# the loop sets these for every reader and scoring run itself
OWNED = ("--data.retriever", "--data.encoder", "--data.k", "--data.mode", "--run_name", "--runs_dir",
         "--ckpt_path", "--overwrite", "--data.predict_split", "--model.passage_scores")


# --- small helpers --------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n", overwrite=True)


def read_fit_config(config: Path, overrides: tuple[str, ...]):
    """The config ``lamp-fid fit --config <config> <overrides>`` runs with (``lamp_fid.train.fit_config``)."""
    from lamp_fid.train import fit_config

    try:
        return fit_config(["--config", str(config), *overrides])
    except LaMPError as err:
        raise LaMPError(f"{config}{' with the overrides' if overrides else ''}: {err}") from None


def read_useful(path: str | Path) -> dict[str, list[str]]:
    """Read a ``useful_items.json``: ``{question id: [profile item ids]}``; a fault is one ``LaMPError``
    naming the file (and the question)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise LaMPError(f"cannot read {path}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise LaMPError(f"{path}: not a JSON file of useful items ({err})") from None
    if not isinstance(data, dict):
        raise LaMPError(f"{path}: expected an object {{question id: [item ids]}}, got a {type(data).__name__}")
    for qid, items in data.items():
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise LaMPError(f"{path}: question {qid!r}: expected a list of item ids")
    return data


def round_dir(loop_dir: Path, r: int) -> Path:
    """``<loop_dir>/round<r>``."""
    return Path(loop_dir) / f"round{r}"


def _encoder_done(path: Path) -> bool:
    from lamp_fid.distill.trainer import INFO_FILE

    return (path / "config.json").is_file() and (path / INFO_FILE).is_file()


# --- the steps (module functions, so that tests can replace the slow ones) ------------------------

def fit_reader(fit_config: Path, run_dir: Path, retriever: str, encoder: str, overrides: list[str]) -> dict:
    """Fit round r's reader into ``run_dir`` (resumed from its ``last.ckpt`` if a fit was cut short);
    return its ``results.json`` fields."""
    from lamp_fid.setting import read_results
    from lamp_fid.tune import plan, run_in_process

    status, extra, says = plan(run_dir)
    print(f"{run_dir}: {says}", flush=True)
    if status != "done":
        args = ["fit", "--config", str(fit_config), "--data.mode", "fid", "--data.retriever", retriever,
                "--data.encoder", encoder, "--run_name", run_dir.name, "--runs_dir", str(run_dir.parent),
                *overrides, *extra]
        run_in_process(args)
    path = run_dir / "results.json"
    if not path.exists():
        raise LaMPError(f"{path}: the reader's fit ended without writing it (no validation ran? see "
                        "--trainer.val_check_interval / limit_val_batches)")
    results = read_results(path)
    if not results.best_checkpoint:
        raise LaMPError(f"{path}: names no best checkpoint to score with")
    return {"metrics": results.metrics, "best_checkpoint": results.best_checkpoint, "step": results.step}


def score_split(run_dir: Path, checkpoint: str, split: str, candidates: int, out: Path,
                overrides: list[str], variant: str = "fid") -> None:
    """The reader's passage scores (``variant`` fid, atlas or pdist) of the ``split`` questions over the current
    retriever's top ``candidates`` items, through ``lamp-fid predict --model.passage_scores``; copied to
    ``out``."""
    from lamp_fid.callbacks import LaMPPredictionWriter
    from lamp_fid.distill.scores import read_scores, write_scores
    from lamp_fid.distill.collect import scores_path
    from lamp_fid.tune import run_in_process

    args = ["predict", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(checkpoint),
            "--data.predict_split", split, "--data.k", str(candidates), "--model.passage_scores", variant,
            "--run_name", run_dir.name, "--runs_dir", str(run_dir.parent), *overrides]
    cli = run_in_process(args)
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LaMPPredictionWriter))
    predictions = writer.written["predict"]
    write_scores(out, read_scores(scores_path(predictions)), overwrite=True)


def distill_encoder(start: str, data: dict, train_scores: Path, dev_scores: Path | None, out: Path,
                    settings) -> None:
    """Distill the train scores into ``start`` (dev scores pick the best step); save as ``out`` (its
    ``lamp_fid_distill.json`` records the result)."""
    from lamp_fid.distill.scores import read_scores
    from lamp_fid.distill.trainer import distill, questions_from_scores

    questions = {}
    for split, path in ((data["train_split"], train_scores), (data["val_split"], dev_scores)):
        if path is None:
            continue
        store = _store(data, split)
        questions[path] = questions_from_scores(store, data["task"], read_scores(path), use_date=data["use_date"],
                                                source=str(path), questions_source=_source(store))
    distill(start, questions[train_scores], out, settings, dev=questions.get(dev_scores, ()), overwrite=True)


def _store(data: dict, split: str):
    from lamp_fid.data.store import LaMPStore

    return LaMPStore.open_split(data["data_dir"], data["task"], split, time_split=data["time_split"],
                                cache_dir=data["cache_dir"])


def _source(store) -> str:
    from lamp_fid.retrieval.rank import _source as source

    return source(store)


def dev_quality(data: dict, retriever: str, encoder: str, scores: Path, useful: dict | None,
                recall_k: int) -> dict:
    """nDCG of the retriever's dev ranking against the reader's dev scores, and recall@k of the useful
    items (when known)."""
    from lamp_fid.distill.quality import mean_ndcg, mean_recall_at_k
    from lamp_fid.distill.scores import read_scores
    from lamp_fid.retrieval.rank import get_rankings

    store = _store(data, data["val_split"])
    rankings = get_rankings(store, retriever, cache_dir=data["cache_dir"], use_date=data["use_date"],
                            encoder=encoder, progress=False)
    ranked = {ex.id: rankings.item_ids(ex) for ex in store}
    reader = read_scores(scores)
    out = {"ndcg_dev": mean_ndcg(ranked, reader)}
    if useful is not None:
        known = {qid: items for qid, items in useful.items() if qid in ranked}
        if not known:
            raise LaMPError("--useful_items names none of the dev questions")
        out[f"recall@{recall_k}"] = mean_recall_at_k(ranked, known, recall_k)
        # how well the scores the encoder is trained towards find the useful items
        out[f"reader_recall@{recall_k}"] = mean_recall_at_k(reader_order(reader, ranked), known, recall_k)
    return out


def reader_order(scores: dict, ranked: dict) -> dict:
    """Each question's scored items by the reader's score (best first), then its unscored items in the
    retriever's order."""
    out = {}
    for qid, items in ranked.items():
        s = scores.get(qid, {})
        out[qid] = sorted(s, key=lambda i: -s[i]) + [i for i in items if i not in s]
    return out


# --- results --------------------------------------------------------------------------------------

def _table(rounds: list[dict], monitor: str, recall_key: str | None) -> str:
    head = ["round", "retriever", f"dev {monitor}", "nDCG vs reader (dev)"] + ([recall_key] if recall_key else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rounds:
        value = (r.get("metrics") or {}).get(f"val/{monitor}")
        cells = [str(r["round"]), r["retriever_label"], "-" if value is None else f"{value:.4f}",
                 f"{r['ndcg_dev']:.4f}"]
        if recall_key:
            cells.append(f"{r[recall_key]:.4f}" if r.get(recall_key) is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rounds: list[dict], monitor: str, recall_key: str | None, path: Path) -> bool:
    """Dev metric, nDCG and recall against the round; False when matplotlib is missing."""
    from lamp_fid.report import _png, _pyplot

    plt = _pyplot()
    if plt is None:
        return False
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [(f"dev {monitor}", [(r.get("metrics") or {}).get(f"val/{monitor}") for r in rounds]),
              ("nDCG vs reader (dev)", [r["ndcg_dev"] for r in rounds])]
    if recall_key:
        series.append((f"{recall_key} of useful items (dev)", [r.get(recall_key) for r in rounds]))
    for label, ys in series:
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("round (0 = starting retriever)")
    ax.set_title("reader -> retriever distillation loop", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_write(path, _png(fig), overwrite=True)
    plt.close(fig)
    return True


def write_results(loop_dir: Path, rounds: list[dict], settings: dict, plot: bool = True) -> dict:
    """``results.json``, ``results.md`` and (with ``plot`` and matplotlib) ``results.png`` of the finished
    rounds."""
    from lamp_fid.tasks import get_task

    task = get_task(settings["task"])
    recall_key = f"recall@{settings['recall_k']}" if settings["useful_items"] else None
    table = _table(rounds, task.monitor, recall_key)
    plotted = _plot(rounds, task.monitor, recall_key, loop_dir / RESULTS[2]) if rounds and plot else False
    summary = {"task": task.name, "monitor": f"val/{task.monitor}", "settings": settings, "rounds": rounds,
               "plot": str(loop_dir / RESULTS[2]) if plotted else None}
    _write_json(loop_dir / RESULTS[0], summary)
    arrow = "lower" if task.monitor_mode == "min" else "higher"
    atomic_write(loop_dir / RESULTS[1], f"# reader -> retriever distillation loop ({task.name})\n\n{table}\n\n"
                 f"dev {task.monitor}: {arrow} is better. nDCG: the retriever's dev ranking against the "
                 "reader's scores of its candidates (1 = the reader's order).\n", overwrite=True)
    print(table, flush=True)
    return summary


# --- the command ----------------------------------------------------------------------------------

def _claim(loop_dir: Path, settings: dict, overwrite: bool) -> None:
    """Record ``settings`` in the loop folder; refuse a folder of other settings unless ``overwrite``
    (then its rounds and results are removed: only what this command writes)."""
    path = loop_dir / SETTINGS_FILE
    old = _read_json(path) if path.exists() else None
    ours = [p for p in loop_dir.glob("round*") if p.is_dir()] + [loop_dir / n for n in RESULTS]
    if old is None and (path.exists() or any(p.exists() for p in ours)):
        # never delete what this command may not have written
        raise LaMPError(f"{loop_dir}: holds round folders or results but no readable {SETTINGS_FILE}, so it "
                        "is not a distill-loop folder (or a damaged one): choose another --loop_dir")
    if old is not None and old != settings:
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if not overwrite:
            raise LaMPError(f"{loop_dir}: holds a loop with other settings ({', '.join(changed)} changed); "
                            "pass --overwrite true to start it afresh, or choose another --loop_dir")
        print(f"{loop_dir}: starting afresh ({', '.join(changed)} changed)", flush=True)
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if old != settings:
        _write_json(path, settings)


def distill_loop(
    fit_config: Path,
    loop_dir: Path = Path("checkpoints/distill-loop"),
    rounds: int = 2,
    retriever: Literal["bm25", "dense"] = "bm25",
    encoder: str = "facebook/contriever",
    candidates: int = 16,
    scores: Literal["fid", "atlas", "pdist"] = "fid",
    useful_items: Path | None = None,
    recall_k: int = 4,
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 1e-4,
    weight_decay: float = 0.1,
    warmup_ratio: float = 0.05,
    temperature: float = 1.0,
    eval_every: int = 100,
    seed: int = 0,
    overrides: list[str] = [],  # noqa: B006 (read only)
    overwrite: bool = False,
) -> dict:
    """Iterate FiD reader -> passage scores -> distilled encoder -> re-rank, N rounds (restartable).

    Every round's dev metric, nDCG against the reader and recall of useful items go to
    <loop_dir>/results.json, results.md and results.png (see docs/distill.md#loop).

    Args:
        fit_config: `lamp-fid fit` config of the reader (mode fid; its k is the reader's k), e.g.
            configs/fid_lamp2.yaml.
        loop_dir: folder of the loop: round<r>/ (reader run, scores, encoder, round.json) and
            results.json / results.md / results.png.
        rounds: distillation rounds N (N + 1 readers: round 0 reads with the starting retriever). A
            finished loop rerun with a larger N continues it.
        retriever: round 0's retriever: bm25, or dense with --encoder.
        encoder: the encoder distillation starts from (an HF name or folder, e.g. facebook/contriever);
            also round 0's retriever when --retriever dense.
        candidates: n, the retriever's top-n items the reader scores per question (FiD runs with k = n
            for scoring) and the encoder is distilled over.
        scores: the reader's passage scores: fid (first decoded token's pre-softmax cross-attention,
            Izacard & Grave), atlas (value-norm weighted attention of the teacher-forced gold output) or
            pdist (Atlas's perplexity distillation: the gold output's log-likelihood reading one
            passage at a time; n teacher-forced decoder passes per question). atlas and pdist need the
            train and dev outputs.
        useful_items: JSON {dev question id: [profile item ids]} of items known to carry the signal
            (generated data): recall@k of them is reported per round.
        recall_k: k of that recall.
        steps: encoder optimizer steps per round.
        batch_size: questions per encoder step.
        lr: encoder AdamW learning rate.
        weight_decay: encoder AdamW weight decay.
        warmup_ratio: share of the encoder steps with linear warmup.
        temperature: the reader's scores are divided by it before the softmax.
        eval_every: measure the dev KL every this many encoder steps (the best step is kept).
        seed: encoder batch order and dropout.
        overrides: more `lamp-fid fit` arguments for every reader (and its scoring), e.g.
            '["--trainer.max_steps=300"]'.
        overwrite: start afresh in a loop folder that holds a loop with other settings.
    """
    from lamp_fid.distill.scores import VARIANTS as SCORE_VARIANTS
    from lamp_fid.distill.trainer import DistillSettings
    from lamp_fid.retrieval.dense import encoder_identity
    from lamp_fid.tasks import get_task

    config, loop_dir, overrides = Path(fit_config), Path(loop_dir), [str(o) for o in overrides]
    if not config.is_file():
        raise LaMPError(f"{config}: no such config file (e.g. configs/fid_lamp2.yaml)")
    for name, value in (("rounds", rounds), ("candidates", candidates), ("recall_k", recall_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "rounds" else 1):
            raise LaMPError(f"--{name}: {value!r} must be an integer >= {0 if name == 'rounds' else 1}")
    if scores not in SCORE_VARIANTS:
        raise LaMPError(f"--scores {scores!r}: use fid, atlas or pdist")
    if retriever not in ("bm25", "dense"):
        raise LaMPError(f"--retriever {retriever!r}: round 0 reads with bm25 or dense")
    for arg in overrides:
        name = arg.partition("=")[0]
        if name in OWNED:
            raise LaMPError(f"override {arg!r}: the loop sets {name} itself")
    settings_d = DistillSettings(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                 warmup_ratio=warmup_ratio, temperature=temperature, eval_every=eval_every,
                                 seed=seed)
    settings_d.check()
    d = read_fit_config(config, tuple(overrides)).data
    task = get_task(d.task)
    data = {"task": task.name, "data_dir": str(d.data_dir) if d.data_dir else None, "cache_dir": d.cache_dir,
            "time_split": bool(d.time_split), "use_date": bool(d.use_date), "val_split": d.val_split,
            "train_split": d.train_split}
    if data["data_dir"] is None:
        from lamp_fid.data.paths import default_data_dir

        data["data_dir"] = str(default_data_dir())
    useful = read_useful(useful_items) if useful_items is not None else None
    settings = {"format": FORMAT, "fit_config": str(config), "fit_config_sha256": _sha256(config),
                "overrides": overrides, "task": task.name, "k": int(d.k), "retriever": retriever,
                "encoder": encoder,
                # a local folder by its files' digests; a hub name by its name (its snapshot appears in
                # the HF cache once round 0 downloads it, which must not look like another encoder)
                "encoder_identity": encoder_identity(encoder, d.cache_dir) if Path(encoder).is_dir() else None,
                "candidates": candidates, "scores": scores, "distill": asdict(settings_d), "recall_k": recall_k,
                "useful_items": str(useful_items) if useful_items is not None else None,
                "useful_items_sha256": _sha256(Path(useful_items)) if useful_items is not None else None}
    loop_dir.mkdir(parents=True, exist_ok=True)
    _claim(loop_dir, settings, overwrite)

    done: list[dict] = []
    current = (retriever, encoder)
    start = time.time()
    for r in range(rounds + 1):
        rdir = round_dir(loop_dir, r)
        record = _read_json(rdir / ROUND_FILE)
        # a round that was the last one of a shorter loop has no encoder yet: it goes on from there
        if record is not None and record.get("round") == r and (r == rounds or record.get("distilled")):
            print(f"round {r}: done", flush=True)
        else:
            record = run_round(r, rdir, config, current, encoder, r < rounds, candidates, data, useful,
                               recall_k, settings_d, overrides, scores)
        done.append(record)
        if r < rounds:
            current = ("dense", str(rdir / "encoder"))
        if r < rounds:  # after every round, so a crash loses nothing finished; the plot at the end
            write_results(loop_dir, done, settings, plot=False)
    write_results(loop_dir, done, settings)
    print(f"loop folder {loop_dir}: {rounds + 1} round(s); this call took {time.time() - start:.0f} s", flush=True)
    return _read_json(loop_dir / RESULTS[0]) or {}


def run_round(r: int, rdir: Path, config: Path, current: tuple[str, str], start_encoder: str, distill: bool,
              candidates: int, data: dict, useful: dict | None, recall_k: int, settings_d,
              overrides: list[str], variant: str = "fid") -> dict:
    """One round from its first unfinished step; writes and returns its ``round.json`` record."""
    t0 = time.time()
    retriever, encoder = current
    label = retriever if retriever == "bm25" else (
        "dense (distilled)" if r > 0 else "dense (starting encoder)")
    print(f"round {r}: reader on {label}", flush=True)
    reader = fit_reader(config, rdir / "reader", retriever, encoder, overrides)
    splits = [data["val_split"]] + ([data["train_split"]] if distill else [])
    scores = {}
    for split in splits:
        path = rdir / f"scores-{split}.json"
        if not path.exists():
            print(f"round {r}: scoring the {split} questions' top {candidates} items", flush=True)
            score_split(rdir / "reader", reader["best_checkpoint"], split, candidates, path, overrides, variant)
        scores[split] = path
    quality = dev_quality(data, retriever, encoder, scores[data["val_split"]], useful, recall_k)
    record = {"round": r, "retriever": retriever, "encoder": encoder if retriever == "dense" else None,
              "retriever_label": label, "reader_run": str(rdir / "reader"), "metrics": reader["metrics"],
              "best_checkpoint": reader["best_checkpoint"], **quality, "distilled": None}
    if distill:
        from lamp_fid.distill.trainer import INFO_FILE

        out = rdir / "encoder"
        start = start_encoder if r == 0 else encoder
        if not _encoder_done(out):
            print(f"round {r}: distilling {start} -> {out}", flush=True)
            distill_encoder(start, data, scores[data["train_split"]], scores[data["val_split"]], out, settings_d)
        record["distilled"] = {"encoder": str(out), **(_read_json(out / INFO_FILE) or {})}
    record["wall_s"] = round(time.time() - t0, 1)
    _write_json(rdir / ROUND_FILE, record)
    return record
