"""The LaMP task table: every task is one row of data, and every stage is written once over it.

A row says how the task's query φq is cut out of the input, what text of a profile item is ranked,
how one item becomes a φp "piece" of the official prompt, how the pieces join the input, which labels
exist, which metrics the official evaluator reports and which of them picks the best checkpoint.
Adding a task means adding one row to ``TASKS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

from lamp_fid.errors import LaMPError

Kind = Literal["classification", "regression", "generation"]


# --- φq: the query made from the input -------------------------------------------------------

@dataclass(frozen=True)
class AfterFirst:
    """φq = everything after the first ``marker`` in the input, stripped (the whole input if absent)."""

    marker: str

    def __call__(self, inp: str) -> str:
        i = inp.find(self.marker)
        return (inp[i + len(self.marker):] if i >= 0 else inp).strip()


def quoted_strings(inp: str) -> list[str]:
    """The double-quoted strings of ``inp``, found by a plain left-to-right toggle on ``"``."""
    out, current, inside = [], [], False
    for ch in inp:
        if ch == '"':
            if inside:
                out.append("".join(current))
                current = []
            inside = not inside
        elif inside:
            current.append(ch)
    return out


def citation_query(inp: str) -> str:
    """LaMP_1 φq: the two candidate reference titles (2nd and 3rd quoted strings) joined by a space."""
    return " ".join(quoted_strings(inp)[1:3])


# --- the text of a profile item that is ranked ------------------------------------------------

@dataclass(frozen=True)
class JoinFields:
    """Item text = the named fields joined by one space (the official corpus makers)."""

    names: tuple[str, ...]

    def __call__(self, item: Mapping) -> str:
        return " ".join(item[n] for n in self.names)


# --- labels -----------------------------------------------------------------------------------

MOVIE_TAGS = (
    "sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy",
    "classic", "psychology", "fantasy", "romance", "thought-provoking", "social commentary",
    "violence", "true story",
)
NEWS_CATEGORIES = (
    "food & drink", "sports", "education", "parents", "religion", "travel", "business", "crime",
    "science & technology", "culture & arts", "entertainment", "politics", "women", "style & beauty",
    "healthy living",
)
CITATION_LABELS = ("[1]", "[2]")
RATING_LABELS = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class Task:
    """One LaMP task as data.

    The φp fields follow docs/official_mode.md#phi-p: ``piece`` is a ``str.format`` template over the item's
    fields in which ``{cut}`` stands for the (budget-truncated) long field; ``need`` is the template
    whose token length is the per-item overhead (``None``: the fixed overhead ``need_fixed``);
    ``prompt`` joins the pieces with the input; ``reserve`` is text whose token length is also taken
    off the profile budget, and ``reserve_eos`` says whether one more token is reserved.
    """

    name: str  #: canonical name, e.g. ``LaMP_3``; the deprecated news task is ``LaMP_2N``
    official_name: str  #: the name in official files (``"task"`` of outputs), e.g. ``LaMP_2``
    title: str
    kind: Kind
    url_path: str  #: path segment under .../downloads/LaMP/ (``LaMP_2/new`` for movies)
    item_fields: tuple[str, ...]  #: fields every profile item must have (besides ``id``)
    query_of: Callable[[str], str]
    item_text: Callable[[Mapping], str]
    long_field: str  #: the field that the token budget truncates
    piece: str
    need: str | None
    prompt: str  #: ``{joined}`` and ``{input}``, or ``after:<marker>:<text>`` (LaMP_1; prompts.compose)
    labels: tuple[str, ...] = ()
    need_fixed: int = 2
    reserve: str = ""
    reserve_eos: bool = True
    metrics: tuple[str, ...] = ()
    monitor: str = ""  #: official metric that picks the best checkpoint
    monitor_mode: Literal["max", "min"] = "max"
    target_field: str = ""  #: the item field that holds the item's own "output", if any
    #: PPlug's text of one history item, as ``str.format`` templates over the item's fields:
    #: ``(with the item's output, without it)``. With: the paper's labelled format (``description: …
    #: tag: …``, ``text: … score: …``; the other tasks label their fields the same way, output last).
    #: Without: the text the released code embeds, which leaves out LaMP_2's tag and LaMP_3's score;
    #: its LaMP_1/4/5 texts keep the title (part of what the user wrote), and so do ours.
    history: tuple[str, str] = ("", "")
    deprecated: bool = False

    @property
    def number(self) -> int:
        return int(re.match(r"LaMP_(\d)", self.name).group(1))

    def label_index(self, text: str) -> int:
        """Official label parsing: exact, case-sensitive match of the stripped text; else -1."""
        try:
            return self.labels.index(text.strip())
        except ValueError:
            return -1


