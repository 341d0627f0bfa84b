"""lamp_fid.metrics against independent oracles: scikit-learn, rouge_score itself, hand-worked examples."""

import math
import random

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer, scoring
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error

from lamp_fid.errors import LaMPError
from lamp_fid.metrics import score

# Label sets as docs/official_mode.md#labels writes them (an independent copy of the task table's).
SPEC_LABELS = {
    "LaMP_1": ["[1]", "[2]"],
    "LaMP_2": ["sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy",
               "classic", "psychology", "fantasy", "romance", "thought-provoking", "social commentary",
               "violence", "true story"],
    "LaMP_2N": ["food & drink", "sports", "education", "parents", "religion", "travel", "business", "crime",
                "science & technology", "culture & arts", "entertainment", "politics", "women",
                "style & beauty", "healthy living"],
}
GENERATION = ["LaMP_4", "LaMP_5", "LaMP_6", "LaMP_7"]
TOL = 1e-9


def noisy_label(rng: random.Random, labels: list[str]) -> str:
    """A label, or one of the ways a model's output fails to be one."""
    label = rng.choice(labels)
    return rng.choice([
        label, label, label, f"  {label}\n", f"\t{label} ", label.upper(), label + ".", "", "   ",
        "something else", "éà 東京", f"\u00a0{label}\u3000",  # unicode whitespace: str.strip removes it
    ])


def classification_oracle(labels, preds, golds):
    def index(x):
        x = str(x).strip()
        return labels.index(x) if x in labels else -1

    p, g = [index(x) for x in preds], [index(x) for x in golds]
    return {"accuracy": accuracy_score(g, p),
            "f1": f1_score(g, p, labels=list(range(len(labels))), average="macro", zero_division=0)}


@pytest.mark.parametrize("task", list(SPEC_LABELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_equals_sklearn(task, seed):
    rng = random.Random(seed)
    labels = SPEC_LABELS[task]
    n = rng.choice([7, 60, 300])
    preds = [noisy_label(rng, labels) for _ in range(n)]
    # golds are labels, some padded with whitespace; one outside the label set is a data error
    golds = [rng.choice([g, f"  {g}\n", f"\u00a0{g}\u3000"]) if rng.random() < 0.1 else g
             for g in (rng.choice(labels) for _ in range(n))]
    got, want = score(task, preds, golds), classification_oracle(labels, preds, golds)
    assert list(got) == ["accuracy", "f1"]
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=TOL)


def test_classification_by_hand():
    # Label [2] appears on neither side: its F1 counts as 0, so perfect answers give F1 0.5.
    assert score("LaMP_1", ["[1]", "[1]"], ["[1]", "[1]"]) == {"accuracy": 1.0, "f1": 0.5}
    # Case matters; an invalid prediction is a miss for the gold class and no class of its own (a gold
    # outside the labels is a data error: tests/test_hostile_input.py).
    got = score("LaMP_1", ["[1]", "[2]", "[1]", "maybe", "nope"], ["[1]", "[1]", "[1]", "[2]", "[2]"])
    # class [1]: tp 2, fp 0, fn 1 -> F1 4/5; class [2]: tp 0, fp 1, fn 2 -> 0
    assert got["accuracy"] == pytest.approx(2 / 5, abs=TOL)
    assert got["f1"] == pytest.approx((4 / 5 + 0) / 2, abs=TOL)
    assert score("LaMP_2", ["Comedy"], ["comedy"])["accuracy"] == 0.0


def rating_oracle(preds, golds):
    """The official LaMP_3 mapping, written out: float(), else the farther of 1 and 5 from the gold;
    then HF evaluate's float32 input columns (``datasets.Value("float")``), then scikit-learn."""
    p, g = [], []
    for x, y in zip(preds, golds):
        gold = float(y.strip())
        try:
            value = float(x.strip())
        except ValueError:
            value = 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0
        p.append(np.float32(value).item())
        g.append(np.float32(gold).item())
    return {"MAE": mean_absolute_error(g, p), "RMSE": math.sqrt(mean_squared_error(g, p))}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_equals_sklearn(seed):
    rng = random.Random(seed)
    choices = ["1", "2", "3", "4", "5", " 4 ", "3.5", "3.7", "0.1", "2\n", "five", "", "4 stars", "١", "+2",
               "1e0", "٣"]
    golds = [rng.choice("12345") for _ in range(200)]
    preds = [rng.choice(choices) for _ in golds]
    got, want = score("LaMP_3", preds, golds), rating_oracle(preds, golds)
    assert list(got) == ["MAE", "RMSE"]
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=TOL)


