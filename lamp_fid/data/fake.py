"""Fake LaMP data: files in the exact official format, for tests, benchmarks and offline runs.

The text is made of pseudo-words with some structure, so that retrieval and training have signal:
each of ``N_TOPICS`` topics has its own words; a user writes mostly about two topics; a question's
payload comes from one of its user's topics, and its label or output follows that topic (with
noise). Inputs open with the official instruction of the task table (``tasks.INSTRUCTIONS``), so every
task's φq finds its marker.

Generation reuses pre-built sentences and streams record by record, so a LaMP_4-train-sized file
(several GB) is written in minutes with flat memory.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import random
from pathlib import Path
from typing import Iterator

from lamp_fid.data.paths import check_split, split_paths
from lamp_fid.io import atomic_open
from lamp_fid.tasks import INSTRUCTIONS, Task, get_task

N_TOPICS = 12
_SENTENCES_PER_TOPIC = 400
_TITLES_PER_TOPIC = 300
_QUOTED_TITLE_RATE = 0.1  # LaMP_1 titles with a double quote inside (they shift the quote toggle)
_EQUAL_DATE_RATE = 0.15  # items that repeat the previous item's date (recency ties)
_LABEL_NOISE = 0.3

_COMMON = ("the of and a to in is for on with as by at from that this was are be it an or which "
           "has have not but their its we our they new more most also can will into than about").split()
_ODD = ("café", "naïve", "Zürich", "São", "東京", "résumé", "–", "€5", "[sic]", "{draft}", "x]y",
        "a,b", "C:\\temp", "it's", "(e.g.", "100%")
_SYLLABLES = ("ka lo mi ra te su ven dor pa li qua zen bro fi gu han el or is un tri mo sa ne ko "
              "ber vi da ru po").split()


class _Material:
    """Pre-built sentences and titles per topic (fixed, independent of the seed: only sampling varies)."""

    def __init__(self):
        rng = random.Random(20230420)
        words = set()
        while len(words) < N_TOPICS * 80:
            words.add("".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))))
        words = sorted(words)
        rng.shuffle(words)
        self.topic_words = [words[t * 80:(t + 1) * 80] for t in range(N_TOPICS)]
        self.sentences = [[self._sentence(rng, t) for _ in range(_SENTENCES_PER_TOPIC)]
                          for t in range(N_TOPICS)]
        self.mean_sentence_words = (sum(len(s.split()) for ss in self.sentences for s in ss)
                                    / (N_TOPICS * _SENTENCES_PER_TOPIC))
        self.titles = [[self._title(rng, t) for _ in range(_TITLES_PER_TOPIC)] for t in range(N_TOPICS)]

    def _word(self, rng: random.Random, topic: int) -> str:
        r = rng.random()
        if r < 0.4:
            return rng.choice(_COMMON)
        if r < 0.42:
            return rng.choice(_ODD)
        if r < 0.5:  # a little shared vocabulary across topics
            return rng.choice(self.topic_words[rng.randrange(N_TOPICS)])
        return rng.choice(self.topic_words[topic])

    def _sentence(self, rng: random.Random, topic: int) -> str:
        ws = [self._word(rng, topic) for _ in range(rng.randint(5, 15))]
        sep = rng.choice([", ", " "]) if len(ws) > 8 else " "
        cut = len(ws) // 2
        return (" ".join(ws[:cut]).capitalize() + sep + " ".join(ws[cut:]) + rng.choice([".", ".", "!", "?"]))

    def _title(self, rng: random.Random, topic: int) -> str:
        ws = [rng.choice(self.topic_words[topic]) if rng.random() < 0.7 else rng.choice(_COMMON)
              for _ in range(rng.randint(3, 10))]
        return " ".join(w.capitalize() if i == 0 or len(w) > 3 else w for i, w in enumerate(ws))


@functools.lru_cache(maxsize=1)
def _material() -> _Material:
    return _Material()


class _Generator:
    """Draws the fields of one task's records from the pre-built material."""

    def __init__(self, task: Task, rng: random.Random, words: tuple[int, int], with_dates: bool):
        self.task, self.rng, self.words, self.with_dates = task, rng, words, with_dates
        self.m = _material()
        self.item_counter = 0
        self.day = _dt.date(2015, 1, 1).toordinal()

    def text(self, topic: int) -> str:
        target = self.rng.randint(*self.words)
        k = max(1, round(target / self.m.mean_sentence_words))
        return " ".join(self.rng.choices(self.m.sentences[topic], k=k))

    def title(self, topic: int) -> str:
        title = self.rng.choice(self.m.titles[topic])
        if self.task.name == "LaMP_1" and self.rng.random() < _QUOTED_TITLE_RATE:
            w = title.split()
            i = self.rng.randrange(len(w))
            w[i] = f'"{w[i]}"' if self.rng.random() < 0.7 else w[i] + '"'  # paired or a lone quote
            title = " ".join(w)
        return title

    def label(self, topic: int) -> str:
        labels = self.task.labels
        if self.rng.random() < _LABEL_NOISE:
            return self.rng.choice(labels)
        return labels[topic % len(labels)]

    def field(self, name: str, topic: int) -> str:
        """A value for an item field: labels for the task's labelled target, short titles, else text."""
        if name == self.task.target_field and self.task.labels:
            return self.label(topic)
        if name == "title":
            return self.title(topic)
        return self.text(topic)

    def date(self, previous: str | None) -> str:
        if previous is not None and self.rng.random() < _EQUAL_DATE_RATE:
            return previous
        return _dt.date.fromordinal(self.day + self.rng.randrange(3 * 365)).isoformat()

    def items(self, n: int, topics: tuple[int, ...]) -> list[dict]:
        out, previous = [], None
        for _ in range(n):
            topic = topics[0] if self.rng.random() < 0.5 else self.rng.choice(topics)
            self.item_counter += 1
            item = {"id": str(10_000_000 + self.item_counter)}
            for name in self.task.item_fields:
                item[name] = self.field(name, topic)
            if self.with_dates:
                previous = item["date"] = self.date(previous)
            out.append(item)
        return out

    def input_and_output(self, topic: int) -> tuple[str, str]:
        """The question's input (official instruction + payload) and its gold output."""
        template = INSTRUCTIONS[self.task.name]
        if self.task.name == "LaMP_1":  # the only task whose payload is three titles
            other = (topic + 1 + self.rng.randrange(N_TOPICS - 1)) % N_TOPICS
            refs = [self.title(topic), self.title(other)]
            correct = self.rng.randrange(2)
            if correct:
                refs.reverse()
            out = self.task.labels[correct]
            return template.format(title=self.title(topic), ref1=refs[0], ref2=refs[1]), out
        inp = template.format(labels=", ".join(self.task.labels), text=self.text(topic))
        if self.task.labels:
            return inp, self.label(topic)
        return inp, self.field(self.task.target_field, topic)