_CLS = ("accuracy", "f1")
_REG = ("MAE", "RMSE")
_GEN = ("rouge-1", "rouge-L")

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="LaMP_1", official_name="LaMP_1", title="citation identification",
            kind="classification", url_path="LaMP_1", item_fields=("title", "abstract"),
            query_of=citation_query, item_text=JoinFields(("title", "abstract")),
            long_field="title", piece='"{cut}"', need=None, need_fixed=2, reserve_eos=False,
            prompt="after:title:, and {joined}", labels=CITATION_LABELS, metrics=_CLS, monitor="accuracy",
            history=("title: {title} abstract: {abstract}", "{title} {abstract}"),
        ),
        Task(
            name="LaMP_2", official_name="LaMP_2", title="movie tagging",
            kind="classification", url_path="LaMP_2/new", item_fields=("description", "tag"),
            query_of=AfterFirst("description:"), item_text=JoinFields(("description",)),
            long_field="description",
            piece='the tag for the movie: "{cut}" is "{tag}" ',
            need='the tag for the movie: " " is "{tag}" ',
            prompt="{joined}. {input}", labels=MOVIE_TAGS, metrics=_CLS, monitor="accuracy",
            target_field="tag",
            history=("description: {description} tag: {tag}", "{description}"),
        ),
        Task(
            name="LaMP_2N", official_name="LaMP_2", title="news categorization (deprecated)",
            kind="classification", url_path="LaMP_2", item_fields=("title", "text", "category"),
            query_of=AfterFirst("article:"), item_text=JoinFields(("title", "text")),
            long_field="text",
            piece='the category for the article: "{cut}" is "{category}" ',
            need='the category for the article: " " is "{category}" ',
            prompt="{joined}. {input}", labels=NEWS_CATEGORIES, metrics=_CLS, monitor="accuracy",
            target_field="category", deprecated=True,
            history=("title: {title} text: {text} category: {category}", "{title} {text}"),
        ),
        Task(
            name="LaMP_3", official_name="LaMP_3", title="product rating",
            kind="regression", url_path="LaMP_3", item_fields=("text", "score"),
            query_of=AfterFirst("review:"), item_text=JoinFields(("text",)),
            long_field="text", piece='{score} is the score for "{cut}" ',
            need='{score} is the score for " " ',
            prompt="{joined}. {input}", labels=RATING_LABELS, metrics=_REG, monitor="MAE",
            monitor_mode="min", target_field="score",
            history=("text: {text} score: {score}", "{text}"),
        ),
        Task(
            name="LaMP_4", official_name="LaMP_4", title="news headline generation",
            kind="generation", url_path="LaMP_4", item_fields=("title", "text"),
            query_of=AfterFirst("article:"), item_text=JoinFields(("title", "text")),
            long_field="text", piece='"{title}" is the title for "{cut}" ',
            need='"{title}" is the title for " " ',
            prompt="{joined}. {input}", metrics=_GEN, monitor="rouge-1", target_field="title",
            history=("text: {text} title: {title}", "{text} {title}"),
        ),
        Task(
            name="LaMP_5", official_name="LaMP_5", title="scholarly title generation",
            kind="generation", url_path="LaMP_5", item_fields=("title", "abstract"),
            query_of=AfterFirst("paper:"), item_text=JoinFields(("title", "abstract")),
            long_field="abstract", piece='"{title}" is a title for "{cut}" ',
            need='"{title}" is a title " " ',  # sic: the official overhead omits "for"
            prompt="{joined}. Following the given patterns {input}",
            reserve="Following the given patterns",
            metrics=_GEN, monitor="rouge-1", target_field="title",
            history=("abstract: {abstract} title: {title}", "{title} {abstract}"),
        ),
        Task(
            name="LaMP_6", official_name="LaMP_6", title="email subject generation",
            kind="generation", url_path="LaMP_6", item_fields=("title", "text"),
            query_of=AfterFirst(":"), item_text=JoinFields(("text",)),
            long_field="text", piece='"{title}" is the title for "{cut}" ',
            need='"{title}" is the title for " " ',
            prompt="{joined}. {input}", metrics=_GEN, monitor="rouge-1", target_field="title",
            history=("text: {text} title: {title}", "{text}"),
        ),
        Task(
            name="LaMP_7", official_name="LaMP_7", title="tweet paraphrasing",
            kind="generation", url_path="LaMP_7", item_fields=("text",),
            query_of=AfterFirst(":"), item_text=JoinFields(("text",)),
            long_field="text", piece='"{cut}" ', need='"" ',
            prompt="{joined} are written by a person. Following the given patterns {input}",
            reserve="are written by user. Following the given patterns",  # sic: "user"
            metrics=_GEN, monitor="rouge-1", target_field="text",
            history=("text: {text}", "{text}"),
        ),
    )
}

