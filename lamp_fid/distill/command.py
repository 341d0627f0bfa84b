"""``lamp-fid distill``: train a dense retriever towards the FiD reader's passage scores (docs/distill.md).

The scores come from ``lamp-fid predict ... --model.passage_scores fid`` (``<predictions>.scores.json``,
:func:`lamp_fid.distill.collect.scores_path`); the questions are the LaMP file they were computed on,
read by the validated reader (:class:`~lamp_fid.data.store.LaMPStore`). The result is an HF encoder
folder that ``--data.retriever dense --data.encoder <folder>`` ranks with unchanged (the ranking cache
keys on the folder's content, so a new encoder never reuses stale rankings).
"""

from __future__ import annotations

from pathlib import Path

from lamp_fid.errors import LaMPError

# how many steps the summary's first and last training KL average over (at most)
_WINDOW = 10
# distill()'s defaults are DistillSettings' (tests/test_distill_command.py checks it): written out here so
# that `lamp-fid distill --help` does not import torch


def _questions(task, questions: Path, scores_file: Path, *, use_date: bool, cache_dir: Path | None,
               what: str) -> list:
    """The :class:`~lamp_fid.distill.trainer.DistillQuestion` of every question of ``scores_file``."""
    from lamp_fid.data.store import LaMPStore
    from lamp_fid.distill.scores import read_scores
    from lamp_fid.distill.trainer import questions_from_scores

    if not Path(questions).is_file():
        raise LaMPError(f"{questions}: no such file ({what} questions)")
    scores = read_scores(scores_file)
    if not scores:
        raise LaMPError(f"{scores_file}: no scores (an empty object): nothing to distill")
    store = LaMPStore.open(task, questions, None, cache_dir=cache_dir)
    return questions_from_scores(store, task, scores, use_date=use_date, source=str(scores_file),
                                 questions_source=str(questions))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summary(result, *, train_questions: int, dev_questions: int, encoder: str, output: Path) -> str:
    """The one-screen summary ``lamp-fid distill`` prints for a :class:`DistillResult`."""
    lines = [f"distilled {encoder} on {result.questions} training questions"
             + (f" ({result.skipped} of {train_questions} left out: fewer than 2 scored items)"
                if result.skipped else "")
             + (f", {dev_questions} dev questions" if dev_questions else "")]
    n = min(_WINDOW, len(result.losses))
    if n:
        lines.append(f"train KL (batch mean): first {n} steps {_mean(result.losses[:n]):.4f} -> last {n} steps "
                     f"{_mean(result.losses[-n:]):.4f} ({len(result.losses)} steps)")
    if result.dev_kl:
        last = max(result.dev_kl)
        lines.append(f"dev KL: start {result.dev_kl[0]:.4f} -> best {result.dev_kl[result.best_step]:.4f} at "
                     f"step {result.best_step} (last {result.dev_kl[last]:.4f} at step {last}); "
                     f"saved: step {result.best_step}")
    else:
        why = "no dev question has 2 or more scored items" if dev_questions else "no dev questions"
        lines.append(f"{why}: saved the last step's weights")
    lines.append(f"encoder folder: {output}  (rank with --data.retriever dense --data.encoder {output})")
    return "\n".join(lines)


def distill(task: str, questions: Path, scores: Path, output: Path, encoder: str = "facebook/contriever",
            dev_questions: Path | None = None, dev_scores: Path | None = None, steps: int = 1000,
            batch_size: int = 8, lr: float = 1e-4, weight_decay: float = 0.1, warmup_ratio: float = 0.05,
            temperature: float = 1.0, max_length: int = 512, clip_norm: float | None = 1.0, seed: int = 0,
            eval_every: int = 100, use_date: bool = False, cache_dir: Path | None = None, device: str = "cpu",
            overwrite: bool = False, progress: bool = True):
    """Train a dense bi-encoder towards the FiD reader's passage scores (reader-to-retriever distillation).

    Loss per question: KL(softmax(reader scores / temperature) || softmax(query . item)) over the items
    the reader scored (mean pooling, dot product: the dense retriever's own scoring). Prints a summary.

    Args:
        task: LaMP task of the questions (LaMP_1 .. LaMP_7; LaMP-3 spelling works).
        questions: the *_questions.json file the training scores were computed on.
        scores: the training scores, {question id: {profile item id: score}} (written beside the
            predictions by `lamp-fid predict ... --model.passage_scores fid`).
        output: the encoder folder to write (HF save_pretrained; use it with --data.encoder).
        encoder: the starting encoder: an HF name or a local folder (default Contriever).
        dev_questions: questions file of the dev scores (with dev_scores: the dev KL is measured and the
            weights with the lowest dev KL are saved).
        dev_scores: dev scores file, {question id: {profile item id: score}}.
        steps: optimizer steps.
        batch_size: questions per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (none on biases and norm weights).
        warmup_ratio: share of the steps with linear warmup; then linear decay to 0.
        temperature: the reader scores are divided by it before the softmax.
        max_length: tokens per query or item text (also capped by the encoder's limit).
        clip_norm: gradient norm clipping (null: off).
        seed: batch order and dropout.
        eval_every: with dev scores, measure the dev KL every this many steps.
        use_date: append " date: <date>" to item texts, as ranking with --data.use_date true does.
        cache_dir: lamp-fid's cache folder for parsed files (default: $LAMP_FID_CACHE, else
            ~/.cache/lamp-fid).
        device: torch device to train on (cpu, cuda, cuda:1, mps).
        overwrite: replace --output if it is an existing encoder folder.
        progress: show a progress bar while training.
    """
    from lamp_fid.distill.trainer import DistillSettings, distill as run_distill
    from lamp_fid.io import check_folder_target
    from lamp_fid.tasks import resolve_task

    task_row = resolve_task(task)
    settings = DistillSettings(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                               warmup_ratio=warmup_ratio, temperature=temperature, max_length=max_length,
                               clip_norm=clip_norm, seed=seed, eval_every=eval_every)
    settings.check()
    if (dev_questions is None) != (dev_scores is None):
        raise LaMPError("--dev_questions and --dev_scores go together: give both or neither")
    for name, path in (("--scores", scores), ("--dev_scores", dev_scores)):
        if path is not None and not Path(path).is_file():
            raise LaMPError(f"{path}: no such file ({name})")
    output = check_folder_target(output, overwrite=overwrite, what="an encoder folder")
    train = _questions(task_row, questions, scores, use_date=use_date, cache_dir=cache_dir, what="training")
    dev = [] if dev_questions is None else _questions(task_row, dev_questions, dev_scores, use_date=use_date,
                                                       cache_dir=cache_dir, what="dev")
    if not any(len(q.texts) >= 2 for q in train):  # checked before the encoder loads
        raise LaMPError(f"{scores}: no question has two or more scored items: nothing to distill")
    result = run_distill(encoder, train, output, settings, dev=dev, device=device, overwrite=overwrite,
                         progress=progress)
    print(summary(result, train_questions=len(train), dev_questions=len(dev), encoder=encoder, output=output))
    return result
