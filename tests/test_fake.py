import json

import pytest

from lamp_fid.data import fake
from lamp_fid.data.fake import fake_examples, write_fake_split
from lamp_fid.data.paths import split_paths
from lamp_fid.errors import LaMPError
from lamp_fid.tasks import INSTRUCTIONS, TASKS, get_task

# The instruction every input starts with, as docs/official_mode.md#instructions writes it
# (an independent copy).
SPEC_PREFIXES = {
    "LaMP_1": 'For an author who has written the paper with the title "',
    "LaMP_2": ("Which tag does this movie relate to among the following tags? Just answer with the tag "
               "name without further explanation. tags: [sci-fi, based on a book, comedy, action, twist "
               "ending, dystopia, dark comedy, classic, psychology, fantasy, romance, thought-provoking, "
               "social commentary, violence, true story] description: "),
    "LaMP_2N": ("Which category does this article relate to among the following categories? Just answer "
                "with the category name without further explanation. categories: [food & drink, sports, "
                "education, parents, religion, travel, business, crime, science & technology, culture & "
                "arts, entertainment, politics, women, style & beauty, healthy living] article: "),
    "LaMP_3": ("What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, "
               "4, or 5 without further explanation. review: "),
    "LaMP_4": "Generate a headline for the following article: ",
    "LaMP_5": "Generate a title for the following abstract of a paper: ",
    "LaMP_6": "Generate a subject for the following email: ",
    "LaMP_7": "Paraphrase the following tweet without any explanation before or after it: ",
}


def test_every_task_has_a_template():
    assert set(INSTRUCTIONS) == set(TASKS) == set(SPEC_PREFIXES)


@pytest.mark.parametrize("name", list(TASKS))
def test_records_follow_the_spec(name):
    task = get_task(name)
    pairs = list(fake_examples(task, 30, profile_size=(0, 6), seed=1))
    assert [q["id"] for q, _ in pairs] == [str(100 + i) for i in range(30)]
    for q, out in pairs:
        assert set(q) == {"id", "input", "profile"}
        assert q["input"].startswith(SPEC_PREFIXES[name])
        assert task.query_of(q["input"])
        for item in q["profile"]:
            assert set(item) == {"id", "date", *task.item_fields}
            assert all(isinstance(v, str) for v in item.values())
            if task.labels and task.target_field:
                assert item[task.target_field] in task.labels
        if task.labels:
            assert out in task.labels
        else:
            assert isinstance(out, str) and out
    assert any(q["profile"] == [] for q, _ in pairs)  # profile_size lo=0 is honoured


def test_lamp1_has_quoted_titles_and_the_correct_reference_label():
    pairs = list(fake_examples("LaMP_1", 200, profile_size=(5, 10)))
    titles = [item["title"] for q, _ in pairs for item in q["profile"]]
    assert any('"' in t for t in titles)
    assert {out for _, out in pairs} == {"[1]", "[2]"}


def test_dates_parse_and_some_are_equal():
    pairs = list(fake_examples("LaMP_3", 20, profile_size=(20, 30)))
    for q, _ in pairs:
        for item in q["profile"]:
            y, m, d = map(int, item["date"].split("-"))
            assert 2000 < y < 2030 and 1 <= m <= 12 and 1 <= d <= 31
    assert any(len({i["date"] for i in q["profile"]}) < len(q["profile"]) for q, _ in pairs)
    q, _ = next(fake_examples("LaMP_3", 1, with_dates=False))
    assert all("date" not in item for item in q["profile"])


def test_questions_of_a_user_share_profile_items():
    pairs = list(fake_examples("LaMP_7", 9, profile_size=(16, 16), questions_per_user=3, user_ids=True))
    users = [q["user_id"] for q, _ in pairs]
    assert users == ["0"] * 3 + ["1"] * 3 + ["2"] * 3
    a, b = ({i["id"]: i for i in q["profile"]} for q, _ in pairs[:2])
    shared = set(a) & set(b)
    assert len(shared) >= 10 and all(a[k] == b[k] for k in shared)
    assert not set(a) & {i["id"] for i in pairs[3][0]["profile"]}  # other users have other items


