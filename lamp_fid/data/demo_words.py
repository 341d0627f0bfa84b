"""A generated task where words mislead: the useful profile items share meaning with the input but no
content words, and other profile items share its words but not its meaning.

LaMP_2 format (movie tagging), from the demo's generator family (:mod:`lamp_fid.data.demo`): the same
five themes with three tags each, users who watch two or three themes and have one personal tag per
theme, the same sentence templates, roles and places. What differs: every theme has **two disjoint
vocabularies**, one that questions' descriptions use and one that profile items' descriptions use, so
a question of theme t and the user's movies of theme t (the items whose tags tell the answer) share no
content word. And the profile **misleads**: each user's themes are put in a cycle, and a profile item of
theme t' carries, with probability ``decoy_p``, two words of the *question* vocabulary of the next theme
in the cycle. For a question of theme t, BM25 (word overlap) therefore prefers the user's movies of
another theme, whose tags are of the wrong theme; only a retriever that learned that the two
vocabularies of a theme mean the same thing finds the useful items.

Tags (``tags``): ``theme`` (as the demo's LaMP_2: each user's personal tag of a theme is one of that
theme's three) or ``any`` (one of all 15 tags, a different one per theme of the user): then a tag says
nothing about its theme, and a reader can only answer by finding the items of the question's theme by
their content, so that its attention, the score distilled into the retriever, has to pick them.

The generator knows which items carry the signal: a question's **useful items** are the user's profile
items of the question's theme. They are written to ``useful_items.json`` (``{question id: [item ids]}``)
next to each split's files, for recall@k.

Also here: the demo's small dense encoder (:func:`build_demo_encoder`), a randomly initialised
BERT-style model over the demo's word-level tokenizer (mean pooling as the dense retriever does); the
distillation demo trains it from the reader's scores.
"""

from __future__ import annotations

import datetime as _dt
import random
from pathlib import Path


from lamp_fid.data.demo import _THEME_WORD_P, _THEMES, _tagging_user, _write_json
from lamp_fid.data.paths import split_paths
from lamp_fid.errors import LaMPError
from lamp_fid.tasks import INSTRUCTIONS, get_task

TASK = "LaMP_2"
USEFUL_FILE = "useful_items.json"  #: per split, beside its questions file: {question id: [item ids]}
FORMAT_VERSION = 1  # bump when the generated content changes

# Per theme (in the order of the demo's _THEMES): the words questions use, and the disjoint words the
# profile's items use for the same theme.
_INPUT_WORDS = (
    "rocket orbit cosmos starship asteroid cyborg satellite meteor".split(),
    "laughs banter gags wedding flirting mischief silly sitcom".split(),
    "pistol pursuit cops mob robbery shootout sheriff vengeance".split(),
    "battle monarch dynasty archive chronicle emperor throne biography".split(),
    "psyche nightmare trauma psychiatrist amnesia hypnosis election asylum".split(),
)
_PROFILE_WORDS = (
    "spacecraft nebula droid martian interstellar lightsaber telescope moonbase".split(),
    "punchline prankster slapstick honeymoon bachelor giggles parody romcom".split(),
    "revolver getaway detectives cartel hostage ambush gangster vendetta".split(),
    "warfare kingdom ancestry manuscript medieval pharaoh crown diary".split(),
    "subconscious delusion therapist phobia hallucination ideology protest inmate".split(),
)
_ROLES = "man woman girl boy teacher student couple father mother stranger nurse pilot".split()
_PLACES = "town city house island school farm hotel valley harbor forest".split()
_TEMPLATES = (
    "a {r} in a {s} : {c0} , {c1} , {c2} and {c3} .",
    "a {r} , a {s} and {c0} , {c1} , {c2} and {c3} .",
)
_HABIT_P = 0.9  # a user tags a movie with their personal tag for its theme (as the demo's LaMP_2)
DECOY_P = 0.5  #: default share of profile items that carry two words of another theme's question words
_DECOY_WORDS = 2


def _text(rng: random.Random, words: list[str]) -> str:
    c = {f"c{i}": w for i, w in enumerate(words)}
    return rng.choice(_TEMPLATES).format(r=rng.choice(_ROLES), s=rng.choice(_PLACES), **c)


def _question(rng: random.Random, theme: int) -> str:
    """A description in the question vocabulary: each content word from the theme with probability
    ``_THEME_WORD_P``, else from a random theme (as the demo's LaMP_2)."""
    return _text(rng, [rng.choice(_INPUT_WORDS[theme if rng.random() < _THEME_WORD_P
                                               else rng.randrange(len(_THEMES))]) for _ in range(4)])


def _item(rng: random.Random, theme: int, decoy: int | None, decoy_p: float) -> str:
    """A description in the profile vocabulary of ``theme``; with probability ``decoy_p`` two of its
    four content words are question words of theme ``decoy``."""
    words = [rng.choice(_PROFILE_WORDS[theme]) for _ in range(4)]
    if decoy is not None and rng.random() < decoy_p:
        for slot in rng.sample(range(4), _DECOY_WORDS):
            words[slot] = rng.choice(_INPUT_WORDS[decoy])
    return _text(rng, words)


def _tag(rng: random.Random, habits: dict[int, str], theme: int, tags: str) -> str:
    if rng.random() < _HABIT_P:
        return habits[theme]
    return rng.choice(_THEMES[theme][0] if tags == "theme" else get_task(TASK).labels)


