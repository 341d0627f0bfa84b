import json
import os
import pickle

import pytest

from lamp_fid.data import store as store_mod
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.store import LaMPStore, fingerprint
from lamp_fid.errors import LaMPDataError


def as_tuples(store):
    return [(e.id, e.input, e.profile, e.output, e.user_id) for e in store]


def expected(q_path, o_path=None):
    golds = {g["id"]: g["output"] for g in json.loads(o_path.read_text())["golds"]} if o_path else {}
    return [(r["id"], r["input"], r["profile"], golds.get(r["id"]), r.get("user_id"))
            for r in json.loads(q_path.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("task,time_split", [("LaMP_1", False), ("LaMP_2", True), ("LaMP_7", True)])
def test_round_trip_equals_json_load(tmp_path, task, time_split):
    q, o = write_fake_split(tmp_path / "data", task, "dev", 25, time_split=time_split, profile_size=(0, 6),
                            questions_per_user=2)
    store = LaMPStore.open(task, q, o, cache_dir=tmp_path / "cache", progress=False)
    want = expected(q, o)
    assert as_tuples(store) == want
    assert [as_tuples([store[i]])[0] for i in range(len(store))] == want
    assert len(store) == 25 and store.has_outputs and store.task.name == task
    assert store.ids == [w[0] for w in want]
    assert store.index_of(want[7][0]) == 7 and store.get(want[7][0]).id == want[7][0]
    assert store[-1].id == want[-1][0]
    with pytest.raises(IndexError):
        store[25]
    with pytest.raises(KeyError, match="no example with id"):
        store.index_of("nope")
    assert isinstance(store.fingerprint, str) and len(store.fingerprint) >= 16
    assert store.questions_path == q


def test_test_split_without_outputs(tmp_path):
    write_fake_split(tmp_path / "data", "LaMP_5", "test", 6)
    store = LaMPStore.open_split(tmp_path / "data", "LaMP_5", "test", cache_dir=tmp_path / "c", progress=False)
    assert not store.has_outputs and all(e.output is None for e in store)
    assert as_tuples(store) == expected(store.questions_path)


def test_unicode_and_empty(tmp_path):
    q = tmp_path / "q.json"
    q.write_text(json.dumps([{"id": "é1", "input": "x: 東京 😀 \u2028 \"]\"", "profile": []}], ensure_ascii=False),
                 encoding="utf-8")
    assert as_tuples(LaMPStore.open("LaMP_7", q, cache_dir=tmp_path / "c")) == expected(q)
    q.write_text("[]")
    assert len(LaMPStore.open("LaMP_7", q, cache_dir=tmp_path / "c")) == 0


def test_cache_is_reused_without_parsing(tmp_path, monkeypatch):
    q, o = write_fake_split(tmp_path / "data", "LaMP_3", "train", 10)
    first = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)

    def no_parsing(*a, **k):
        raise AssertionError("the store was rebuilt")

    monkeypatch.setattr(store_mod, "iter_examples", no_parsing)
    again = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    assert again.directory == first.directory and as_tuples(again) == as_tuples(first)
    assert len(list((tmp_path / "c" / "stores").iterdir())) == 2  # the store and its lock file


def test_cache_is_invalidated_when_content_changes(tmp_path):
    q, o = write_fake_split(tmp_path / "data", "LaMP_3", "train", 10)
    cache = tmp_path / "c"
    old_time = 1_600_000_000
    os.utime(q, (old_time, old_time))  # old enough for the digest memo to be trusted
    first = LaMPStore.open("LaMP_3", q, o, cache_dir=cache, progress=False)
    assert list((cache / "fingerprints").iterdir())  # memo written
    # Same size, one character different: the content fingerprint must change.
    text = q.read_text()
    i = text.index('"input": "') + len('"input": "')
    q.write_text(text[:i] + ("X" if text[i] != "X" else "Y") + text[i + 1:])
    second = LaMPStore.open("LaMP_3", q, o, cache_dir=cache, progress=False)
    assert second.fingerprint != first.fingerprint and second[0].input[0] in "XY"
    assert as_tuples(second) == expected(q, o)
    # The outputs file is part of the fingerprint too.
    gold = json.loads(o.read_text())
    gold["golds"][0]["output"] = "1" if gold["golds"][0]["output"] != "1" else "2"
    o.write_text(json.dumps(gold))
    third = LaMPStore.open("LaMP_3", q, o, cache_dir=cache, progress=False)
    assert third.fingerprint != second.fingerprint and third[0].output == gold["golds"][0]["output"]


def test_fingerprint_depends_on_task_and_outputs(tmp_path):
    q, o = write_fake_split(tmp_path / "data", "LaMP_4", "dev", 3)
    fps = {fingerprint("LaMP_4", q, o), fingerprint("LaMP_6", q, o), fingerprint("LaMP_4", q)}
    assert len(fps) == 3
    assert fingerprint("LaMP_4", q, o) == fingerprint("LaMP_4", q, o, tmp_path / "c")


def test_invalid_file_leaves_no_store(tmp_path):
    q, o = write_fake_split(tmp_path / "data", "LaMP_4", "dev", 5)
    data = json.loads(q.read_text())
    data[3]["profile"][0]["title"] = 7
    q.write_text(json.dumps(data))
    with pytest.raises(LaMPDataError, match="record id '103', field 'profile.0..title'"):
        LaMPStore.open("LaMP_4", q, o, cache_dir=tmp_path / "c", progress=False)
    assert [p.name for p in (tmp_path / "c" / "stores").iterdir() if not p.name.endswith(".lock")] == []


def test_dates_checked_once_even_on_an_existing_store(tmp_path, monkeypatch):
    q, o = write_fake_split(tmp_path / "data", "LaMP_5", "dev", 5)
    data = json.loads(q.read_text())
    data[2]["profile"][0]["date"] = "sometime"
    q.write_text(json.dumps(data))
    store = LaMPStore.open("LaMP_5", q, o, cache_dir=tmp_path / "c", progress=False)  # no date check
    assert len(store) == 5  # bm25 needs no dates: the file opens
    q2, o2 = write_fake_split(tmp_path / "data2", "LaMP_5", "dev", 5)
    LaMPStore.open("LaMP_5", q2, o2, cache_dir=tmp_path / "c", progress=False)

    def read_again(*args, **kwargs):
        raise AssertionError("the data was read again")

    # the dates were checked while building: a recency open reads nothing again
    monkeypatch.setattr(store_mod, "iter_examples", read_again)
    monkeypatch.setattr(LaMPStore, "__iter__", read_again)
    with pytest.raises(LaMPDataError, match=r"record id '102', field 'profile\[0\].date'") as info:
        LaMPStore.open("LaMP_5", q, o, cache_dir=tmp_path / "c", check_dates=True, progress=False)
    assert str(q) in str(info.value) and "'sometime'" in str(info.value)
    checked = LaMPStore.open("LaMP_5", q2, o2, cache_dir=tmp_path / "c", check_dates=True, progress=False)
    assert len(checked) == 5


def test_pickle_and_fork(tmp_path):
    q, o = write_fake_split(tmp_path / "data", "LaMP_2N", "dev", 8)
    store = LaMPStore.open("LaMP_2N", q, o, cache_dir=tmp_path / "c", progress=False)
    store[0]  # opens the file handle, which must not travel
    clone = pickle.loads(pickle.dumps(store))
    assert clone.task.name == "LaMP_2N" and as_tuples(clone) == as_tuples(store) and clone[5] == store[5]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked DataLoader worker reads through the inherited store
        os.write(w, store[6].id.encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 100).decode() == store[6].id


def test_missing_file_is_a_clear_error(tmp_path):
    from lamp_fid.errors import LaMPError

    with pytest.raises(LaMPError, match="no such file"):
        LaMPStore.open("LaMP_4", tmp_path / "nope.json", cache_dir=tmp_path / "c")


def test_pretty_printed_source_and_int_user_ids(tmp_path):
    q, o = write_fake_split(tmp_path / "data", "LaMP_6", "dev", 6, time_split=True, profile_size=(0, 4))
    data = json.loads(q.read_text())
    data[1]["user_id"] = 42
    q.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")  # records span lines
    store = LaMPStore.open("LaMP_6", q, o, cache_dir=tmp_path / "c", progress=False)
    want = expected(q, o)
    want[1] = want[1][:4] + ("42",)
    assert as_tuples(store) == want and store[1].user_id == "42" and store[5].id == want[5][0]
