"""Passage relevance scores from the FiD reader's cross-attention, and the files that keep them.

The FiD score (Izacard & Grave 2021) of passage j for an example is the **pre-softmax** cross-attention
score of the first decoded token, averaged over every decoder layer, every head and the passage's
non-padding tokens. We get it from one extra decoder step (the decoder start token, as the first step of
``generate`` sees it) over the fused encoder states: forward hooks read the outputs of each
cross-attention's ``q`` and ``k`` projections, and the score is ``q . k^T * scaling`` computed from
them, exactly the logits T5's attention adds its mask to. T5 cross-attention has no relative position
bias (``has_relative_attention_bias=False``: the bias is zeros; checked at run time) and no
``1/sqrt(d)`` scaling (``scaling = 1.0``, read from the module). The hooks only read: the forward math,
the attention implementation (sdpa or eager) and later ``generate`` calls are untouched, and
transformers' ``output_attentions`` (post-softmax only, eager only) is not needed. Logits are computed
in float32 from the captured projections (under bf16 autocast the model's own logits are bf16).

Option ``atlas`` (Atlas's "ADist" reading): the post-softmax attention of each teacher-forced target
token (labels != -100) times the norm of the attended value vector (per head), summed over the target
tokens and over the passage's tokens, averaged over layers and heads. It needs the labels.

Option ``pdist`` (Atlas's perplexity distillation, Izacard et al. 2022, "PDist"; not an attention
score): the log-likelihood of the teacher-forced gold output when the decoder reads **one** passage
(plus the passages that hold no profile item, e.g. the ``separate`` layout's input passage:
``context``), i.e. ``sum_t log p(y_t | y_<t, input, item j)``. The encoder pass is the one generation
reads (passages are encoded separately, so passage j's states are the same alone or fused); only the
decoder runs again, once per passage, teacher-forced, with the other passages masked out of the
cross-attention. It needs the labels. On the demo's tiny reader trained from scratch, whose
cross-attention hardly separates useful items, this signal does (docs/distill.md#demo-results).

A passage without tokens (a padding passage of a user with fewer than k items) scores ``-inf``: a
softmax over an example's passages then gives it weight 0, and it never has an item id to be written.

Cost, as counts per training question with n scored candidate items: our scores take one reader
forward, i.e. n passage encodings (one batched encoder call) and **one** decoder step of one token over
the fused states (during validate/test/predict the encoder pass is shared with generation, so the extra
cost is that single decoder step). ROPG's per-item feedback takes one full generation per (question,
item): 16 generations for its top-16, each an encoder pass and up to ``max_new_tokens`` decoder steps
(times the beams). ``pdist`` takes n teacher-forced decoder passes (no generation, no metric) over the
same encoder pass. Our scores need a reader trained on those passages; in the loop it is the reader
that is trained anyway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from transformers.modeling_outputs import BaseModelOutput

from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_open

Variant = Literal["fid", "atlas", "pdist"]
VARIANTS: tuple[str, ...] = get_args(Variant)  #: the passage score kinds
TEACHER_FORCED = ("atlas", "pdist")  #: the kinds that read the gold outputs (labels)
Scores = dict[str, dict[str, float]]  #: question id -> profile item id -> score


def cross_attentions(model) -> list[torch.nn.Module]:
    """The decoder's cross-attention modules of a T5-family reader, first layer first."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    blocks = getattr(decoder, "block", None)
    try:
        mods = [block.layer[1].EncDecAttention for block in blocks]
    except (TypeError, AttributeError, IndexError):
        raise LaMPError(f"passage scores need a T5-family reader (decoder blocks with EncDecAttention); "
                        f"got {type(model).__name__}") from None
    for m in mods:
        if getattr(m, "has_relative_attention_bias", False):
            # would add a position bias to the logits that we do not compute
            raise LaMPError("passage scores: this reader's cross-attention has a relative position bias")
    return mods


class _Capture:
    """Forward hooks that keep the outputs of named projections of each cross-attention module."""

    def __init__(self, modules: list[torch.nn.Module], names: tuple[str, ...]):
        self.outputs: list[dict[str, torch.Tensor]] = [{} for _ in modules]
        self._handles = [getattr(m, name).register_forward_hook(self._hook(i, name))
                         for i, m in enumerate(modules) for name in names]

    def _hook(self, i: int, name: str):
        def keep(module, args, output):
            self.outputs[i][name] = output.detach()
        return keep

    def __enter__(self) -> "_Capture":
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def _heads(x: torch.Tensor, d_kv: int) -> torch.Tensor:
    """``[B, S, H*d_kv] -> [B, H, S, d_kv]`` (as T5Attention splits heads), in float32."""
    B, S, _ = x.shape
    return x.float().view(B, S, -1, d_kv).transpose(1, 2)