def test_regression_fallback_by_hand():
    # "five" with gold 3: |1-3| = |5-3|, a tie -> 5.0 (error 2); "" with gold 2 -> 5.0 (error 3);
    # "x" with gold 4 -> 1.0 (error 3); "y" with gold 1 -> 5.0 (error 4); "5" vs 5 (error 0).
    got = score("LaMP_3", ["five", "", "x", "y", "5", " 2.5 "], ["3", "2", "4", "1", "5", "1"])
    errors = [2, 3, 3, 4, 0, 1.5]
    assert got["MAE"] == pytest.approx(sum(errors) / 6, abs=TOL)
    assert got["RMSE"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 6), abs=TOL)


def test_regression_uses_float32_values_like_the_official_library():
    got = score("LaMP_3", ["3.7"], ["4"])
    assert got["MAE"] == pytest.approx(4 - 3.700000047683716, abs=1e-12)
    assert got["MAE"] != pytest.approx(4 - 3.7, abs=1e-9)


def test_regression_non_finite_and_bad_gold():
    # The official evaluator crashes on "nan"/"inf" (scikit-learn refuses them); lamp-fid falls back.
    assert score("LaMP_3", ["nan", "inf", "1e39"], ["2", "4", "5"])["MAE"] == pytest.approx((3 + 3 + 4) / 3)
    with pytest.raises(LaMPError, match="not a number"):
        score("LaMP_3", ["3"], ["three"])


def rouge_oracle(preds, golds):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    scores = [scorer.score(g.strip(), p.strip()) for p, g in zip(preds, golds)]
    return {"rouge-1": np.mean([s["rouge1"].fmeasure for s in scores]),
            "rouge-L": np.mean([s["rougeL"].fmeasure for s in scores])}


WORDS = ("the a new model of cats Cats running run ran 2023 data-set data set Zürich café 東京 "
         "naïve don't U.S. , . ! ? -- ** summary headline").split()


def random_texts(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))
        out.append(rng.choice([text, f"  {text}\n", text.upper(), ""]))
    return out


@pytest.mark.parametrize("task", GENERATION)
def test_generation_equals_rouge_score(task):
    rng = random.Random(task)
    preds, golds = random_texts(rng, 150), random_texts(rng, 150)
    got, want = score(task, preds, golds), rouge_oracle(preds, golds)
    assert list(got) == ["rouge-1", "rouge-L"]
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=TOL)


def test_generation_has_no_stemming_and_ignores_case_and_punctuation():
    assert score("LaMP_4", ["running cats"], ["run cat"])["rouge-1"] == 0.0
    assert score("LaMP_4", ["HELLO, World!"], ["hello world"])["rouge-1"] == pytest.approx(1.0)
    assert score("LaMP_4", ["東京"], ["東京"])["rouge-1"] == 0.0  # the default tokenizer keeps [a-z0-9] only


def official_bootstrap(preds, golds, seed):
    """What the official evaluator computes (HF evaluate's rouge wrapper) after np.random.seed(seed)."""
    np.random.seed(seed)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    for p, g in zip(preds, golds):
        aggregator.add_scores(scorer.score_multi([g.strip()], p.strip()))
    result = aggregator.aggregate()
    return {"rouge-1": result["rouge1"].mid.fmeasure, "rouge-L": result["rougeL"].mid.fmeasure}


@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_is_the_official_procedure(seed):
    rng = random.Random(seed)
    preds, golds = random_texts(rng, 40), random_texts(rng, 40)
    got = score("LaMP_7", preds, golds, bootstrap=True, seed=seed)
    want = official_bootstrap(preds, golds, seed)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12)
    plain = score("LaMP_7", preds, golds)
    other = score("LaMP_7", preds, golds, bootstrap=True, seed=seed + 1)
    assert got != plain and got != other  # the estimate is a resampling median, and the seed matters
    assert all(abs(got[k] - plain[k]) < 0.05 for k in got)


