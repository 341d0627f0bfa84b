"""Train a dense bi-encoder towards the reader's passage scores; save it for ``--retriever dense``.

The retriever is the dense one lamp-fid ranks with (:mod:`lamp_fid.retrieval.dense`): one HF encoder
for queries and items, masked mean pooling, dot product, no projection head. For each question the loss
is ``KL(softmax(reader scores / temperature) || softmax(query . item))`` over the candidate items the
reader scored (Izacard & Grave 2021: no temperature, which beat MSE and a ranking loss). Plain torch:
AdamW (no weight decay on biases and norm weights), linear warmup then linear decay to 0, gradient
clipping. Deterministic for a seed on the CPU: the batches come from a seeded generator and dropout
draws from a forked, seeded RNG (the caller's RNG state is left as it was).

With dev questions, the dev KL is measured before training, every ``eval_every`` steps and at the end,
and the weights with the lowest dev KL are the ones saved (FiD keeps the best checkpoint by eval KL);
that can be the starting encoder, which the saved ``lamp_fid_distill.json`` then says (``best_step 0``).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_folder, exists_message
from lamp_fid.retrieval.base import item_texts
from lamp_fid.retrieval.dense import MAX_LENGTH, mean_pool
from lamp_fid.tasks import Task, get_task

INFO_FILE = "lamp_fid_distill.json"  #: what was distilled, saved beside the weights


@dataclass(frozen=True)
class DistillQuestion:
    """One training question: the query text the dense retriever embeds, and the candidate items the
    reader scored (their texts as the dense retriever embeds them, and the reader's scores)."""

    id: str
    query: str
    texts: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class DistillSettings:
    """How the bi-encoder is trained (defaults: FiD's retriever training, Izacard & Grave 2021)."""

    steps: int = 1000  #: optimizer steps
    batch_size: int = 8  #: questions per step
    lr: float = 1e-4  #: AdamW learning rate
    weight_decay: float = 0.1  #: AdamW weight decay (none on biases and norm weights)
    warmup_ratio: float = 0.05  #: share of the steps with linear warmup; then linear decay to 0
    temperature: float = 1.0  #: reader scores are divided by it before the softmax
    max_length: int = MAX_LENGTH  #: tokens per text (also capped by the tokenizer's model_max_length)
    clip_norm: float | None = 1.0  #: gradient norm clipping (None: off)
    seed: int = 0  #: batch order and dropout
    eval_every: int = 100  #: with dev questions, measure the dev KL every this many steps

    def check(self) -> None:
        """Raise :class:`LaMPError` naming the first setting out of range."""
        for name in ("steps", "batch_size", "max_length", "eval_every"):
            if getattr(self, name) < 1:
                raise LaMPError(f"distill: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.temperature > 0:
            raise LaMPError(f"distill: lr and temperature must be > 0, got {self.lr} and {self.temperature}")
        if self.weight_decay < 0 or not 0 <= self.warmup_ratio <= 1:
            raise LaMPError("distill: weight_decay must be >= 0 and warmup_ratio in [0, 1]")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise LaMPError(f"distill: clip_norm must be > 0 or None, got {self.clip_norm}")


@dataclass
class DistillResult:
    """What :func:`train_encoder` did: the training loss of each step and the dev KL at each check."""

    losses: list[float] = field(default_factory=list)
    dev_kl: dict[int, float] = field(default_factory=dict)  #: step -> mean dev KL (0 = before training)
    best_step: int | None = None  #: the step whose weights were kept (None: no dev questions, the last)
    questions: int = 0  #: training questions used
    skipped: int = 0  #: training questions left out: fewer than two scored candidates carry no signal


def questions_from_scores(examples: Iterable[Example], task: str | Task, scores: Mapping[str, Mapping[str, float]],
                          *, use_date: bool = False, source: str = "<scores>",
                          questions_source: str = "<questions>") -> list[DistillQuestion]:
    """The :class:`DistillQuestion` of every scored example, in ``examples`` order.

    Texts are those the dense retriever ranks (``task.query_of`` of the input; the task's item text,
    plus the date with ``use_date``). A scored question missing from ``examples``, or a scored item id
    missing from (or twice in) its profile, is a :class:`LaMPDataError` naming the scores file
    (``source``), the question and the item.
    """
    task = get_task(task)
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.id not in scores:
            continue
        seen.add(ex.id)
        texts = item_texts(task, ex, use_date, questions_source)
        position: dict[str, int] = {}
        for i, item in enumerate(ex.profile):
            position[item.get("id")] = -1 if item.get("id") in position else i
        scored = scores[ex.id]
        for item_id in scored:
            if position.get(item_id, -1) < 0:
                where = "is not" if item_id not in position else "is twice"
                raise LaMPDataError(source, f"profile item {item_id!r} {where} in the question's profile "
                                    f"in {questions_source}", record_id=ex.id, field=item_id)
        ids = list(scored)
        out.append(DistillQuestion(ex.id, task.query_of(ex.input), tuple(texts[position[i]] for i in ids),
                                   tuple(float(scored[i]) for i in ids)))
    missing = next((qid for qid in scores if qid not in seen), None)
    if missing is not None:
        raise LaMPDataError(source, f"no such question in {questions_source}", record_id=missing)
    return out


# --- the encoder ----------------------------------------------------------------------------------

def load_encoder(encoder: str, device: str = "cpu"):
    """``(model, tokenizer)`` of an HF encoder name or folder, float32, as the dense retriever loads it."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(encoder)
        model = AutoModel.from_pretrained(encoder, dtype=torch.float32)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LaMPError(f"cannot load dense encoder {encoder!r}: {first}") from None
    try:
        return model.to(device), tokenizer
    except (RuntimeError, AssertionError) as err:
        raise LaMPError(f"cannot use device {device!r}: {err}") from None


def embed(model, tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Mean-pooled embeddings ``[len(texts), d]`` (with gradients when enabled), as the dense retriever
    computes them."""
    limit = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
    device = next(model.parameters()).device
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]).float()


