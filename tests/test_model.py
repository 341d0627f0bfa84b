"""FiDModule: FiD with one passage is the plain seq2seq model, padding passages are inert, the
schedule is the paper's, label scoring is an argmax, and a CPU Trainer logs the official metrics."""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer
from sklearn.metrics import accuracy_score, f1_score

from lamp_fid.errors import LaMPError
from lamp_fid.metrics import score
from lamp_fid.model import PAPER_OPTIMIZER, FiDModule
from lamp_fid.tasks import get_task
from test_metrics import ALL_TASKS, task_data
from tiny import build_tiny_t5, passage_batch, passage_loader

TEXTS = [
    "what a lovely day",
    "the city council approved the new park today",
    "we study retrieval for personalization",
    "great product, works as described",
    "a man travels through time to save his family",
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(build_tiny_t5(tmp_path_factory.mktemp("tiny_t5")))


def fid(path, **kw) -> FiDModule:
    kw.setdefault("task", "LaMP_7")
    return FiDModule(model_name_or_path=path, **kw).eval()


def quiet_trainer(**kw) -> Trainer:
    kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0, **kw}
    return Trainer(**kw)


@torch.no_grad()
def test_one_passage_fid_loss_is_the_plain_model_loss(tiny_path):
    m = fid(tiny_path)
    b = passage_batch(m.tokenizer, [[TEXTS[0]], [TEXTS[1]], [TEXTS[2]]], ["lovely day", "park", "retrieval"])
    fused = m(b["input_ids"], b["attention_mask"], b["labels"]).loss
    plain = m.model(input_ids=b["input_ids"][:, 0], attention_mask=b["attention_mask"][:, 0],
                    labels=b["labels"]).loss
    assert torch.equal(fused, plain)


@pytest.mark.parametrize("num_beams", [1, 3])
@torch.no_grad()
def test_one_passage_generation_is_the_plain_generation(tiny_path, num_beams):
    m = fid(tiny_path, num_beams=num_beams, max_new_tokens=6)
    b = passage_batch(m.tokenizer, [[t] for t in TEXTS], None)
    plain = m.model.generate(input_ids=b["input_ids"][:, 0], attention_mask=b["attention_mask"][:, 0],
                             num_beams=num_beams, max_new_tokens=6)
    expected = m.tokenizer.batch_decode(plain, skip_special_tokens=True)
    assert m.generate(b["input_ids"], b["attention_mask"]) == expected
    assert len(set(expected)) > 1  # the tiny model's outputs depend on the input: the check has teeth


@pytest.mark.parametrize("skip", [False, True])
@torch.no_grad()
def test_fully_masked_passages_change_nothing(tiny_path, skip):
    m = fid(tiny_path, max_new_tokens=6, skip_empty_passages=skip)
    passages = [[TEXTS[0], TEXTS[3]], [TEXTS[1]], [TEXTS[2], TEXTS[4]]]  # the 2nd user has one item
    targets = ["lovely day", "park", "retrieval"]
    tight = passage_batch(m.tokenizer, passages, targets)  # [3, 2, L]: the 2nd user's 2nd passage is padding
    padded = dict(tight)  # two more all-padding passages per example: [3, 4, L]
    for key in ("input_ids", "attention_mask"):
        padded[key] = torch.nn.functional.pad(tight[key], (0, 0, 0, 2), value=0)
    assert padded["attention_mask"][:, 2:].sum() == 0 and padded["attention_mask"][1, 1].sum() == 0
    loss_tight = m(tight["input_ids"], tight["attention_mask"], tight["labels"]).loss
    loss_padded = m(padded["input_ids"], padded["attention_mask"], padded["labels"]).loss
    # equal up to float32 rounding, which depends on the BLAS path: 1.5e-7 relative with MKL's AVX2
    # kernels (0 with AVX-512); attending to the padding would move it by 1.6e-2
    torch.testing.assert_close(loss_padded, loss_tight, rtol=1e-5, atol=0)
    encoded, _ = m.fuse(padded["input_ids"], padded["attention_mask"])
    assert torch.isfinite(encoded.last_hidden_state).all()
    for beams in (1, 3):
        m.hparams.num_beams = beams
        assert m.generate(padded["input_ids"], padded["attention_mask"]) == \
            m.generate(tight["input_ids"], tight["attention_mask"])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_path):
    b = passage_batch(fid(tiny_path).tokenizer, [[TEXTS[0], TEXTS[1]], [TEXTS[2]]], ["day", "park"])
    grads = []
    for ckpt in (False, True):
        m = FiDModule(task="LaMP_7", model_name_or_path=tiny_path, gradient_checkpointing=ckpt).train()
        loss = m(b["input_ids"], b["attention_mask"], b["labels"]).loss
        loss.backward()
        grads.append((loss.detach(), torch.cat([p.grad.flatten() for p in m.model.parameters()])))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    # recomputation takes other kernels: equal up to float noise (~1e-5 relative on this sharp tiny model)
    assert (grads[0][1] - grads[1][1]).norm() / grads[0][1].norm() < 1e-4


