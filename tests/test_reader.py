import json

import pytest

from lamp_fid.data.fake import fake_examples
from lamp_fid.data.reader import byte_offset, iter_examples, iter_json_array, parse_date, read_outputs
from lamp_fid.errors import LaMPDataError


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def good_files(tmp_path, task="LaMP_4", n=4):
    pairs = list(fake_examples(task, n, profile_size=(2, 3)))
    questions = [q for q, _ in pairs]
    outputs = {"task": task, "golds": [{"id": q["id"], "output": o} for q, o in pairs]}
    return questions, outputs


def assert_error(func, *, path, record_id=None, field=None, words=()):
    with pytest.raises(LaMPDataError) as info:
        func()
    msg = str(info.value)
    assert str(path) in msg
    if record_id is not None:
        assert f"record id {record_id!r}" in msg
    if field is not None:
        assert f"field {field!r}" in msg
    for w in words:
        assert w in msg, msg
    return msg


# --- the streaming parser -----------------------------------------------------------------------

TRICKY = ('\n [ {"a": "]", "b": ",{[", "c": "say \\"hi\\" \\\\ \\u00e9 \\ud83d\\ude00 é 東京 😀 ,]"}\n,\n'
          ' 1.5e3 , -12, 12345678901234567890, true, false, null, "x" , [], {}, [1,[2,[3]]],\r\n'
          '\t{"nested": {"k": [{"]": "}"}]}}  ]\n\n')


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 13, 64, 1 << 20])
def test_tricky_json_at_every_chunk_size(tmp_path, chunk_size):
    p = tmp_path / "t.json"
    p.write_text(TRICKY, encoding="utf-8")
    assert list(iter_json_array(p, chunk_size=chunk_size)) == json.loads(TRICKY)


@pytest.mark.parametrize("text", ["[]", " [ \n ] \n", "\ufeff[]"])
def test_empty_lists(tmp_path, text):
    p = tmp_path / "e.json"
    p.write_text(text, encoding="utf-8")
    assert list(iter_json_array(p, chunk_size=1)) == []


@pytest.mark.parametrize("chunk_size", [1, 3, 100, 1 << 20])
def test_fake_file_equals_json_load(tmp_path, chunk_size):
    questions, _ = good_files(tmp_path, "LaMP_1", 20)
    p = write_json(tmp_path / "q.json", questions)
    assert list(iter_json_array(p, chunk_size=chunk_size)) == json.loads(p.read_text())


@pytest.mark.parametrize("text,offset,index,words", [
    ("[1,]", 3, 1, "Expecting value"),
    ("[1 2]", 3, 1, "expected ',' or ']'"),
    ('[{"a": 1}', 9, 1, "ends inside the list"),
    ('[{"a": tru}]', 7, 0, "Expecting value"),
    ('[{"a": "x\ny"}]', 9, 0, "Invalid control character"),
    ('[1, 2, {"a": [1, 2}]', 18, 2, "delimiter"),
    ('["é", {"a" 1}]', 12, 1, "delimiter"),  # é is 2 bytes: the offset counts bytes
    ("[1] x", 4, 1, "after the list"),
])
@pytest.mark.parametrize("chunk_size", [1, 4, 1 << 20])
def test_invalid_json_says_where(tmp_path, text, offset, index, words, chunk_size):
    p = tmp_path / "bad.json"
    p.write_text(text, encoding="utf-8")
    msg = assert_error(lambda: list(iter_json_array(p, chunk_size=chunk_size)), path=p)
    assert f"byte offset {offset} " in msg and f"record index {index}" in msg and words in msg


def test_invalid_record_early_in_a_big_file_fails_without_reading_on(tmp_path):
    p = tmp_path / "big.json"
    p.write_text('[{"a": 1 "b": 2}, ' + ", ".join(['"xxxxxxxxxxxxxxxxxxxxxxxx"'] * 20000) + "]")
    with pytest.raises(LaMPDataError, match="byte offset 9 "):
        list(iter_json_array(p, chunk_size=64))


@pytest.mark.parametrize("text", ["<!DOCTYPE html><html><body>Not found</body></html>", "\n  <html>x</html>",
                                  "<?xml version='1.0'?>"])
def test_html_page_instead_of_json(tmp_path, text):
    p = tmp_path / "q.json"
    p.write_text(text)
    assert_error(lambda: list(iter_json_array(p)), path=p, words=["HTML page", "wrong URL"])
    o = tmp_path / "o.json"
    o.write_text(text)
    assert_error(lambda: read_outputs(o, "LaMP_4"), path=o, words=["HTML page"])


