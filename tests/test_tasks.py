import pickle

import pytest

from lamp_fid.tasks import TASKS, citation_query, get_task, quoted_strings


@pytest.mark.parametrize("spelling", ["LaMP_3", "LaMP-3", "lamp3", "3", "LAMP_3"])
def test_task_spellings(spelling):
    assert get_task(spelling).name == "LaMP_3"


def test_news_variant_has_its_own_name():
    assert get_task("LaMP_2_news").name == "LaMP_2N"
    assert get_task("LaMP-2N").official_name == "LaMP_2"
    assert get_task("LaMP_2").labels[0] == "sci-fi"


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown LaMP task"):
        get_task("LaMP_9")


def test_citation_query_uses_second_and_third_quotes():
    inp = ('For an author who has written the paper with the title "Own title", which reference is '
           'related? Just answer with [1] or [2] without explanation. [1]: "Ref one" [2]: "Ref two"')
    assert quoted_strings(inp) == ["Own title", "Ref one", "Ref two"]
    assert citation_query(inp) == "Ref one Ref two"


def test_after_first_marker_queries():
    assert get_task("LaMP_3").query_of("... 1, 2, 3 review:  great  review: x ") == "great  review: x"
    assert get_task("LaMP_7").query_of("Paraphrase: a: b ") == "a: b"


def test_every_task_has_metrics_and_direction():
    for t in TASKS.values():
        assert t.monitor in t.metrics
        assert t.monitor_mode == ("min" if t.kind == "regression" else "max")


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_row_pickles_as_plain_data(name):
    """DataLoader workers receive rows by pickle: no closures in the table, no custom pickling."""
    row = TASKS[name]
    clone = pickle.loads(pickle.dumps(row))
    assert clone == row and clone is not row
    inp = 'title "a" [1]: "b" [2]: "c" review: x description: y article: z paper: w : v'
    item = {field: f"{field} text" for field in row.item_fields}
    assert clone.query_of(inp) == row.query_of(inp) and clone.item_text(item) == row.item_text(item)
    assert not hasattr(type(row), "__getstate__") or type(row).__getstate__ is object.__getstate__
