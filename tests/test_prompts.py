"""φp prompts and passages, checked against examples worked out by hand from docs/official_mode.md#phi-p.

Two tokenizers: a word-level one built here (one id per whitespace-separated word, plus T5's closing
``</s>``: ``|s| = len(s.split()) + 1``, so every count can be checked by eye) and, when the assets are
beside the repository, the real Flan-T5 tokenizer.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from lamp_fid.errors import BudgetError
from lamp_fid.prompts import (PromptBuilder, Passages, appended_specials, build_prompt, compose, cut,
                              passages)

T5_DIR = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"

LETTERS = "a b c d e f g h i j k l m n o p q r s t"  # 20 words: 21 ids
INP = "rate : u v w x y z"  # 8 words: 9 ids
INP1 = 'with the title "x" [1]: "p" [2]: "q"'  # LaMP_1-like, 8 words: 9 ids
WORDS = LETTERS.split() + ["The", '"best"', "one", "two", "three", "four", "five"]


@pytest.fixture(scope="module")
def wl():
    """Word-level tokenizer: pad=0, eos=1 appended as T5 does, words outside WORDS are <unk> (2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def wl_bos():
    """As ``wl`` but adding <s> first too (as BART does): not T5-like, so every cut asks HF."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", 3), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")


@pytest.fixture(scope="module")
def t5():
    if not T5_DIR.is_dir():
        pytest.skip(f"Flan-T5 tokenizer assets not found at {T5_DIR}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(T5_DIR))


def n_ids(tok, s: str) -> int:
    return len(tok(s)["input_ids"])


# --- cut(s, n) --------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["wl", "t5"])
def test_cut_edge_cases(which, request):
    tok = request.getfixturevalue(which)
    text = "one two three four five"  # one id per word in both tokenizers, then </s>
    assert n_ids(tok, text) == 6
    assert cut(text, 0, tok) == (text, 6)  # max_length=0 counts as unset: the whole field
    assert cut(text, 1, tok) == ("", 1)  # only </s> is kept
    assert cut(text, 3, tok) == ("one two", 3)
    assert cut(text, 6, tok) == (text, 6)
    assert cut(text, 50, tok) == (text, 6)
    with pytest.raises(BudgetError):
        cut(text, -1, tok)


def test_cut_agrees_with_hf_truncation_for_positive_n(t5):
    text = 'A "quoted" phrase, with punctuation; and numbers 12345.'
    for n in range(1, n_ids(t5, text) + 2):
        ids = t5(text, max_length=n, truncation=True)["input_ids"]
        assert cut(text, n, t5) == (t5.decode(ids, skip_special_tokens=True), len(ids))


# --- one hand-worked prompt per task, word-level tokenizer ------------------------------------
# max_length 30, |input| = 9 <= int(0.6 * 30) = 18, so B = 30 - 9 = 21; k = 1 (no separators);
# the long field is LETTERS (20 words); n = P - need, and cut keeps n - 1 words.
WL_CASES = [
    # LaMP_1: P = 21 (no </s> reserve), need = 2 -> n = 19 -> 18 words, inserted after "title"
    ("LaMP_1", INP1, {"title": LETTERS, "abstract": "z"},
     'with the title, and "a b c d e f g h i j k l m n o p q r" "x" [1]: "p" [2]: "q"'),
    # LaMP_2: P = 20; need = |the tag for the movie: " " is "comedy"| = 9 + 1 -> n = 10 -> 9 words
    ("LaMP_2", INP, {"description": LETTERS, "tag": "comedy"},
     'the tag for the movie: "a b c d e f g h i" is "comedy" . ' + INP),
    # LaMP_2N: P = 20; need = |the category for the article: " " is "sports"| = 10 -> 9 words
    ("LaMP_2N", INP, {"title": "t", "text": LETTERS, "category": "sports"},
     'the category for the article: "a b c d e f g h i" is "sports" . ' + INP),
    # LaMP_3: P = 20; need = |5 is the score for " "| = 7 + 1 -> n = 12 -> 11 words
    ("LaMP_3", INP, {"text": LETTERS, "score": "5"},
     '5 is the score for "a b c d e f g h i j k" . ' + INP),
    # LaMP_4: P = 20; need = |"big news" is the title for " "| = 8 + 1 -> n = 11 -> 10 words
    ("LaMP_4", INP, {"title": "big news", "text": LETTERS},
     '"big news" is the title for "a b c d e f g h i j" . ' + INP),
    # LaMP_5: |Following the given patterns| = 5, P = 21 - 1 - 5 = 15;
    #   need = |"big news" is a title " "| = 7 + 1 (sic: no "for") -> n = 7 -> 6 words
    ("LaMP_5", INP, {"title": "big news", "abstract": LETTERS},
     '"big news" is a title for "a b c d e f" . Following the given patterns ' + INP),
    # LaMP_6: as LaMP_4
    ("LaMP_6", INP, {"title": "see you", "text": LETTERS},
     '"see you" is the title for "a b c d e f g h i j" . ' + INP),
    # LaMP_7: |are written by user. Following the given patterns| = 9, P = 21 - 1 - 9 = 11;
    #   need = |""| = 2 -> n = 9 -> 8 words
    ("LaMP_7", INP, {"text": LETTERS},
     '"a b c d e f g h"  are written by a person. Following the given patterns ' + INP),
]


@pytest.mark.parametrize("task,inp,item,expected", WL_CASES, ids=[c[0] for c in WL_CASES])
def test_hand_worked_prompt_word_level(task, inp, item, expected, wl):
    assert n_ids(wl, inp) == 9
    result = build_prompt(task, inp, [item], wl, 30)
    assert (result.text, result.retries, result.fallback) == (expected, 0, False)


# --- the same with the real Flan-T5 tokenizer --------------------------------------------------
NUMS = "one two three four five six seven eight nine"  # 9 single-token words: 10 ids in T5
T5_INPUTS = {
    "LaMP_1": ('For an author who has written the paper with the title "Deep trees", which reference is '
               'related? Just answer with [1] or [2] without explanation. [1]: "Tall trees" '
               '[2]: "Small fish"'),
    "LaMP_2": ("Which tag does this movie relate to among the following tags? Just answer with the tag name "
               "without further explanation. tags: [sci-fi, comedy] description: a man on mars"),
    "LaMP_2N": ("Which category does this article relate to among the following categories? Just answer "
                "with the category name without further explanation. categories: [sports, travel] "
                "article: a goal"),
    "LaMP_3": ("What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, "
               "4, or 5 without further explanation. review: bad food"),
    "LaMP_4": "Generate a headline for the following article: war in the city",
    "LaMP_5": "Generate a title for the following abstract of a paper: we study trees",
    "LaMP_6": "Generate a subject for the following email: see you at noon",
    "LaMP_7": "Paraphrase the following tweet without any explanation before or after it: i love tea",
}
# (task, max_length, |input|, items, {need text: |need|} or reserve lengths, expected without the input)
T5_CASES = [
    # |input| = 55 > int(0.6*60) = 36 -> B = 24; k = 2: P = (24 - 2) // 2 = 11; need 2 each.
    # item 1: n = 9 keeps 8 words (9 ids), saved = 11 - 9 - 2 = 0; item 2: n = 9, "red green" whole.
    ("LaMP_1", 60, 55, [{"title": NUMS, "abstract": "x"}, {"title": "red green", "abstract": "y"}], {},
     None),
    # |input| = 42 > 30 -> B = 20, P = 19, need 13 -> n = 6 -> 5 words
    ("LaMP_2", 50, 42, [{"description": NUMS, "tag": "action"}],
     {'the tag for the movie: " " is "action" ': 13},
     'the tag for the movie: "one two three four five" is "action" . '),
    # |input| = 36 > 30 -> B = 20, P = 19, need 14 ("sports" is 2 pieces) -> n = 5 -> 4 words
    ("LaMP_2N", 50, 36, [{"title": "t", "text": NUMS, "category": "sports"}],
     {'the category for the article: " " is "sports" ': 14},
     'the category for the article: "one two three four" is "sports" . '),
    # |input| = 35 <= 36 -> B = 60 - 35 = 25; k = 2: P = (25 - 1 - 2) // 2 = 11; need 8 each.
    # item 1: n = 3, "red" is 2 ids -> saved = 11 - 2 - 8 = 1; item 2: n = 11 + 1 - 8 = 4 -> 3 words.
    ("LaMP_3", 60, 35, [{"text": "red", "score": "4"}, {"text": NUMS, "score": "2"}],
     {'4 is the score for " " ': 8, '2 is the score for " " ': 8},
     '4 is the score for "red" , and 2 is the score for "one two three" . '),
    # |input| = 15 <= int(0.6*30) = 18 -> B = 15, P = 14, need 11 -> n = 3 -> 2 words
    ("LaMP_4", 30, 15, [{"title": "Big news", "text": NUMS}],
     {'"Big news" is the title for " " ': 11},
     '"Big news" is the title for "one two" . '),
    # |input| = 18 <= 24 -> B = 22; |Following the given patterns| = 5 -> P = 22 - 1 - 5 = 16;
    # need = |"Big news" is a title " "| = 11 -> n = 5 -> 4 words
    ("LaMP_5", 40, 18, [{"title": "Big news", "abstract": NUMS}],
     {'"Big news" is a title " " ': 11, "Following the given patterns": 5},
     '"Big news" is a title for "one two three four" . Following the given patterns '),
    ("LaMP_6", 30, 15, [{"title": "Big news", "text": NUMS}],
     {'"Big news" is the title for " " ': 11},
     '"Big news" is the title for "one two" . '),
    # |input| = 18 -> B = 22; |are written by user. Following the given patterns| = 10 -> P = 11;
    # need = |""| = 3 -> n = 8 -> 7 words
    ("LaMP_7", 40, 18, [{"text": NUMS}],
     {'"" ': 3, "are written by user. Following the given patterns": 10},
     '"one two three four five six seven"  are written by a person. Following the given patterns '),
]


@pytest.mark.parametrize("task,max_length,input_len,items,lengths,expected", T5_CASES,
                         ids=[c[0] for c in T5_CASES])
def test_hand_worked_prompt_flan_t5(task, max_length, input_len, items, lengths, expected, t5):
    inp = T5_INPUTS[task]
    assert n_ids(t5, inp) == input_len
    assert n_ids(t5, NUMS) == 10
    for text, length in lengths.items():
        assert n_ids(t5, text) == length, text
    if task == "LaMP_1":  # inserted right after the first "title" of the input
        at = inp.index("title") + len("title")
        expected = inp[:at] + ', and "one two three four five six seven eight", and "red green"' + inp[at:]
    else:
        expected += inp
    result = build_prompt(task, inp, items, t5, max_length)
    assert (result.text, result.retries, result.fallback) == (expected, 0, False)


def test_lamp1_title_with_quotes_flan_t5(t5):
    inp = T5_INPUTS["LaMP_1"]
    result = build_prompt("LaMP_1", inp, [{"title": 'The "best" one', "abstract": ""}], t5, 512)
    assert result.text == inp.replace("the title", 'the title, and "The "best" one"', 1)


# --- the budget rule, word-level tokenizer (LaMP_3: need = 8, one reserved </s>) --------------

def lamp3(text: str, score: str = "5") -> dict:
    return {"id": f"p{score}", "text": text, "score": score}


def test_short_item_leaves_budget_to_the_next(wl):
    # B = 40 - 9 = 31; P = (31 - 1 - 2) // 2 = 14. "a b" costs 3 ids at n = 6: saved = 14 - 3 - 8 = 3,
    # so item 2 gets n = 14 + 3 - 8 = 9 -> 8 words (5 words without the carry-over).
    r = build_prompt("LaMP_3", INP, [lamp3("a b"), lamp3(LETTERS, "2")], wl, 40)
    assert r.text == '5 is the score for "a b" , and 2 is the score for "a b c d e f g h" . ' + INP
    # long item first: n = 6 -> 5 words, 6 ids, saved = 0; the short one fits whole
    r = build_prompt("LaMP_3", INP, [lamp3(LETTERS, "2"), lamp3("a b")], wl, 40)
    assert r.text == '2 is the score for "a b c d e" , and 5 is the score for "a b" . ' + INP


def test_n_zero_keeps_the_whole_field(wl):
    # M = 18: int(10.8) = 10 >= 9 -> B = 9, P = 8 = need -> n = 0: no truncation at all
    r = build_prompt("LaMP_3", INP, [lamp3(LETTERS)], wl, 18)
    assert (r.text, r.retries) == (f'5 is the score for "{LETTERS}" . {INP}', 0)


def test_n_one_keeps_only_eos(wl):
    # M = 19: int(11.4) = 11 -> B = 10, P = 9 -> n = 1: only </s>, the field becomes empty
    r = build_prompt("LaMP_3", INP, [lamp3(LETTERS)], wl, 19)
    assert (r.text, r.retries) == ('5 is the score for "" . ' + INP, 0)


def test_n_zero_overdraws_the_budget_and_forces_a_retry(wl):
    # M = 28, k = 2. factor .6/.5/.4: B = 28 - 9 = 19, P = (19 - 3) // 2 = 8 -> item 1 has n = 0 and keeps
    # 21 ids: saved = 8 - 21 - 8 -> item 2 goes negative. factor .3: int(8.4) = 8, B = 20, P = 8: same.
    # factor .2: int(5.6) = 5, B = 23, P = 10 -> n = 2 -> "a", saved = 10 - 2 - 8 = 0 -> "a" again.
    r = build_prompt("LaMP_3", INP, [lamp3(LETTERS), lamp3(LETTERS, "2")], wl, 28)
    assert (r.text, r.retries, r.fallback) == (
        '5 is the score for "a" , and 2 is the score for "a" . ' + INP, 4, False)


def test_long_input_many_items_retries(wl):
    inp = " ".join(["w"] * 30)  # 31 ids (unknown words still count)
    items = [lamp3(LETTERS, s) for s in "543"]
    # M = 40, k = 3: P = (B - 1 - 4) // 3 with B = 40 - int(f * 40) = 16, 20, 24, 28 -> P = 3, 5, 6, 7 < 8;
    # f = .2 (0.20000000000000004): B = 32, P = 9 -> n = 1 for every item (saved stays 0)
    r = build_prompt("LaMP_3", inp, items, wl, 40)
    expected = ('5 is the score for "" , and 4 is the score for "" , and 3 is the score for "" . ' + inp)
    assert (r.text, r.retries, r.fallback) == (expected, 4, False)


def test_last_retry_has_factor_near_zero(wl):
    # LaMP_4, title "x y": need = |"x y" is the title for " "| = 9; M = 10, P = B - 1, n = B - 10.
    # The 6th attempt (factor 0.10000000000000003): B = 10 - 1 = 9 fails; the 7th (factor 2.8e-17):
    # B = 10, n = 0 -> the whole text is kept.
    r = build_prompt("LaMP_4", INP, [{"title": "x y", "text": LETTERS}], wl, 10)
    assert (r.text, r.retries, r.fallback) == (f'"x y" is the title for "{LETTERS}" . {INP}', 6, False)


def test_no_factor_fits_returns_the_bare_input(wl):
    # M = 8: even B = 8 gives P = 7 < need = 8; 7 attempts (0.6 down to ~0), then the bare input
    builder = PromptBuilder("LaMP_3", wl, 8)
    r = builder.build(INP, [lamp3(LETTERS)])
    assert (r.text, r.retries, r.fallback) == (INP, 7, True)
    builder.build(INP, [lamp3("a")])
    assert (builder.fallbacks, builder.retries, builder.built) == (2, 14, 2)


def test_lamp1_insertion(wl):
    item = {"title": "a b", "abstract": "z"}
    # no "title" in the input: unchanged, and not a fallback
    r = build_prompt("LaMP_1", "no marker here", [item], wl, 30)
    assert (r.text, r.retries, r.fallback) == ("no marker here", 0, False)
    # only the first occurrence, even inside a word
    r = build_prompt("LaMP_1", 'subtitle "t" title', [item], wl, 30)
    assert r.text == 'subtitle, and "a b" "t" title'
    # titles holding quotes stay as they are
    r = build_prompt("LaMP_1", INP1, [{"title": 'The "best" one', "abstract": ""}, item], wl, 30)
    assert r.text == 'with the title, and "The "best" one", and "a b" "x" [1]: "p" [2]: "q"'


def test_empty_profile_is_the_bare_input(wl):
    r = build_prompt("LaMP_3", INP, [], wl, 30)
    assert (r.text, r.retries, r.fallback) == (INP, 0, False)
    for mode in ("ipa", "fid", "none"):
        for layout in ("official", "separate"):
            assert passages("LaMP_3", INP, [], mode, wl, 30, layout=layout) == Passages([INP], 0, 0)


def test_every_field_the_prompt_uses_is_one_the_reader_checks():
    """The builder trusts its items: the reader refuses an item without a field φp needs (tests in
    test_reader.py), so every template field and the long field must be among the checked fields."""
    import string

    from lamp_fid.tasks import TASKS

    for task in TASKS.values():
        used = {name for template in (task.piece, task.need or "")
                for _, name, _, _ in string.Formatter().parse(template) if name and name != "cut"}
        assert used | {task.long_field} <= set(task.item_fields), task.name


def test_numeric_template_fields_format_like_the_official_fstrings(wl):
    r = build_prompt("LaMP_3", INP, [{"text": "a", "score": 4}], wl, 30)
    assert r.text == '4 is the score for "a" . ' + INP


# --- passages ---------------------------------------------------------------------------------

def test_fid_official_one_prompt_per_item_with_k_1_budget(wl):
    items = [lamp3(LETTERS), lamp3("a b", "2")]
    got = passages("LaMP_3", INP, items, "fid", wl, 30)
    # each passage alone: B = 21, P = 20, n = 12 -> 11 words (the IPA prompt of both would give fewer)
    assert got == Passages(['5 is the score for "a b c d e f g h i j k" . ' + INP,
                            '2 is the score for "a b" . ' + INP], 0, 0)
    ipa = passages("LaMP_3", INP, items, "ipa", wl, 30)
    # k = 2: P = (21 - 1 - 2) // 2 = 9 -> n = 1 for the first item; saved = 0 -> n = 1 for "a b"
    assert ipa == Passages(['5 is the score for "" , and 2 is the score for "" . ' + INP], 0, 0)
    assert passages("LaMP_3", INP, items, "none", wl, 30) == Passages([INP], 0, 0)


def test_fid_separate_layout(wl):
    items = [lamp3(LETTERS), lamp3("a b", "2")]
    # input first; item passages = the piece alone, budget B = max_length = 16: P = 15, n = 7 -> 6 words
    got = passages("LaMP_3", INP, items, "fid", wl, 16, layout="separate")
    assert got == Passages([INP, '5 is the score for "a b c d e f" ', '2 is the score for "a b" '], 0, 0)
    # max_length 8 < need + 1: the item keeps an empty long field and counts as a fallback
    got = passages("LaMP_3", INP, items[:1], "fid", wl, 8, layout="separate")
    assert got == Passages([INP, '5 is the score for "" '], 1, 0)
    # LaMP_1's piece has no trailing space and no reserved </s>
    got = passages("LaMP_1", INP1, [{"title": "a b", "abstract": "c"}], "fid", wl, 16, layout="separate")
    assert got.texts == [INP1, '"a b"']


def test_fid_fallbacks_are_counted_per_passage(wl):
    got = passages("LaMP_3", INP, [lamp3(LETTERS), lamp3("a")], "fid", wl, 8)
    assert got == Passages([INP, INP], 2, 14)


def test_builder_pickles_and_keeps_working(wl):
    builder = PromptBuilder("LaMP-2", wl, 30, mode="fid")
    items = [{"id": "1", "description": LETTERS, "tag": "comedy"}]
    before = builder.passages(INP, items)
    clone = pickle.loads(pickle.dumps(builder))
    assert clone.task.name == "LaMP_2" and clone.passages(INP, items) == before


def test_bad_mode_layout_max_length(wl):
    from lamp_fid.errors import LaMPError

    with pytest.raises(LaMPError, match="mode"):
        PromptBuilder("LaMP_3", wl, 30, mode="fusion")
    with pytest.raises(LaMPError, match="layout"):
        PromptBuilder("LaMP_3", wl, 30, layout="joint")
    with pytest.raises(LaMPError, match="max_length"):
        PromptBuilder("LaMP_3", wl, 0)


def test_compose_templates():
    assert compose("{joined}. {input}", "J {x}", "I {y}") == "J {x}. I {y}"
    assert compose("after:title:, and {joined}", "J", "a title b title") == "a title, and J b title"
    assert compose("after:title:, and {joined}", "J", "no marker") == "no marker"


# --- the formulas of docs/official_mode.md#phi-p transcribed task by task, on random data ----------

def spec_prompt(task: str, inp: str, items: list[dict], tok, max_length: int) -> str:
    """docs/official_mode.md#phi-p written out per task, independently of the task table."""
    L = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    table = {  # long field, need(item) or fixed, piece(item, cut), extra reserve, final(joined)
        "LaMP_1": ("title", lambda p: 2, lambda p, c: f'"{c}"', None, None),
        "LaMP_2": ("description", lambda p: L(f'the tag for the movie: " " is "{p["tag"]}" '),
                   lambda p, c: f'the tag for the movie: "{c}" is "{p["tag"]}" ', 0, lambda j: f"{j}. {inp}"),
        "LaMP_3": ("text", lambda p: L(f'{p["score"]} is the score for " " '),
                   lambda p, c: f'{p["score"]} is the score for "{c}" ', 0, lambda j: f"{j}. {inp}"),
        "LaMP_5": ("abstract", lambda p: L(f'"{p["title"]}" is a title " " '),
                   lambda p, c: f'"{p["title"]}" is a title for "{c}" ', L("Following the given patterns"),
                   lambda j: f"{j}. Following the given patterns {inp}"),
        "LaMP_7": ("text", lambda p: L('"" '), lambda p, c: f'"{c}" ',
                   L("are written by user. Following the given patterns"),
                   lambda j: f"{j} are written by a person. Following the given patterns {inp}"),
    }
    long, need, piece, reserve, final = table[task]
    factor = 0.6
    while factor >= 0:
        B = max_length - min(L(inp), int(factor * max_length))
        k = len(items)
        P = (B - 2 * (k - 1)) // k if task == "LaMP_1" else (B - 1 - 2 * (k - 1) - reserve) // k
        saved, out = 0, []
        for p in items:
            n = P + saved - need(p)
            if n < 0:
                break
            ids = tok(p[long], **({"max_length": n, "truncation": True} if n else {}))["input_ids"]
            saved += P - len(ids) - need(p)
            out.append(piece(p, tok.decode(ids, skip_special_tokens=True)))
        else:
            joined = ", and ".join(out)
            if task == "LaMP_1":
                i = inp.find("title")
                return inp if i < 0 else inp[:i + 5] + ", and " + joined + inp[i + 5:]
            return final(joined)
        factor -= 0.1
    return inp


def test_appended_specials(wl, wl_bos):
    assert appended_specials(wl) == (1,)
    assert appended_specials(wl_bos) is None  # the builder then lets HF cut every time


def test_flan_t5_takes_the_fast_path(t5):
    assert appended_specials(t5) == (t5.eos_token_id,)


@pytest.mark.parametrize("which", ["wl", "t5", "wl_bos"])
def test_matches_spec_transcription_on_random_profiles(which, request):
    tok = request.getfixturevalue(which)
    rng = random.Random(7)
    vocab = WORDS + ['"', "title", "x"]
    text = lambda a, b: " ".join(rng.choice(vocab) for _ in range(rng.randint(a, b)))  # noqa: E731
    fields = {"LaMP_1": ("title",), "LaMP_2": ("description", "tag"), "LaMP_3": ("text", "score"),
              "LaMP_5": ("abstract", "title"), "LaMP_7": ("text",)}
    fallbacks = 0
    for _ in range(150):
        task = rng.choice(sorted(fields))
        inp = text(0, 40)
        items = [{f: text(0, rng.choice([3, 40])) for f in fields[task]} for _ in range(rng.randint(1, 5))]
        max_length = rng.choice([12, 24, 48, 96])
        got = build_prompt(task, inp, items, tok, max_length)
        assert got.text == spec_prompt(task, inp, items, tok, max_length)
        fallbacks += got.fallback
    assert 0 < fallbacks < 150  # both paths were exercised


# --- the `lamp-fid prompts` command -----------------------------------------------------------

@pytest.fixture
def command_files(tmp_path, wl):
    import json

    tok_dir = tmp_path / "tokenizer"
    wl.save_pretrained(tok_dir)
    item = lambda i, text, score, date: {"id": i, "text": text, "score": score, "date": date}  # noqa: E731
    questions = [
        {"id": "q1", "input": INP, "profile": [item("a", "a b", "1", "2020-01-01"),
                                               item("b", LETTERS, "2", "2021-05-01"),
                                               item("c", "c d", "3", "2019-12-31")]},
        {"id": "q2", "input": INP, "profile": []},
        {"id": "q3", "input": INP, "profile": [item("d", "e", "4", "2022-01-01")]},
    ]
    path = tmp_path / "dev_questions.json"
    path.write_text(json.dumps(questions))
    return tok_dir, path, tmp_path


def run_prompts(tmp_path, *args):
    import json

    from lamp_fid.cli import main

    out = tmp_path / "prompts.jsonl"
    main(["prompts", "--task", "LaMP_3", "--questions", str(tmp_path / "dev_questions.json"),
          "--output", str(out), "--tokenizer", str(tmp_path / "tokenizer"), "--retriever", "recency",
          "--cache_dir", str(tmp_path / "cache"), *args])
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_prompts_command(command_files, capsys):
    _, _, tmp = command_files
    # recency, k = 2: q1 -> b (2021), a (2020). B = 40 - 9 = 31, P = (31 - 1 - 2) // 2 = 14:
    # b: n = 6 -> 5 words, saved 0; a: n = 6, whole. q2: empty profile. q3: k > profile, k = 1 used:
    # P = 30 -> "e" whole.
    lines = run_prompts(tmp, "--k", "2", "--max_length", "40")
    assert lines == [
        {"id": "q1", "passages": ['2 is the score for "a b c d e" , and 1 is the score for "a b" . ' + INP]},
        {"id": "q2", "passages": [INP]},
        {"id": "q3", "passages": ['4 is the score for "e" . ' + INP]},
    ]
    assert "budget fallbacks: 0" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # refuses to overwrite
        run_prompts(tmp, "--k", "2")
    assert "exists" in capsys.readouterr().err
    lines = run_prompts(tmp, "--k", "2", "--max_length", "16", "--mode", "fid", "--layout", "separate",
                        "--limit", "1", "--overwrite", "true")
    assert lines == [{"id": "q1", "passages": [INP, '2 is the score for "a b c d e f" ',
                                               '1 is the score for "a b" ']}]
    lines = run_prompts(tmp, "--k", "3", "--max_length", "8", "--overwrite", "true")
    assert [line["passages"] for line in lines] == [[INP]] * 3
    assert "budget fallbacks: 2" in capsys.readouterr().out
    lines = run_prompts(tmp, "--mode", "none", "--overwrite", "true")
    assert [line["passages"] for line in lines] == [[INP]] * 3
    assert not list(tmp.glob(".prompts.jsonl.*"))  # no temp files left behind


def test_prompts_command_bad_item_names_the_file(command_files, capsys):
    import json

    _, path, tmp = command_files
    data = json.loads(path.read_text())
    data[0]["profile"][1]["text"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit):
        run_prompts(tmp, "--k", "1")
    err = capsys.readouterr().err
    assert "dev_questions.json" in err and "text" in err and "Traceback" not in err


def test_prompts_command_user_errors(command_files, capsys):
    from lamp_fid.cli import main

    _, path, tmp = command_files
    for args, message in [(["--task", "LaMP_9", "--questions", str(path)], "unknown LaMP task"),
                          (["--task", "LaMP_3", "--questions", str(tmp / "nope.json")], "no such file"),
                          (["--task", "LaMP_3", "--questions", str(path), "--k", "-1"], "k must be"),
                          (["--task", "LaMP_3", "--questions", str(path), "--tokenizer", str(tmp / "none")],
                           "cannot load the tokenizer")]:
        with pytest.raises(SystemExit):
            main(["prompts", *args, "--output", str(tmp / "out.jsonl")])
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp / "out.jsonl").exists()