@pytest.mark.parametrize("text,words", [("", "empty file"), ('{"task": "LaMP_4"}', "JSON object"),
                                        ("nonsense", "expected a JSON list")])
def test_not_a_list(tmp_path, text, words):
    p = tmp_path / "q.json"
    p.write_text(text)
    assert_error(lambda: list(iter_json_array(p)), path=p, words=[words])


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1 << 20])
def test_byte_offset_counts_utf8_bytes(tmp_path, bom, chunk_size):
    p = tmp_path / "u.txt"
    p.write_bytes(bom + "aé東😀b".encode("utf-8"))
    want = [len(bom) + n for n in (0, 1, 3, 6, 10, 11)]
    assert [byte_offset(p, i, chunk_size) for i in range(6)] == want


# --- validation -------------------------------------------------------------------------------

def test_good_files_join_outputs(tmp_path):
    questions, outputs = good_files(tmp_path)
    q = write_json(tmp_path / "q.json", questions)
    o = write_json(tmp_path / "o.json", outputs)
    examples = list(iter_examples("LaMP_4", q, o, check_dates=True))
    golds = {g["id"]: g["output"] for g in outputs["golds"]}
    assert [(e.id, e.input, e.profile, e.output, e.user_id) for e in examples] == \
        [(r["id"], r["input"], r["profile"], golds[r["id"]], None) for r in questions]
    assert all(e.output is None for e in iter_examples("LaMP_4", q))


def test_outputs_in_another_order_and_user_ids(tmp_path):
    questions, outputs = good_files(tmp_path, "LaMP_7", 5)
    questions[0]["user_id"], questions[1]["user_id"] = "u7", 12
    outputs["golds"].reverse()
    q = write_json(tmp_path / "q.json", questions)
    o = write_json(tmp_path / "o.json", outputs)
    examples = list(iter_examples("LaMP_7", q, o))
    assert [e.user_id for e in examples[:3]] == ["u7", "12", None]
    assert [e.id for e in examples] == [r["id"] for r in questions]


# case -> (mutation of a good questions list, record id and field the error must name)
QUESTION_BREAKAGES = {
    "id missing": (lambda qs: qs[1].pop("id"), None, "id"),
    "id int": (lambda qs: qs[1].__setitem__("id", 101), None, "id"),
    "input missing": (lambda qs: qs[1].pop("input"), "101", "input"),
    "input list": (lambda qs: qs[1].__setitem__("input", ["x"]), "101", "input"),
    "profile missing": (lambda qs: qs[1].pop("profile"), "101", "profile"),
    "profile dict": (lambda qs: qs[1].__setitem__("profile", {}), "101", "profile"),
    "item not object": (lambda qs: qs[1]["profile"].__setitem__(1, "text"), "101", "profile[1]"),
    "item id missing": (lambda qs: qs[1]["profile"][1].pop("id"), "101", "profile[1].id"),
    "item id int": (lambda qs: qs[1]["profile"][1].__setitem__("id", 5), "101", "profile[1].id"),
    "item field missing": (lambda qs: qs[1]["profile"][0].pop("text"), "101", "profile[0].text"),
    "item field null": (lambda qs: qs[1]["profile"][0].__setitem__("title", None), "101", "profile[0].title"),
    "user_id list": (lambda qs: qs[1].__setitem__("user_id", [1]), "101", "user_id"),
    "duplicate id": (lambda qs: qs[2].__setitem__("id", "101"), "101", "id"),
}


@pytest.mark.parametrize("case", list(QUESTION_BREAKAGES))
def test_bad_question_records(tmp_path, case):
    breakage, record_id, field = QUESTION_BREAKAGES[case]
    questions, outputs = good_files(tmp_path)
    breakage(questions)
    q = write_json(tmp_path / "q.json", questions)
    assert_error(lambda: list(iter_examples("LaMP_4", q)), path=q, record_id=record_id, field=field)


def test_record_that_is_not_an_object(tmp_path):
    q = write_json(tmp_path / "q.json", [["not", "a", "record"]])
    assert_error(lambda: list(iter_examples("LaMP_4", q)), path=q, words=["index 0", "object"])