def cross_attention_logits(model, encoded: BaseModelOutput | torch.Tensor, mask: torch.Tensor,
                           decoder_input_ids: torch.Tensor | None = None,
                           names: tuple[str, ...] = ("q", "k")) -> tuple[list[torch.Tensor], list[dict]]:
    """Pre-softmax cross-attention logits ``[B, H, T, k*L]`` of every decoder layer (no mask added).

    Runs the decoder once on ``decoder_input_ids`` ``[B, T]`` (default: the decoder start token, T = 1)
    over the fused states ``[B, k*L, d]``. Also returns the captured projections of each layer.
    """
    hidden = encoded.last_hidden_state if isinstance(encoded, BaseModelOutput) else encoded
    mods = cross_attentions(model)
    if decoder_input_ids is None:
        start = model.generation_config.decoder_start_token_id
        if start is None:
            start = model.config.decoder_start_token_id
        decoder_input_ids = torch.full((hidden.shape[0], 1), int(start), dtype=torch.long,
                                       device=hidden.device)
    with torch.no_grad(), _Capture(mods, names) as cap:
        model.get_decoder()(input_ids=decoder_input_ids, encoder_hidden_states=hidden,
                            encoder_attention_mask=mask, use_cache=False)
    logits = []
    for m, out in zip(mods, cap.outputs):
        d_kv = m.key_value_proj_dim
        q, k = _heads(out["q"], d_kv), _heads(out["k"], d_kv)  # [B, H, T, d_kv], [B, H, k*L, d_kv]
        logits.append(torch.matmul(q, k.transpose(-1, -2)) * float(getattr(m, "scaling", 1.0)))
    return logits, cap.outputs


def _per_passage(values: torch.Tensor, mask: torch.Tensor, n_passages: int, mean: bool) -> torch.Tensor:
    """Pool token values ``[B, k*L]`` per passage -> ``[B, k]`` (mean or sum over its tokens);
    passages without tokens get -inf."""
    B = mask.shape[0]
    tokens = mask.reshape(B, n_passages, -1).bool()  # [B, k*L] -> [B, k, L]
    values = values.reshape(B, n_passages, -1).masked_fill(~tokens, 0.0)
    count = tokens.sum(-1)
    pooled = values.sum(-1) / count.clamp(min=1) if mean else values.sum(-1)
    return pooled.masked_fill(count == 0, -math.inf)


def passage_scores(model, encoded: BaseModelOutput | torch.Tensor, mask: torch.Tensor, n_passages: int,
                   variant: Variant = "fid", labels: torch.Tensor | None = None,
                   context: torch.Tensor | None = None) -> torch.Tensor:
    """The reader's relevance score of each passage, ``[B, k]`` float32 (see the module docstring).

    Args:
        model: the HF seq2seq reader (``FiDModule.model``), in the mode the caller wants (eval: no
            dropout, no random numbers drawn).
        encoded: the fused encoder states ``[B, k*L, d]`` (``FiDModule.fuse``'s first output).
        mask: their attention mask ``[B, k*L]``.
        n_passages: k.
        variant: fid (first decoded token, pre-softmax, mean over tokens) or atlas (value-norm weighted
            attention of the teacher-forced ``labels``, summed).
        labels: ``[B, T]`` target ids, -100 for padding; atlas and pdist.
        context: pdist only: ``[B, k]`` bool, the passages read together with each scored passage
            (those that hold no profile item, e.g. the separate layout's input passage); their own
            score is computed like any other's (callers drop passages without an item).
    """
    if mask.dim() != 2 or n_passages < 1 or mask.shape[1] % n_passages:
        raise LaMPError(f"passage scores: a mask of shape {tuple(mask.shape)} is not k={n_passages} "
                        f"passages of equal length")
    if variant == "fid":
        logits, _ = cross_attention_logits(model, encoded, mask)
        per_token = torch.stack([x[:, :, 0] for x in logits]).mean(dim=(0, 2))  # [layers, B, H, k*L] -> [B, k*L]
        return _per_passage(per_token, mask, n_passages, mean=True)
    if variant not in VARIANTS:
        raise LaMPError(f"unknown passage score variant {variant!r}; use fid, atlas or pdist")
    if labels is None:
        raise LaMPError(f"the {variant} passage scores need the target labels (teacher forcing)")
    if variant == "pdist":
        return _pdist(model, encoded, mask, n_passages, labels, context)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits, outputs = cross_attention_logits(model, encoded, mask, decoder_ids, names=("q", "k", "v"))
    targets = (labels != -100).float()  # [B, T]
    keep = mask.bool()[:, None, None, :]  # [B, 1, 1, k*L]
    total = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for m, x, out in zip(cross_attentions(model), logits, outputs):
        probs = x.masked_fill(~keep, -math.inf).softmax(-1).nan_to_num(0.0)  # [B, H, T, k*L]
        v_norm = _heads(out["v"], m.key_value_proj_dim).norm(dim=-1)  # [B, H, k*L]
        weighted = probs * v_norm[:, :, None, :] * targets[:, None, :, None]
        total += weighted.sum(dim=2).mean(dim=1)  # over targets, then heads -> [B, k*L]
    return _per_passage(total / len(logits), mask, n_passages, mean=False)