def test_seed_determinism_and_variety():
    a = list(fake_examples("LaMP_4", 5, seed=3))
    assert a == list(fake_examples("LaMP_4", 5, seed=3))
    assert a != list(fake_examples("LaMP_4", 5, seed=4))


def test_words_range_controls_text_length():
    short = [len(q["profile"][0]["text"].split()) for q, _ in fake_examples("LaMP_7", 50, words=(5, 10))]
    long = [len(q["profile"][0]["text"].split()) for q, _ in fake_examples("LaMP_7", 50, words=(200, 300))]
    assert max(short) < 40 and min(long) > 120


@pytest.mark.parametrize("time_split", [False, True])
def test_write_fake_split_layout_and_format(tmp_path, time_split):
    q_path, o_path = write_fake_split(tmp_path, "LaMP_2", "dev", 7, time_split=time_split)
    assert (q_path, o_path) == split_paths(tmp_path, "LaMP_2", "dev", time_split)
    assert q_path.relative_to(tmp_path).as_posix() == ("time/" if time_split else "") + \
        "LaMP_2/new/dev/dev_questions.json"
    questions = json.loads(q_path.read_text(encoding="utf-8"))
    outputs = json.loads(o_path.read_text(encoding="utf-8"))
    assert len(questions) == 7 and outputs["task"] == "LaMP_2"
    assert [g["id"] for g in outputs["golds"]] == [q["id"] for q in questions]
    assert all(set(g) == {"id", "output"} for g in outputs["golds"])
    assert all(("user_id" in q) == time_split for q in questions)
    assert not list(tmp_path.rglob("*.tmp"))


def test_test_split_has_no_outputs(tmp_path):
    q_path, o_path = write_fake_split(tmp_path, "LaMP_5", "test", 3)
    assert o_path is None and len(json.loads(q_path.read_text())) == 3
    assert sorted(p.name for p in q_path.parent.iterdir()) == ["test_questions.json"]


def test_empty_split_is_valid_json(tmp_path):
    q_path, o_path = write_fake_split(tmp_path, "LaMP_3", "train", 0)
    assert json.loads(q_path.read_text()) == []
    assert json.loads(o_path.read_text()) == {"task": "LaMP_3", "golds": []}


def test_a_file_in_the_way_is_one_line_error(tmp_path):
    (tmp_path / "LaMP_3").write_text("not a folder")
    with pytest.raises(LaMPError, match="LaMP_3 is a file, not a folder"):
        write_fake_split(tmp_path, "LaMP_3", "dev", 2)


def test_two_writers_of_one_split_do_not_share_a_temp_file(tmp_path, monkeypatch):
    """A second writer of the same files (another process, here nested) starts while the first writes:
    each writes its own temp file, so both finish and the files are whole (no fixed ``.tmp`` name)."""
    real, nested = fake.fake_examples, []

    def examples(*args, **kwargs):
        for n, pair in enumerate(real(*args, **kwargs)):
            if n == 1 and not nested:
                nested.append("started")
                nested.append(write_fake_split(tmp_path, "LaMP_3", "dev", 3, seed=5))
            yield pair

    monkeypatch.setattr(fake, "fake_examples", examples)
    q_path, o_path = write_fake_split(tmp_path, "LaMP_3", "dev", 4)
    questions, outputs = json.loads(q_path.read_text()), json.loads(o_path.read_text())
    assert len(nested) == 2 and [q["id"] for q in questions] == [g["id"] for g in outputs["golds"]] == \
        ["100", "101", "102", "103"]
    assert sorted(p.name for p in q_path.parent.iterdir()) == ["dev_outputs.json", "dev_questions.json"]