def test_labelled_target_field_may_be_a_number(tmp_path):
    questions, _ = good_files(tmp_path, "LaMP_3", 2)
    questions[0]["profile"][0]["score"] = 4
    q = write_json(tmp_path / "q.json", questions)
    assert list(iter_examples("LaMP_3", q))[0].profile[0]["score"] == 4
    questions[0]["profile"][0]["text"] = 4  # ... but text fields may not
    write_json(q, questions)
    assert_error(lambda: list(iter_examples("LaMP_3", q)), path=q, record_id="100", field="profile[0].text")


def test_fields_of_the_right_task_are_required(tmp_path):
    questions, _ = good_files(tmp_path, "LaMP_4", 2)  # title + text items
    q = write_json(tmp_path / "q.json", questions)
    assert_error(lambda: list(iter_examples("LaMP_2", q)), path=q, record_id="100",
                 field="profile[0].description")


def test_malformed_input_content_is_accepted(tmp_path):
    # Like the official LaMP_2 movie dev record "110": only types are validated, never content.
    questions, _ = good_files(tmp_path, "LaMP_2", 2)
    questions[1]["input"] = "Which tag does this movie relate to"  # truncated, no "description:"
    q = write_json(tmp_path / "q.json", questions)
    assert len(list(iter_examples("LaMP_2", q))) == 2


def test_question_without_gold(tmp_path):
    questions, outputs = good_files(tmp_path)
    del outputs["golds"][2]
    q, o = write_json(tmp_path / "q.json", questions), write_json(tmp_path / "o.json", outputs)
    assert_error(lambda: list(iter_examples("LaMP_4", q, o)), path=o, record_id="102", field="id",
                 words=[str(q)])


def test_gold_without_question(tmp_path):
    questions, outputs = good_files(tmp_path)
    outputs["golds"].append({"id": "999", "output": "x"})
    outputs["golds"].append({"id": "998", "output": "y"})
    q, o = write_json(tmp_path / "q.json", questions), write_json(tmp_path / "o.json", outputs)
    assert_error(lambda: list(iter_examples("LaMP_4", q, o)), path=o, record_id="999", field="id",
                 words=["1 more"])


OUTPUT_BREAKAGES = {
    "other task": (lambda o: o.__setitem__("task", "LaMP_5"), None, "task", "LaMP_5"),
    "no task": (lambda o: o.pop("task"), None, "task", "missing"),
    "no golds": (lambda o: o.pop("golds"), None, "golds", "missing"),
    "golds dict": (lambda o: o.__setitem__("golds", {}), None, "golds", "list"),
    "gold not object": (lambda o: o["golds"].__setitem__(1, "x"), None, "golds[1]", "object"),
    "gold id missing": (lambda o: o["golds"][1].pop("id"), None, "id", "missing"),
    "gold id int": (lambda o: o["golds"][1].__setitem__("id", 101), None, "golds[1].id", "string"),
    "output missing": (lambda o: o["golds"][1].pop("output"), "101", "output", "missing"),
    "output int": (lambda o: o["golds"][1].__setitem__("output", 3), "101", "output", "string"),
    "duplicate": (lambda o: o["golds"][2].__setitem__("id", "101"), "101", "id", "duplicate"),
}


@pytest.mark.parametrize("case", list(OUTPUT_BREAKAGES))
def test_bad_outputs(tmp_path, case):
    breakage, record_id, field, word = OUTPUT_BREAKAGES[case]
    _, outputs = good_files(tmp_path)
    breakage(outputs)
    o = write_json(tmp_path / "o.json", outputs)
    assert_error(lambda: read_outputs(o, "LaMP_4"), path=o, record_id=record_id, field=field, words=[word])


def test_outputs_that_are_a_list_or_invalid_json(tmp_path):
    o = write_json(tmp_path / "o.json", [{"id": "1", "output": "x"}])
    assert_error(lambda: read_outputs(o, "LaMP_4"), path=o, words=["questions file?"])
    o.write_text('{"task": "LaMP_4", "golds": [{"id": "1", "output": "é" "x"}]}', encoding="utf-8")
    assert_error(lambda: read_outputs(o, "LaMP_4"), path=o, words=["byte offset 56:"])


@pytest.mark.parametrize("date,ok", [("2015-03-07", True), ("2015", True), ("2015-3-7", True),
                                     ("2015/03/07", False), ("", False), ("March 2015", False), (2015, False)])
def test_dates_only_checked_for_recency(tmp_path, date, ok):
    questions, _ = good_files(tmp_path, "LaMP_5", 2)
    questions[1]["profile"][1]["date"] = date
    q = write_json(tmp_path / "q.json", questions)
    assert len(list(iter_examples("LaMP_5", q))) == 2
    if ok:
        assert len(list(iter_examples("LaMP_5", q, check_dates=True))) == 2
    else:
        assert_error(lambda: list(iter_examples("LaMP_5", q, check_dates=True)), path=q, record_id="101",
                     field="profile[1].date")