def kl_loss(model, tokenizer, questions: Sequence[DistillQuestion], temperature: float = 1.0,
            max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Mean over ``questions`` of ``KL(softmax(reader / temperature) || softmax(query . items))``.

    Each distinct text of the batch is embedded once.
    """
    pool: dict[str, int] = {}
    for q in questions:
        for text in (q.query, *q.texts):
            pool.setdefault(text, len(pool))
    emb = embed(model, tokenizer, list(pool), max_length)  # [n distinct texts, d]
    losses = []
    for q in questions:
        items = emb[torch.tensor([pool[t] for t in q.texts], device=emb.device)]  # [n, d]
        log_retriever = (items @ emb[pool[q.query]]).log_softmax(-1)  # [n]
        log_reader = (torch.tensor(q.scores, device=emb.device) / temperature).log_softmax(-1)
        losses.append((log_reader.exp() * (log_reader - log_retriever)).sum())
    return torch.stack(losses).mean()


@torch.no_grad()
def mean_kl(model, tokenizer, questions: Sequence[DistillQuestion], settings: DistillSettings) -> float:
    """The KL of :func:`kl_loss` over ``questions`` in eval mode, ``batch_size`` questions at a time."""
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for s in range(0, len(questions), settings.batch_size):
            chunk = questions[s:s + settings.batch_size]
            loss = kl_loss(model, tokenizer, chunk, settings.temperature, settings.max_length)
            total += float(loss) * len(chunk)
    finally:
        model.train(was_training)
    return total / len(questions)


def _parameter_groups(model) -> list[dict]:
    """A weight-decay group and a no-decay group (biases and norm weights, as in lamp_fid.model)."""
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if id(p) in norms or "bias" in name or "norm" in name.lower() else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _usable(questions: Sequence[DistillQuestion], what: str) -> list[DistillQuestion]:
    for q in questions:
        if len(q.texts) != len(q.scores):
            raise LaMPError(f"distill: {what} question {q.id!r} has {len(q.texts)} items and "
                            f"{len(q.scores)} scores")
        if not all(math.isfinite(s) for s in q.scores):
            raise LaMPError(f"distill: {what} question {q.id!r} has a score that is not a finite number")
    return [q for q in questions if len(q.texts) >= 2]


def train_encoder(model, tokenizer, questions: Sequence[DistillQuestion],
                  settings: DistillSettings = DistillSettings(), dev: Sequence[DistillQuestion] = (),
                  progress: bool = False) -> DistillResult:
    """Distill the reader's scores into ``model`` in place (see the module docstring).

    Questions with fewer than two scored candidates are left out (their KL is always 0).
    """
    from transformers import get_linear_schedule_with_warmup

    settings.check()
    train = _usable(questions, "training")
    dev = _usable(dev, "dev")
    result = DistillResult(questions=len(train), skipped=len(questions) - len(train))
    if not train:
        raise LaMPError("distill: no training question has two or more scored candidate items")
    optimizer = torch.optim.AdamW(_parameter_groups(model), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = math.ceil(settings.warmup_ratio * settings.steps)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, settings.steps)
    order = torch.Generator().manual_seed(settings.seed)
    best: tuple[float, int, dict] | None = None

    def check_dev(step: int) -> None:
        nonlocal best
        result.dev_kl[step] = kl = mean_kl(model, tokenizer, dev, settings)
        if best is None or kl < best[0]:
            best = (kl, step, copy.deepcopy(model.state_dict()))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        if dev:
            check_dev(0)
        model.train()
        queue: list[int] = []
        for step in tqdm(range(1, settings.steps + 1), disable=not progress, desc="distill", unit="step"):
            batch = []
            while len(batch) < min(settings.batch_size, len(train)):
                if not queue:  # a new epoch: a fresh seeded permutation
                    queue = torch.randperm(len(train), generator=order).tolist()
                batch.append(train[queue.pop()])
            loss = kl_loss(model, tokenizer, batch, settings.temperature, settings.max_length)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
            optimizer.step()
            schedule.step()
            result.losses.append(float(loss.detach()))
            if dev and (step % settings.eval_every == 0 or step == settings.steps):
                check_dev(step)
    model.eval()
    if best is not None:
        _, result.best_step, state = best
        model.load_state_dict(state)
    return result


def save_encoder(model, tokenizer, output: str | Path, *, overwrite: bool = False,
                 info: dict | None = None) -> Path:
    """Save ``model`` and ``tokenizer`` (``save_pretrained``) as the folder ``output``, whole or not at all.

    Written with :func:`lamp_fid.io.atomic_folder`: an existing ``output`` is refused unless
    ``overwrite``, and even then only if it is an HF model folder (has config.json): a wrong path never
    deletes a folder of other files.
    """
    with atomic_folder(output, overwrite=overwrite, what="an encoder folder") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info or {}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return Path(output)


def distill(encoder: str, questions: Sequence[DistillQuestion], output: str | Path,
            settings: DistillSettings = DistillSettings(), *, dev: Sequence[DistillQuestion] = (),
            device: str = "cpu", overwrite: bool = False, progress: bool = False) -> DistillResult:
    """Load ``encoder``, distill the reader's scores into it, save it as the folder ``output``.

    The folder is what ``--retriever dense --encoder <output>`` loads; ``lamp_fid_distill.json`` in it
    records the starting encoder, the settings and the result.
    """
    settings.check()
    output = Path(output)
    if output.exists() and not overwrite:  # before any slow work
        raise LaMPError(exists_message(output))
    model, tokenizer = load_encoder(encoder, device)
    result = train_encoder(model, tokenizer, questions, settings, dev, progress)
    info = {"base_encoder": encoder, "settings": asdict(settings), "questions": result.questions,
            "skipped": result.skipped, "best_step": result.best_step,
            "dev_kl": {str(k): v for k, v in result.dev_kl.items()},
            "final_train_loss": result.losses[-1] if result.losses else None}
    save_encoder(model, tokenizer, output, overwrite=overwrite, info=info)
    return result