def _user(rng: random.Random, tags: str) -> dict[int, str]:
    """Theme -> the user's personal tag: one of the theme's three (``theme``), or any of the 15, a
    different one per theme (``any``: the tag then tells nothing about the theme)."""
    habits = _tagging_user(rng)
    if tags == "any":
        habits = dict(zip(habits, rng.sample(get_task(TASK).labels, len(habits))))
    return habits


def _split(rng: random.Random, users: range, per_user: int, profile_size: tuple[int, int],
           decoy_p: float, tags: str) -> tuple[list, list, dict]:
    template, task = INSTRUCTIONS[TASK], get_task(TASK)
    labels = ", ".join(task.labels)
    questions, golds, useful = [], [], {}
    for u in users:
        habits = _user(rng, tags)
        cycle = sorted(habits)
        rng.shuffle(cycle)
        decoy_of = {t: cycle[(i + 1) % len(cycle)] for i, t in enumerate(cycle)}  # never t itself
        day = _dt.date(2012, 1, 1).toordinal() + rng.randrange(1000)
        profile, theme_of = [], {}
        size = rng.randint(*profile_size)
        themes = [cycle[j % len(cycle)] for j in range(size)]  # every theme of the user, evenly
        rng.shuffle(themes)
        for j, theme in enumerate(themes):
            day += rng.randint(1, 40)
            item_id = f"{task.number}{u:05d}{j:03d}"
            theme_of[item_id] = theme
            profile.append({"id": item_id, "description": _item(rng, theme, decoy_of[theme], decoy_p),
                            "tag": _tag(rng, habits, theme, tags), "date": _dt.date.fromordinal(day).isoformat()})
        for q in range(per_user):
            theme = rng.choice(cycle)
            qid = f"{task.number}{u:05d}{q:02d}"
            questions.append({"id": qid, "input": template.format(labels=labels, text=_question(rng, theme)),
                              "profile": profile})
            golds.append({"id": qid, "output": _tag(rng, habits, theme, tags)})
            useful[qid] = [i for i, t in theme_of.items() if t == theme]
    return questions, golds, useful


def useful_path(data_dir: Path, split: str) -> Path:
    """``useful_items.json`` of a split: beside its questions file."""
    return split_paths(Path(data_dir), TASK, split)[0].parent / USEFUL_FILE


def generate_words_data(data_dir: Path, seed: int = 0, n_train_users: int = 200, n_dev_users: int = 50,
                        train_questions_per_user: int = 15, dev_questions_per_user: int = 8,
                        profile_size: tuple[int, int] = (10, 30), decoy_p: float = DECOY_P,
                        tags: str = "theme") -> list[Path]:
    """Write the train and dev files of the words-mislead task (LaMP_2 format) under ``data_dir`` (the
    LaMP root: ``<data_dir>/LaMP_2/new/<split>/``), each split with its ``useful_items.json``.

    Users ``0..n_train_users-1`` are train users, the next ``n_dev_users`` dev users. Deterministic in
    ``seed`` (and the other arguments). ``decoy_p``: share of profile items carrying two question words
    of another theme; ``tags``: theme or any (see the module docstring). Returns the written paths.
    """
    if max(train_questions_per_user, dev_questions_per_user) > 99 or profile_size[1] > 999:
        raise LaMPError("demo ids have room for at most 99 questions and 999 profile items per user")
    if tags not in ("theme", "any"):
        raise LaMPError(f"tags {tags!r}: use theme (a theme's own three tags) or any (any of the 15)")
    if not 0 <= decoy_p <= 1:
        raise LaMPError(f"decoy_p must be in [0, 1], got {decoy_p}")
    if not 3 <= profile_size[0] <= profile_size[1]:
        raise LaMPError(f"profile_size {profile_size}: give (min, max) with 3 <= min <= max (every user "
                        "theme needs an item)")
    rng = random.Random(f"lamp-fid-demo-words:{seed}")
    splits = {"train": (range(n_train_users), train_questions_per_user),
              "dev": (range(n_train_users, n_train_users + n_dev_users), dev_questions_per_user)}
    written = []
    for split, (users, per_user) in splits.items():
        questions, golds, useful = _split(rng, users, per_user, profile_size, decoy_p, tags)
        q_path, o_path = split_paths(Path(data_dir), TASK, split)
        _write_json(q_path, questions)
        _write_json(o_path, {"task": get_task(TASK).official_name, "golds": golds})
        _write_json(useful_path(data_dir, split), useful)
        written += [q_path, o_path, useful_path(data_dir, split)]
    return written


# --- the demo's dense encoder ---------------------------------------------------------------------

#: the demo encoder's size: a BERT-style model small enough to distill in a minute on 2 CPU cores
DEMO_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def build_demo_encoder(tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0,
                       **sizes) -> Path:
    """A randomly initialised BERT-style encoder over the tokenizer in ``tokenizer_dir`` (the demo's
    word-level one), saved with that tokenizer in ``out_dir`` as an HF folder that ``--data.retriever
    dense --data.encoder <out_dir>`` loads (mean pooling, dot product). ``sizes`` override
    :data:`DEMO_ENCODER`. The same builder as the PPlug demo's user encoder
    (:func:`lamp_fid.data.demo.build_user_encoder`, before its pretraining). Returns ``out_dir``."""
    from lamp_fid.data.demo import build_user_encoder

    return build_user_encoder(str(tokenizer_dir), Path(out_dir), seed=seed, **{**DEMO_ENCODER, **sizes})