def test_missing_date_for_recency(tmp_path):
    questions, _ = good_files(tmp_path, "LaMP_5", 2)
    del questions[0]["profile"][0]["date"]
    q = write_json(tmp_path / "q.json", questions)
    assert_error(lambda: list(iter_examples("LaMP_5", q, check_dates=True)), path=q, record_id="100",
                 field="profile[0].date", words=["recency"])


def test_parse_date_is_an_int_tuple():
    assert parse_date("2015-03-07") == (2015, 3, 7) and parse_date("2015-3-7") < parse_date("2015-03-10")


# Moved from test_prompts.py: the prompt builder trusts the store, so what φp needs is refused here.
LAMP3_INPUT = "rate : u v w x y z"


@pytest.mark.parametrize("item,field", [
    ({"id": "p1", "score": "5"}, "text"),
    ({"id": "p1", "text": "a"}, "score"),
    ({"id": "p1", "text": 5, "score": "5"}, "text"),
    ({"id": "p1", "text": "a", "score": None}, "score"),
])
def test_bad_item_is_a_clear_error_not_a_fallback(tmp_path, item, field):
    questions = [{"id": "q7", "input": LAMP3_INPUT, "profile": [{"id": "p0", "text": "a", "score": "5"}, item]}]
    q = write_json(tmp_path / "dev_questions.json", questions)
    assert_error(lambda: list(iter_examples("LaMP_3", q)), path=q, record_id="q7", field=f"profile[1].{field}")


def test_bad_need_field_and_input_type(tmp_path):
    movie = [{"id": "q1", "input": "description: x", "profile": [{"id": "m", "description": "a"}]}]
    q = write_json(tmp_path / "q.json", movie)
    assert_error(lambda: list(iter_examples("LaMP_2", q)), path=q, record_id="q1", field="profile[0].tag")
    review = [{"id": "q1", "input": None, "profile": [{"id": "p0", "text": "a", "score": "5"}]}]
    q = write_json(tmp_path / "q.json", review)
    assert_error(lambda: list(iter_examples("LaMP_3", q)), path=q, record_id="q1", field="input")
    review = [{"id": "q1", "input": LAMP3_INPUT, "profile": ["a"]}]
    q = write_json(tmp_path / "q.json", review)
    assert_error(lambda: list(iter_examples("LaMP_3", q)), path=q, record_id="q1", field="profile[0]",
                 words=["an object"])


ONE_FORMAT = {
    "good": '{"task": "LaMP_3", "golds": [{"id": "1", "output": "4"}, {"id": "2", "output": " 5 "}]}',
    "LaMP_3 numbers": '{"task": "LaMP_3", "golds": [{"id": "1", "output": 4}, {"id": "2", "output": 2.5}]}',
    "int id": '{"task": "LaMP_3", "golds": [{"id": 1, "output": "4"}]}',
    "bool output": '{"task": "LaMP_3", "golds": [{"id": "1", "output": true}]}',
    "NaN": '{"task": "LaMP_3", "golds": [{"id": "1", "output": NaN}]}',
    "not official": '{"task": "LaMP-3", "golds": []}',
    "list": '[{"id": "1", "output": "4"}]',
    "html": "<html>404</html>",
    "not JSON": '{"task": "LaMP_3", "golds": [}',
}


@pytest.mark.parametrize("case", list(ONE_FORMAT))
def test_gold_and_prediction_files_follow_one_validator(tmp_path, case):
    """Gold outputs (read by the store) and predictions (read by evaluate) share one format, so one
    validator: the same file is accepted with the same outputs, or refused with the same line."""
    from lamp_fid.predictions import read_predictions

    path = tmp_path / "dev_outputs.json"
    path.write_text(ONE_FORMAT[case], encoding="utf-8")

    def outcome(read):
        try:
            result = read()
        except LaMPDataError as err:
            return str(err)
        return result[1] if isinstance(result, tuple) else result

    gold = outcome(lambda: read_outputs(path, "LaMP_3"))
    assert gold == outcome(lambda: read_predictions(path, "LaMP_3"))
    assert isinstance(gold, dict) == (case in ("good", "LaMP_3 numbers"))
    if case == "LaMP_3 numbers":
        assert gold == {"1": "4", "2": "2.5"}