def test_optimizer_groups_and_warmup_then_linear_decay(tiny_path):
    m = fid(tiny_path, warmup_ratio=0.1)
    m.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 50})()
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and conf["lr_scheduler"]["interval"] == "step"
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    from transformers import Trainer  # oracle: the decay rule of HF Trainer, which the official script used

    hf_decay = {id(m.model.get_parameter(n)) for n in Trainer.get_decay_parameter_names(None, m.model)}
    assert {id(p) for p in decay["params"]} == hf_decay  # by identity: tied embeddings have several names
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.model.parameters()))
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    warmup = 5  # ceil(0.1 * 50)
    assert lrs[0] == 0.0 and math.isclose(lrs[warmup], 5e-5)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))  # rising
    assert all(a > b for a, b in zip(lrs[warmup:50], lrs[warmup + 1:51]))  # falling
    assert math.isclose(lrs[27], 5e-5 * (50 - 27) / (50 - warmup)) and lrs[50] == 0.0


def test_optimizer_from_the_cli_and_from_python(tiny_path, tmp_path):
    from lamp_fid.data.fake import write_fake_split
    from lamp_fid.train import lightning_main

    for split in ("train", "dev"):
        write_fake_split(tmp_path / "data", "LaMP_7", split, 2, profile_size=(1, 2), words=(3, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = lightning_main([  # the real CLI: one optimizer step, no validation
            "fit", "--data.task", "LaMP_7", "--data.data_dir", str(tmp_path / "data"), "--data.download", "false",
            "--data.cache_dir", str(tmp_path / "cache"), "--data.mode", "none",
            "--runs_dir", str(tmp_path / "runs"),
            "--model.model_name_or_path", tiny_path, "--model.optimizer.lr=0.25", "--trainer.max_steps", "1",
            "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    opt = cli.trainer.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 0.25 and opt.defaults["weight_decay"] == 1e-4  # default kept, one override
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert PAPER_OPTIMIZER(params).defaults["lr"] == 5e-5  # the default from Python: the same optimizer
    sgd = FiDModule(model_name_or_path=tiny_path, optimizer=partial(torch.optim.SGD, lr=0.5))
    assert isinstance(sgd.optimizer(params), torch.optim.SGD)


@torch.no_grad()
def test_label_decoding_picks_the_most_likely_label(tiny_path):
    m = fid(tiny_path, task="LaMP_3", decoding="labels")
    task = get_task("LaMP_3")
    b = passage_batch(m.tokenizer, [[t] for t in TEXTS], None)
    chosen = m.generate(b["input_ids"], b["attention_mask"])
    for i, text in enumerate(TEXTS):  # oracle: the plain model's mean token loss times the label length
        scores = []
        for label in task.labels:
            ids = m.tokenizer([label], return_tensors="pt")["input_ids"]
            one = slice(i, i + 1)
            loss = m.model(input_ids=b["input_ids"][one, 0], attention_mask=b["attention_mask"][one, 0],
                           labels=ids).loss
            scores.append(-loss.item() * ids.shape[1])
        best = max(range(len(scores)), key=scores.__getitem__)
        assert sorted(scores)[-1] - sorted(scores)[-2] > 1e-4  # no near-tie that float noise could flip
        assert chosen[i] == task.labels[best]


def test_label_decoding_needs_a_label_set(tiny_path):
    with pytest.raises(LaMPError, match="label set"):
        FiDModule(task="LaMP_4", model_name_or_path=tiny_path, decoding="labels")


def test_unloadable_model_is_a_one_line_error(tmp_path):
    with pytest.raises(LaMPError, match="cannot load model"):
        FiDModule(model_name_or_path=str(tmp_path / "nothing here"))


def movie_examples(n: int, k: int = 2) -> list[dict]:
    labels = get_task("LaMP_2").labels
    return [{"id": f"m{i}", "passages": [TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % k)],
             "target": labels[i % 4]} for i in range(n)]


def oracle_classification(preds: dict, examples: list[dict]) -> tuple[float, float]:
    task = get_task("LaMP_2")
    y_true = [task.label_index(e["target"]) for e in examples]
    y_pred = [task.label_index(preds[e["id"]]) for e in examples]
    return (accuracy_score(y_true, y_pred),
            f1_score(y_true, y_pred, labels=list(range(len(task.labels))), average="macro", zero_division=0))


def test_fit_validate_and_test_log_the_official_metrics(tiny_path):
    """Only what is deterministic on every machine: fit trains, the official keys are logged, and their
    values are the official metrics of the logged predictions (whatever a tiny model predicts)."""
    torch.manual_seed(0)
    m = FiDModule(task="LaMP_2", model_name_or_path=tiny_path, decoding="labels",
                  optimizer=partial(torch.optim.AdamW, lr=1e-2))
    assert all(mod.training for mod in m.modules())  # dropout must be active in fit
    before = [p.detach().clone() for p in m.parameters()]
    train = passage_loader(m.tokenizer, movie_examples(8), batch_size=4)
    dev_examples = movie_examples(7)
    golds = [e["target"] for e in dev_examples]
    dev = passage_loader(m.tokenizer, dev_examples, batch_size=3)
    trainer = quiet_trainer(max_epochs=2, log_every_n_steps=1)
    trainer.fit(m, train, dev)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))  # the optimizer stepped
    logged = trainer.callback_metrics
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "val/accuracy", "val/f1"} <= set(logged)
    assert list(m.predictions) == [e["id"] for e in dev_examples]
    assert set(m.predictions.values()) <= set(get_task("LaMP_2").labels)  # label decoding
    official = score("LaMP_2", list(m.predictions.values()), golds)
    assert {k: logged[f"val/{k}"].item() for k in official} == official
    acc, f1 = oracle_classification(m.predictions, dev_examples)
    assert math.isclose(official["accuracy"], acc) and math.isclose(official["f1"], f1, abs_tol=1e-12)

    results = trainer.test(m, dev, verbose=False)[0]
    official = score("LaMP_2", list(m.predictions.values()), golds)
    assert {k: results[f"test/{k}"] for k in official} == official
    acc, f1 = oracle_classification(m.predictions, dev_examples)
    assert math.isclose(results["test/accuracy"], acc) and math.isclose(results["test/f1"], f1, abs_tol=1e-12)
    assert "test/loss" in results