def fake_examples(task: str | Task, n_questions: int, *, profile_size: tuple[int, int] = (2, 8),
                  words: tuple[int, int] = (10, 40), seed: int | str = 0, with_dates: bool = True,
                  questions_per_user: int = 1, user_ids: bool = False,
                  first_id: int = 100) -> Iterator[tuple[dict, str]]:
    """Yield ``(question, output)`` pairs in the official format of ``task``.

    ``question`` is the record of ``{split}_questions.json`` (``id``, ``input``, ``profile`` and, with
    ``user_ids``, ``user_id`` as in the time-based split); ``output`` is the gold string for
    ``{split}_outputs.json``. Profile sizes are drawn from ``profile_size`` (inclusive), long text
    fields have about ``words`` words (inclusive range). With ``questions_per_user > 1`` consecutive
    questions belong to one user and share most of their profile items (same ids and content).
    Question ids are ``str(first_id + i)``.
    """
    task = get_task(task)
    rng = random.Random(f"{task.name}:{seed}")
    gen = _Generator(task, rng, words, with_dates)
    lo, hi = profile_size
    qpu = max(1, int(questions_per_user))
    i, user = 0, 0
    while i < n_questions:
        topics = tuple(rng.sample(range(N_TOPICS), 2))
        pool = gen.items(rng.randint(lo, hi), topics)
        for _ in range(min(qpu, n_questions - i)):
            if qpu == 1:
                profile = pool
            else:  # drop a few of the user's items, keep the rest in order
                keep = len(pool) - rng.randint(0, len(pool) // 8)
                profile = [pool[j] for j in sorted(rng.sample(range(len(pool)), keep))]
            inp, output = gen.input_and_output(rng.choice(topics))
            question = {"id": str(first_id + i), "input": inp, "profile": profile}
            if user_ids:
                question["user_id"] = str(user)
            yield question, output
            i += 1
        user += 1


def write_fake_split(data_dir: str | Path, task: str | Task, split: str, n_questions: int, *,
                     time_split: bool = False, seed: int | str = 0, **options) -> tuple[Path, Path | None]:
    """Write a fake ``split`` of ``task`` under ``data_dir`` in the downloader's layout.

    Streams record by record (memory stays flat whatever the size) through :func:`lamp_fid.io.atomic_open`,
    replacing existing files (fake data is regenerated at will). The test split gets no outputs file;
    the time split carries ``user_id``.
    ``options`` go to :func:`fake_examples` (``profile_size``, ``words``, ``with_dates``,
    ``questions_per_user``, ``first_id``). Returns ``(questions_path, outputs_path or None)``.
    """
    task = get_task(task)
    check_split(split)
    q_path, o_path = split_paths(data_dir, task, split, time_split)
    records = fake_examples(task, n_questions, seed=f"{seed}:{split}", user_ids=time_split, **options)
    with contextlib.ExitStack() as files:  # on leaving, the outputs file appears first, then the questions
        qf = files.enter_context(atomic_open(q_path, overwrite=True))
        of = files.enter_context(atomic_open(o_path, overwrite=True) if o_path else open(os.devnull, "w"))
        qf.write("[")
        of.write('{"task": %s, "golds": [' % json.dumps(task.official_name))
        for n, (question, output) in enumerate(records):
            sep = ",\n" if n else "\n"
            qf.write(sep + json.dumps(question))
            of.write(sep + json.dumps({"id": question["id"], "output": output}))
        qf.write("\n]\n")
        of.write("\n]}\n")
    return q_path, o_path