#: The official instruction that opens every question's input (docs/official_mode.md#instructions), as a
#: ``str.format`` template over the payload: ``{text}`` and ``{labels}`` (the task's labels joined by
#: ", "); LaMP_1's over the paper's ``{title}`` and its two candidate references ``{ref1}``, ``{ref2}``.
#: φq (``query_of``) finds its marker in these.
INSTRUCTIONS: dict[str, str] = {
    "LaMP_1": ('For an author who has written the paper with the title "{title}", which reference is '
               'related? Just answer with [1] or [2] without explanation. [1]: "{ref1}" [2]: "{ref2}"'),
    "LaMP_2": ("Which tag does this movie relate to among the following tags? Just answer with the tag "
               "name without further explanation. tags: [{labels}] description: {text}"),
    "LaMP_2N": ("Which category does this article relate to among the following categories? Just answer "
                "with the category name without further explanation. categories: [{labels}] "
                "article: {text}"),
    "LaMP_3": ("What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, "
               "4, or 5 without further explanation. review: {text}"),
    "LaMP_4": "Generate a headline for the following article: {text}",
    "LaMP_5": "Generate a title for the following abstract of a paper: {text}",
    "LaMP_6": "Generate a subject for the following email: {text}",
    "LaMP_7": "Paraphrase the following tweet without any explanation before or after it: {text}",
}

_ALIASES = {"LaMP_2_news": "LaMP_2N", "LaMP_2_NEWS": "LaMP_2N", "LaMP_2news": "LaMP_2N"}


def get_task(name: str | Task) -> Task:
    """Look a task up by name; accepts ``LaMP_3``, ``LaMP-3``, ``lamp3``, ``3`` and ``LaMP_2_news``."""
    if isinstance(name, Task):
        return name
    raw = str(name).strip()
    if raw in TASKS:
        return TASKS[raw]
    if raw in _ALIASES:
        return TASKS[_ALIASES[raw]]
    m = re.fullmatch(r"(?i)(?:lamp[-_ ]?)?(\d)(n|[-_ ]?news)?", raw)
    if m:
        key = f"LaMP_{m.group(1)}" + ("N" if m.group(2) else "")
        if key in TASKS:
            return TASKS[key]
    raise ValueError(f"unknown LaMP task {name!r}; known: {', '.join(TASKS)} (LaMP-3 spelling accepted)")


TASK_NAMES = tuple(TASKS)


def resolve_task(task: str | None) -> Task | None:
    """``get_task`` with a one-line ``LaMPError`` for unknown names; ``None`` stays ``None``."""
    if task is None:
        return None
    try:
        return get_task(task)
    except ValueError as err:
        raise LaMPError(str(err)) from None


def task_for(official_name: str, chosen: Task | None = None) -> Task:
    """The task that scores files named ``official_name``: ``chosen`` if it has that official name,
    else the current (non-deprecated) one, so ``LaMP_2`` means movie tagging unless LaMP_2N is chosen."""
    if chosen is not None and chosen.official_name == official_name:
        return chosen
    return next(t for t in TASKS.values() if t.official_name == official_name and not t.deprecated)