def test_zero_shot_test_needs_no_fit_and_no_golds(tiny_path):
    m = FiDModule(task="LaMP_3", model_name_or_path=tiny_path, num_beams=2, max_new_tokens=4)
    examples = [{"id": f"r{i}", "passages": [TEXTS[i]], "target": None} for i in range(4)]
    results = quiet_trainer().test(m, passage_loader(m.tokenizer, examples, batch_size=3), verbose=False)[0]
    assert results == {}  # no golds: no loss, no metrics, and no crash
    assert list(m.predictions) == ["r0", "r1", "r2", "r3"]
    gold = [{**e, "target": "3"} for e in examples]
    results = quiet_trainer().test(m, passage_loader(m.tokenizer, gold, batch_size=3), verbose=False)[0]
    assert {"test/loss", "test/MAE", "test/RMSE"} <= set(results)


# --- eval epochs: one gather, then the official metrics (moved from test_metrics.py, where they tested
# the torchmetrics LaMPMetric that FiDModule used next to its own gather of the predictions) ----------

def scripted(m: FiDModule, outputs: list[str]) -> FiDModule:
    """Make ``m`` decode ``outputs`` in order, whatever its inputs: the metrics path is under test."""
    it = iter(outputs)
    m.decode = lambda encoded, mask: [next(it) for _ in range(mask.shape[0])]
    return m