def test_bootstrap_leaves_other_tasks_alone():
    assert score("LaMP_3", ["1", "2"], ["2", "2"], bootstrap=True) == score("LaMP_3", ["1", "2"], ["2", "2"])


def test_input_errors():
    with pytest.raises(LaMPError, match="2 predictions but 1 golds"):
        score("LaMP_1", ["[1]", "[2]"], ["[1]"])
    with pytest.raises(LaMPError, match="no examples"):
        score("LaMP_4", [], [])
    with pytest.raises(LaMPError, match="not a string"):
        score("LaMP_4", [None], ["x"])
    with pytest.raises(ValueError, match="unknown LaMP task"):
        score("LaMP_9", ["x"], ["x"])


# --- data for the eval-epoch tests (tests/test_model.py) and DDP ---------------------------------

def task_data(task: str, n: int, seed: int = 0):
    rng = random.Random(seed)
    if task in SPEC_LABELS:
        labels = SPEC_LABELS[task]
        return [noisy_label(rng, labels) for _ in range(n)], [rng.choice(labels) for _ in range(n)]
    if task == "LaMP_3":
        return [rng.choice(["1", "2", "3", "4", "5", "x", " 2 "]) for _ in range(n)], \
            [rng.choice("12345") for _ in range(n)]
    return random_texts(rng, n), random_texts(rng, n)


ALL_TASKS = ["LaMP_1", "LaMP_2", "LaMP_2N", "LaMP_3", "LaMP_4", "LaMP_7"]


# --- DDP --------------------------------------------------------------------------------------

def ddp_data(task: str):
    """7 examples whose first one (the padding duplicate on 2 ranks) moves every metric if counted twice."""
    if task == "LaMP_2":
        golds = SPEC_LABELS["LaMP_2"][:7]
        return [golds[1], golds[1], "x", golds[3], SPEC_LABELS["LaMP_2"][8], "", golds[6]], golds
    if task == "LaMP_3":
        return ["5", "2", "x", "1", "3", "4", "2"], ["1", "2", "3", "4", "5", "1", "2"]
    preds, golds = random_texts(random.Random(5), 7), random_texts(random.Random(6), 7)
    preds[0] = golds[0] = "an exact match"
    return preds, golds


def _ddp_worker(rank: int, world: int, init_file: str, result_file: str):
    import json

    from lamp_fid.distributed import gather_objects, merge_rank_outputs

    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        for task in ("LaMP_2", "LaMP_3", "LaMP_5"):
            preds, golds = ddp_data(task)
            ids = [f"id-{i}" for i in range(7)]
            sampler = DistributedSampler(range(7), num_replicas=world, rank=rank, shuffle=False)
            shard = list(sampler)  # 7 examples on 2 ranks: rank 1 gets example 0 again as padding
            # what FiDModule does at the end of an eval epoch: one gather, merge, score
            merged = merge_rank_outputs(gather_objects([(ids[i], (preds[i], golds[i])) for i in shard]))
            values = score(task, [p for p, _ in merged.values()], [g for _, g in merged.values()])
            out[task] = {"shard": shard, "values": values}
        with open(f"{result_file}.{rank}", "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metric_under_ddp_counts_padding_once(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result")), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"result.{r}").read_text()) for r in range(2)]
    assert sorted(results[0]["LaMP_3"]["shard"] + results[1]["LaMP_3"]["shard"]) == [0, 0, 1, 2, 3, 4, 5, 6]
    for task in ("LaMP_2", "LaMP_3", "LaMP_5"):
        preds, golds = ddp_data(task)
        want = score(task, preds, golds)
        padded = score(task, preds + preds[:1], golds + golds[:1])
        assert all(padded[k] != pytest.approx(want[k], abs=1e-6) for k in want)
        for rank in range(2):
            got = results[rank][task]["values"]
            for k in want:
                assert got[k] == pytest.approx(want[k], abs=1e-12)
