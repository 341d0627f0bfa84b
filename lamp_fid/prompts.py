"""φp: the official LaMP prompts with their token budget, and the passages FiD/IPA models read.

Everything here is generic over the task table (``lamp_fid.tasks``): a row's ``piece`` template makes
one profile item into text, ``need``/``need_fixed`` is its token overhead, ``reserve``/``reserve_eos``
are taken off the profile budget, and ``prompt`` joins the pieces with the input. The rules of
docs/official_mode.md#phi-p, reproduced exactly (the official prompts, token for token):

* ``tok(s)`` are the tokenizer's ids *with* special tokens (T5 appends ``</s>``), ``|s| = len(tok(s))``;
* profile budget ``B = max_length - min(|input|, int(factor * max_length))``, ``factor = 0.6``;
* per-item budget ``P = (B - reserve_eos - 2*(k-1) - |reserve|) // k`` (``|reserve|`` is 0 without one);
* for each item in rank order: ``n = P + saved - need``; the long field becomes ``cut(field, n)``;
  ``saved += P - len(tok(field) truncated to n) - need`` (a short item leaves budget to the next);
* a negative ``n`` fails the attempt: retry with ``factor -= 0.1`` (B grows); once ``factor < 0`` the
  prompt is the bare input. Unlike the official bare ``except:``, only this budget failure retries.

Items and inputs are trusted: they come from the store, whose reader checked every field the prompt
uses (a missing field or a wrong type is a :class:`~lamp_fid.errors.LaMPDataError` there).

Passage layouts (``mode``/``layout``):

* ``none``: ``[input]``, the non-personalized baseline;
* ``ipa``: ``[φp(input, items)]``, one prompt with all k items (empty profile: ``[input]``);
* ``fid`` + ``official``: ``[φp(input, [item_1]), ..., φp(input, [item_k])]``, the official per-item
  dataset (k = 1 in the budget of each passage; no items: ``[input]``);
* ``fid`` + ``separate`` (not in LaMP; for tiny models trained from scratch, docs/demo.md#separate-layout):
  ``[input, piece(item_1), ..., piece(item_k)]``. The input passage comes first and is the bare input;
  each item passage is the item's φp piece alone (e.g. LaMP_3 ``5 is the score for "<text>" ``),
  its long field cut by the same rule with k = 1 and the whole ``max_length`` as budget
  (no input shares the passage). An item whose overhead alone exceeds ``max_length`` keeps an empty
  long field and counts as a fallback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lamp_fid.data.store import LaMPStore
from lamp_fid.errors import BudgetError, LaMPError
from lamp_fid.io import atomic_open, check_target
from lamp_fid.retrieval.rank import get_rankings
from lamp_fid.setting import Layout, Mode, is_baseline
from lamp_fid.tasks import Task, get_task, resolve_task

FACTOR = 0.6  #: the official share of max_length the input may take from the profile at first
FACTOR_STEP = 0.1  #: the official retry step (repeated float subtraction, exactly as LaMP does it)
JOIN = ", and "  #: pieces are joined with this ...
JOIN_TOKENS = 2  #: ... and the budget counts 2 tokens for each separator
INSERT_AFTER = "after:"  #: prompt template prefix ``after:<marker>:<text>`` (LaMP_1, see compose)
_NEED_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class PromptResult:
    """One built φp prompt.

    ``retries`` counts failed attempts (each lowered the factor by 0.1); ``fallback`` is True when every
    factor failed and ``text`` is the bare input (the official "not possible" case).
    """

    text: str
    retries: int = 0
    fallback: bool = False


@dataclass
class Passages:
    """The passages of one example, in the order the model reads them.

    ``fallbacks`` counts the passages that fell back (bare input, or an item passage without its long
    field); ``retries`` counts failed budget attempts summed over the passages.
    """

    texts: list[str]
    fallbacks: int = 0
    retries: int = 0


def cut(text: str, n: int, tokenizer) -> tuple[str, int]:
    """``cut(s, n)`` (docs/official_mode.md#phi-p-budget): ``tok(s)`` truncated to ``n`` ids, decoded
    without special tokens.

    Returns the text and the number of ids kept (special tokens included). The edge cases are HF's, made
    explicit here so that no transformers version can change them: ``n == 0`` means no truncation at
    all (HF treats ``max_length=0`` as unset), ``n == 1`` keeps only T5's ``</s>`` (empty text), and a
    negative ``n`` raises :class:`BudgetError` (HF raises OverflowError), which starts the retry.
    """
    if n < 0:
        raise BudgetError(f"truncation length {n} < 0: the profile budget is exhausted")
    if n == 0:
        ids = tokenizer(text, verbose=False)["input_ids"]
    else:
        ids = tokenizer(text, max_length=n, truncation=True, verbose=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True), len(ids)


def appended_specials(tokenizer) -> tuple[int, ...] | None:
    """The special ids ``tokenizer`` appends after a text, if that is all it adds (T5: ``(</s>,)``).

    Checked on a probe, truncation included: then ``tok(s)`` truncated to ``n >= len(suffix)`` ids is
    exactly ``content[:n - len(suffix)] + suffix``, and a field tokenized once can be cut at any n
    without tokenizing it again (the official retries cut the same fields at several n). ``None`` for
    any other tokenizer (left truncation, prefixed specials, ...): :func:`cut` then asks HF every time.
    """
    if getattr(tokenizer, "truncation_side", "right") != "right":
        return None
    probe = 'A probe, with "quotes", numbers 12345 and 7 words.'
    try:
        full = tokenizer(probe, verbose=False)["input_ids"]
        content = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
        suffix = tuple(full[len(content):])
        if full[:len(content)] != content:
            return None
        for n in range(max(len(suffix), 1), len(full) + 1):
            ids = tokenizer(probe, max_length=n, truncation=True, verbose=False)["input_ids"]
            if ids != content[:n - len(suffix)] + list(suffix):
                return None
    except Exception:  # a tokenizer this probe cannot handle simply takes the general path
        return None
    return suffix


def compose(template: str, joined: str, inp: str) -> str:
    """Join the pieces with the input by a row's ``prompt`` template.

    A template is either ``str.format`` text over ``{joined}`` and ``{input}`` (e.g.
    ``"{joined}. {input}"``), or ``after:<marker>:<text>``: ``<text>`` (formatted with ``{joined}``) is
    inserted right after the first ``<marker>`` of the input, which is left unchanged without one
    (LaMP_1: ``after:title:, and {joined}``).
    """
    if template.startswith(INSERT_AFTER):
        marker, _, addition = template[len(INSERT_AFTER):].partition(":")
        i = inp.find(marker)
        if i < 0:
            return inp
        i += len(marker)
        return inp[:i] + addition.format(joined=joined) + inp[i:]
    return template.format(joined=joined, input=inp)


class PromptBuilder:
    """Builds φp prompts and passages for one task, tokenizer and ``max_length``.

    Caches the token length of each distinct ``need`` text and of the reserve, and counts retries and
    fallbacks over all calls of this object (``self.fallbacks``, ``self.retries``, ``self.built``; in
    DataLoader workers each process counts its own copy, so per-example counts come back in
    :class:`Passages` too).
    """

    def __init__(self, task: str | Task, tokenizer, max_length: int, mode: Mode = "ipa",
                 layout: Layout = "official"):
        if mode not in ("fid", "ipa", "none"):
            raise LaMPError(f"unknown passage mode {mode!r}; use fid, ipa or none")
        if layout not in ("official", "separate"):
            raise LaMPError(f"unknown passage layout {layout!r}; use official or separate")
        if not isinstance(max_length, int) or max_length <= 0:
            raise LaMPError(f"max_length must be a positive number of tokens, not {max_length!r}")
        self.task = get_task(task)
        self.tokenizer, self.max_length, self.mode, self.layout = tokenizer, max_length, mode, layout
        self.fallbacks = self.retries = self.built = 0
        self._need_cache: dict[str, int] = {}
        self._overhead = int(self.task.reserve_eos) + (self.length(self.task.reserve) if self.task.reserve else 0)
        self._suffix = appended_specials(tokenizer)

    # --- pieces and budget ------------------------------------------------------------------
    def length(self, text: str) -> int:
        """``|text|``: its number of ids with special tokens."""
        return len(self.tokenizer(text, verbose=False)["input_ids"])

    def need(self, item: Mapping) -> int:
        """The per-item overhead: ``|need template formatted with the item|`` or the fixed overhead."""
        t = self.task
        if t.need is None:
            return t.need_fixed
        text = t.need.format_map(item)
        n = self._need_cache.get(text)
        if n is None:
            if len(self._need_cache) >= _NEED_CACHE_SIZE:
                self._need_cache.clear()
            n = self._need_cache[text] = self.length(text)
        return n

    def cut(self, text: str, n: int, memo: dict | None = None) -> tuple[str, int]:
        """:func:`cut` of ``text``; with a T5-like tokenizer it tokenizes ``text`` once per ``memo``."""
        suffix = self._suffix
        if suffix is None or memo is None or 0 < n < len(suffix):
            return cut(text, n, self.tokenizer)
        if n < 0:
            raise BudgetError(f"truncation length {n} < 0: the profile budget is exhausted")
        content = memo.get(text)
        if content is None:
            content = memo[text] = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        ids = (content if n == 0 else content[:n - len(suffix)]) + list(suffix)
        return self.tokenizer.decode(ids, skip_special_tokens=True), len(ids)

    def pieces(self, items: list[Mapping], budget: int, memo: dict | None = None) -> list[str]:
        """The φp pieces of ``items`` (k = len(items) >= 1) within a profile budget of ``budget`` tokens.

        Raises :class:`BudgetError` when an item's truncation length goes negative. ``memo`` (a dict
        kept across the retries of one prompt) holds each long field's ids.
        """
        t = self.task
        k = len(items)
        per_item = (budget - self._overhead - JOIN_TOKENS * (k - 1)) // k
        saved, out = 0, []
        for item in items:
            need = self.need(item)
            text, used = self.cut(item[t.long_field], per_item + saved - need, memo)
            saved += per_item - used - need
            out.append(t.piece.format_map({**item, "cut": text}))
        return out

    # --- prompts and passages ---------------------------------------------------------------
    def build(self, inp: str, items: list[Mapping], input_len: int | None = None) -> PromptResult:
        """φp(inp, items): the official IPA prompt of the given (already ranked and cut to k) items.

        No items: the bare input (the non-personalized prompt; not counted as a fallback).
        ``input_len`` is ``|inp|`` when the caller already knows it (FiD builds k prompts of one input).
        """
        if not items:
            return PromptResult(inp)
        self.built += 1
        if input_len is None:
            input_len = self.length(inp)
        factor, retries, memo, failed = FACTOR, 0, {}, None
        while True:
            budget = self.max_length - min(input_len, int(factor * self.max_length))
            try:
                if budget == failed:  # the same budget fails the same way: skip the work
                    raise BudgetError("same budget as the failed attempt")
                joined = JOIN.join(self.pieces(items, budget, memo))
            except BudgetError:
                failed = budget
                retries += 1
                self.retries += 1
                factor -= FACTOR_STEP
                if factor < 0:
                    self.fallbacks += 1
                    return PromptResult(inp, retries, fallback=True)
                continue
            return PromptResult(compose(self.task.prompt, joined, inp), retries)

    def item_passage(self, item: Mapping) -> tuple[str, bool]:
        """The separate layout's passage of one item: its piece alone, within ``max_length``.

        Returns ``(text, fell_back)``; an item whose overhead exceeds ``max_length`` keeps an empty
        long field.
        """
        try:
            return self.pieces([item], self.max_length, {})[0], False
        except BudgetError:
            self.fallbacks += 1
            return self.task.piece.format_map({**item, "cut": ""}), True

    def passages(self, inp: str, items: list[Mapping]) -> Passages:
        """The passages of one example for this builder's mode and layout (see the module docstring).

        ``items`` are the example's retrieved items, best first, already cut to k.
        """
        if self.mode == "none" or not items:
            return Passages([inp])
        if self.mode == "ipa":
            r = self.build(inp, items)
            return Passages([r.text], int(r.fallback), r.retries)
        if self.layout == "separate":
            built = [self.item_passage(item) for item in items]
            return Passages([inp] + [text for text, _ in built], sum(fb for _, fb in built))
        input_len = self.length(inp)
        results = [self.build(inp, [item], input_len) for item in items]
        return Passages([r.text for r in results], sum(r.fallback for r in results),
                        sum(r.retries for r in results))


def build_prompt(task: str | Task, inp: str, items: list[Mapping], tokenizer,
                 max_length: int) -> PromptResult:
    """φp(inp, items) exactly as the official LaMP code builds it (see the module docstring)."""
    return PromptBuilder(task, tokenizer, max_length).build(inp, items)


def passages(task: str | Task, inp: str, ranked_items: list[Mapping], mode: Mode, tokenizer,
             max_length: int, layout: Layout = "official") -> Passages:
    """The passages of one example: ``none`` -> [input], ``ipa`` -> [φp], ``fid`` -> one per item."""
    return PromptBuilder(task, tokenizer, max_length, mode=mode, layout=layout).passages(inp, ranked_items)


# --- the `lamp-fid prompts` command -----------------------------------------------------------

def _load_tokenizer(name: str):
    # lazy: transformers' auto classes take seconds to import; `lamp-fid prompts --help` imports this module
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise LaMPError(f"cannot load the tokenizer {name!r} (a model name needs the Hugging Face hub or "
                        f"its local cache; a folder needs the tokenizer files): {err}") from None


def prompts(task: str, questions: Path, output: Path, tokenizer: str = "google/flan-t5-base",
            retriever: str = "bm25", k: int = 1, mode: Mode = "ipa", layout: Layout = "official",
            max_length: int = 512, cache_dir: Path | None = None, encoder: str = "facebook/contriever",
            use_date: bool = False, seed: int = 0, overwrite: bool = False,
            limit: int | None = None) -> None:
    """Write the exact passages the model reads: one JSON line {"id", "passages": [...]} per example.

    Rankings come from the ranking cache (computed once if missing, as `lamp-fid rank` does). Prints
    how many prompts fell back to the bare input because no budget factor fitted (official behaviour).

    Args:
        task: LaMP task (LaMP_1 .. LaMP_7; LaMP_2N is the deprecated news task; LaMP-3 spelling works).
        questions: the *_questions.json file.
        output: the JSON-lines file to write.
        tokenizer: the generator's tokenizer (an HF name or a local folder): it measures the token budget.
        retriever: bm25 (official), dense, recency, random or none (no profile).
        k: number of retrieved profile items per example (fewer if the profile is shorter).
        mode: ipa (one prompt with all k items), fid (one passage per item) or none (the bare input).
        layout: fid passages: official (each passage = the official prompt of one item) or separate
            (the bare input first, then each item's piece alone; for tiny models trained from scratch).
        max_length: the model's input length in tokens (the paper uses 512, the official script 256).
        cache_dir: lamp-fid's cache folder for parsed files and rankings (default: $LAMP_FID_CACHE, else
            ~/.cache/lamp-fid).
        encoder: dense retriever: an HF encoder name or local folder.
        use_date: append " date: <date>" to each item text before ranking (bm25, dense).
        seed: random retriever: the seed (with the question id) of each permutation.
        overwrite: replace --output if it exists (otherwise an existing file is an error).
        limit: write only the first N examples.
    """
    task_row = resolve_task(task)
    output = check_target(output, overwrite=overwrite)
    if not Path(questions).is_file():
        raise LaMPError(f"{questions}: no such file")
    if k < 0:
        raise LaMPError(f"k must be >= 0, got {k}")
    if limit is not None and limit < 0:
        raise LaMPError(f"limit must be >= 0, got {limit}")
    builder = PromptBuilder(task_row, _load_tokenizer(tokenizer), max_length, mode=mode, layout=layout)
    personal = not is_baseline(mode, retriever, k)
    store = LaMPStore.open(builder.task, questions, None, cache_dir=cache_dir,
                           check_dates=retriever == "recency" and personal)
    rankings = None
    if personal:
        rankings = get_rankings(store, retriever, cache_dir=cache_dir, use_date=use_date, encoder=encoder,
                                seed=seed)
    total = len(store) if limit is None else min(limit, len(store))
    written = fallbacks = retries = 0
    with atomic_open(output, "w", overwrite=overwrite) as f:
        for example in tqdm(store, total=total, desc=f"prompts {builder.task.name}", unit="ex"):
            if written >= total:
                break
            items = []
            if rankings is not None:
                items = [example.profile[int(p)] for p in rankings[example.id][:k]]
            built = builder.passages(example.input, items)
            fallbacks += built.fallbacks
            retries += built.retries
            f.write(json.dumps({"id": example.id, "passages": built.texts}, ensure_ascii=False) + "\n")
            written += 1
    print(f"wrote {written} examples to {output}; budget fallbacks: {fallbacks} "
          f"(bare input instead of a personalized prompt), retries with a smaller input share: {retries}")