def rows_of(golds: list[str], ids: list[str] | None = None) -> list[dict]:
    ids = ids or [f"q{i}" for i in range(len(golds))]
    return [{"id": i, "passages": [TEXTS[n % len(TEXTS)]], "target": g}
            for n, (i, g) in enumerate(zip(ids, golds))]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_metric_equals_score(tiny_path, task):
    preds, golds = task_data(task, 53)
    m = scripted(fid(tiny_path, task=task), preds)
    results = quiet_trainer().test(m, passage_loader(m.tokenizer, rows_of(golds), batch_size=8), verbose=False)[0]
    want = score(task, preds, golds)
    assert [k for k in results if k != "test/loss"] == [f"test/{k}" for k in want]
    for k in want:
        assert results[f"test/{k}"] == pytest.approx(want[k], abs=1e-12)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_metric_counts_duplicated_ids_once(tiny_path, task):
    preds, golds = task_data(task, 20, seed=3)
    rows = rows_of(golds)
    m = scripted(fid(tiny_path, task=task), preds + preds[:5])
    loader = passage_loader(m.tokenizer, rows + rows[:5], batch_size=8)  # e.g. DistributedSampler's padding
    results = quiet_trainer().test(m, loader, verbose=False)[0]
    want = score(task, preds, golds)
    for k in want:
        assert results[f"test/{k}"] == pytest.approx(want[k], abs=1e-12)
    assert list(m.predictions) == [r["id"] for r in rows]
    with_dups = score(task, preds + preds[:5], golds + golds[:5])
    assert any(abs(with_dups[k] - want[k]) > 1e-6 for k in want)  # the data can tell the difference


def test_metric_keeps_distinct_ids_with_equal_rows_and_resets(tiny_path):
    m = scripted(fid(tiny_path, task="LaMP_1"), ["[1]", "[1]", "[2]", "[2]"])
    data = passage_loader(m.tokenizer, rows_of(["[1]", "[1]", "[1]"], ["a", "b", "c"]))
    assert quiet_trainer().test(m, data, verbose=False)[0]["test/accuracy"] == pytest.approx(2 / 3)
    data = passage_loader(m.tokenizer, rows_of(["[2]"], ["d"]))  # the next epoch starts afresh
    assert quiet_trainer().test(m, data, verbose=False)[0]["test/accuracy"] == 1.0
    assert list(m.predictions) == ["d"]


def test_one_gather_per_eval_epoch(tiny_path, monkeypatch):
    """The predictions are gathered once and the metrics computed from them: no torchmetrics state
    that Lightning would gather (and deduplicate) a second time."""
    from torchmetrics import Metric

    from lamp_fid import model as model_module

    calls = []
    gather = model_module.gather_objects
    monkeypatch.setattr(model_module, "gather_objects", lambda obj: calls.append(obj) or gather(obj))
    m = fid(tiny_path, task="LaMP_3", max_new_tokens=2)
    data = passage_loader(m.tokenizer, rows_of(["1", "3", "5"]), batch_size=2)
    results = quiet_trainer().test(m, data, verbose=False)[0]
    assert len(calls) == 1 and {"test/MAE", "test/RMSE"} <= set(results)
    assert not any(isinstance(module, Metric) for module in m.modules())