@torch.no_grad()
def _pdist(model, encoded: BaseModelOutput | torch.Tensor, mask: torch.Tensor, n_passages: int,
           labels: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """``[B, k]``: log-likelihood of ``labels`` with the decoder reading passage j (and ``context``)."""
    hidden = encoded.last_hidden_state if isinstance(encoded, BaseModelOutput) else encoded
    B = mask.shape[0]
    tokens = mask.reshape(B, n_passages, -1).bool()  # [B, k*L] -> [B, k, L]
    keep = torch.zeros(B, n_passages, dtype=torch.bool, device=mask.device) if context is None else context.bool()
    if keep.shape != (B, n_passages):
        raise LaMPError(f"pdist: context of shape {tuple(keep.shape)} for {B} examples of {n_passages} passages")
    decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    targets = labels != -100
    states = BaseModelOutput(last_hidden_state=hidden)
    out = torch.empty(B, n_passages, dtype=torch.float32, device=mask.device)
    for j in range(n_passages):
        read = keep.clone()
        read[:, j] = True
        sub = (tokens & read[:, :, None]).reshape(B, -1).to(mask.dtype)  # [B, k*L]
        logits = model(encoder_outputs=states, attention_mask=sub, decoder_input_ids=decoder_ids,
                       use_cache=False).logits.float()  # [B, T, V]
        logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # [B, T]
        out[:, j] = (logp * targets).sum(-1)
    return out.masked_fill(~tokens.any(-1), -math.inf)


def passage_item_ids(items: Sequence[Mapping], mode: str = "fid", layout: str = "official") -> list[str | None]:
    """The profile item id of each passage that ``PromptBuilder.passages`` builds from ``items`` (the
    example's top-k items, best first): None for a passage without an item (the separate layout's input
    passage, the bare input of an empty profile). Only fid passages hold one item each."""
    if mode != "fid":
        raise LaMPError(f"passage scores need mode fid (one item per passage), not {mode!r}")
    ids = [item.get("id") for item in items]
    if not ids:
        return [None]
    return [None, *ids] if layout == "separate" else ids


def scores_by_item(question_ids: Sequence[str], item_ids: Sequence[Sequence[str | None]],
                   scores: torch.Tensor) -> Scores:
    """``{question id: {profile item id: score}}`` for a batch.

    ``item_ids[b][j]`` is the profile item id of passage j of example b, None for a passage that holds
    no item (the separate layout's input passage); passages past ``len(item_ids[b])`` are padding.
    """
    if len(question_ids) != len(item_ids) or len(question_ids) != scores.shape[0]:
        raise LaMPError(f"passage scores: {len(question_ids)} question ids, {len(item_ids)} item id lists "
                        f"and {scores.shape[0]} score rows")
    rows = scores.detach().float().cpu().tolist()
    out: Scores = {}
    for qid, ids, row in zip(question_ids, item_ids, rows):
        if len(ids) > len(row):
            raise LaMPError(f"passage scores: question {qid!r} has {len(ids)} item ids for {len(row)} passages")
        if qid in out:
            raise LaMPError(f"passage scores: question {qid!r} appears twice")
        out[qid] = {}
        for item, score in zip(ids, row):
            if item is None:
                continue
            if item in out[qid]:
                raise LaMPError(f"passage scores: question {qid!r} has profile item {item!r} twice")
            if not math.isfinite(score):
                raise LaMPError(f"passage scores: question {qid!r}, item {item!r}: the passage has no tokens")
            out[qid][item] = score
    return out


def write_scores(path: str | Path, scores: Mapping[str, Mapping[str, float]], *, overwrite: bool = False) -> None:
    """Write ``{question id: {profile item id: score}}`` as JSON, atomically."""
    with atomic_open(path, "w", overwrite=overwrite) as f:
        json.dump(scores, f, allow_nan=False, indent=1)
        f.write("\n")


def _no_duplicates(path: Path):
    """A ``json.load`` hook that refuses an object with a key twice (json keeps the last silently)."""
    def hook(pairs: list) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise LaMPError(f"{path}: the key {key!r} appears twice in one object")
            seen[key] = value
        return seen
    return hook


def read_scores(path: str | Path) -> Scores:
    """Read and check a scores file written by :func:`write_scores`: an object of objects of finite
    numbers, no key twice. A fault is one :class:`LaMPDataError` naming the file, question and item."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_no_duplicates(path))
    except OSError as err:
        raise LaMPError(f"cannot read {path}: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LaMPError(f"{path}: not a JSON scores file ({err})") from None
    if not isinstance(data, dict):
        raise LaMPError(f"{path}: expected a JSON object {{question id: {{item id: score}}}}, "
                        f"got a {type(data).__name__}")
    for qid, items in data.items():
        if not isinstance(items, dict):
            raise LaMPDataError(path, f"expected an object {{item id: score}}, got a {type(items).__name__}",
                                record_id=qid)
        for item, score in items.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise LaMPDataError(path, f"the score {score!r} is not a finite number", record_id=qid,
                                    field=item)
            items[item] = float(score)
    return data
