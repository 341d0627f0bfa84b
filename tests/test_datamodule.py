"""PassageDataset and PassageCollator: the ``[B, k, L]`` batch contract the model reads, checked on
fake LaMP files and a tiny tokenizer (the real Flan-T5 one too, when its files are beside the repo)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.module import LaMPDataModule, PassageCollator, PassageDataset
from lamp_fid.data.store import LaMPStore
from lamp_fid.prompts import PromptBuilder
from tiny import build_tiny_t5, build_tokenizer

T5_DIR = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    q, o = write_fake_split(root / "data", "LaMP_3", "dev", 6, profile_size=(1, 5), words=(4, 30), seed=2)
    return LaMPStore.open("LaMP_3", q, o, cache_dir=root / "cache", progress=False)


def reversed_rankings(store) -> dict[str, np.ndarray]:
    """Every profile ranked last item first: a ranking no retriever would give by chance."""
    return {ex.id: np.arange(len(ex.profile))[::-1] for ex in store}


# --- PassageDataset -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode,k", [("fid", 2), ("ipa", 3), ("none", 2), ("fid", 0)])
def test_dataset_gives_the_builders_passages_of_the_top_k_items(store, tok, mode, k):
    rankings = reversed_rankings(store)
    builder = PromptBuilder("LaMP_3", tok, 64, mode=mode)
    data = PassageDataset(store, rankings, builder, k, mode)
    assert len(data) == len(store) == 6
    for i, ex in enumerate(store):
        items = data.items_of(ex)
        want = [] if mode == "none" else [ex.profile[int(p)] for p in rankings[ex.id][:k]]
        assert items == want
        got = data[i]
        built = PromptBuilder("LaMP_3", tok, 64, mode=mode).passages(ex.input, want)
        assert got == {"id": ex.id, "passages": built.texts, "fallbacks": built.fallbacks,
                       "retries": built.retries, "target": ex.output}
        assert got["target"] is not None and 1 <= len(got["passages"]) <= max(k, 1)


def test_dataset_without_rankings_or_golds(tmp_path, tok):
    q, _ = write_fake_split(tmp_path / "data", "LaMP_3", "test", 3, profile_size=(2, 3))
    unlabeled = LaMPStore.open("LaMP_3", q, None, cache_dir=tmp_path / "cache", progress=False)
    data = PassageDataset(unlabeled, None, PromptBuilder("LaMP_3", tok, 64, mode="fid"), 2, "fid")
    for i, ex in enumerate(unlabeled):
        assert data[i]["target"] is None and data[i]["passages"] == [ex.input]  # no rankings: the bare input


def test_dataset_counts_budget_fallbacks_per_example(store, tok):
    # 8 tokens: less than one item's overhead (10 tokens here), so no budget factor fits
    data = PassageDataset(store, reversed_rankings(store), PromptBuilder("LaMP_3", tok, 8, mode="fid"), 2, "fid")
    rows = [data[i] for i in range(len(data))]
    assert sum(r["fallbacks"] for r in rows) > 0
    for r, ex in zip(rows, store):
        assert r["fallbacks"] == sum(text == ex.input for text in r["passages"])  # a fallback is the bare input
    batch = PassageCollator(tok, 8, 8)(rows)
    assert batch["fallbacks"] == sum(r["fallbacks"] for r in rows)
    assert batch["retries"] == sum(r["retries"] for r in rows) > 0


# --- PassageCollator ----------------------------------------------------------------------------

def handwritten_collate(tokenizer, examples, max_length, max_target_length):
    """lamp-fid 0.1's collator, kept as the oracle: one padded tokenizer call, rows copied into
    ``[B, n, L]`` tensors filled with the pad id and zero masks."""
    flat = [p for ex in examples for p in ex["passages"]]
    enc = tokenizer(flat, max_length=max_length, truncation=True, padding="longest", return_tensors="pt")
    n = max(len(ex["passages"]) for ex in examples)
    B, L = len(examples), enc["input_ids"].shape[1]
    input_ids = torch.full((B, n, L), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, n, L), dtype=torch.long)
    row = 0
    for b, ex in enumerate(examples):
        m = len(ex["passages"])
        input_ids[b, :m] = enc["input_ids"][row:row + m]
        attention_mask[b, :m] = enc["attention_mask"][row:row + m]
        row += m
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    targets = [ex["target"] for ex in examples]
    if all(t is not None for t in targets):
        lab = tokenizer(targets, max_length=max_target_length, truncation=True, padding="longest",
                        return_tensors="pt")
        out["labels"] = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
    return out


def random_examples(rng: random.Random, words: list[str], labeled: bool = True) -> list[dict]:
    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [{"id": f"e{b}", "passages": [text(0, 40) for _ in range(rng.randint(1, 4))],
             "target": text(1, 12) if labeled else None} for b in range(rng.randint(1, 6))]


def tokenizers(tok):
    yield tok
    if T5_DIR.exists():
        from transformers import AutoTokenizer

        yield AutoTokenizer.from_pretrained(T5_DIR)


@pytest.mark.parametrize("seed", range(8))
def test_collator_batches_are_bit_identical_to_the_handwritten_pad(tok, seed):
    rng = random.Random(seed)
    words = "what a lovely day the city council approved park 東京 é [1] sci-fi 12345 , .".split()
    for tokenizer in tokenizers(tok):
        for max_length, max_target in ((512, 128), (9, 4)):  # the second cuts most passages and targets
            examples = random_examples(rng, words, labeled=seed % 3 != 0)
            got = PassageCollator(tokenizer, max_length, max_target)(examples)
            want = handwritten_collate(tokenizer, examples, max_length, max_target)
            for key, value in want.items():
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
            assert ("labels" in got) == ("labels" in want)


def test_collator_shapes_padding_passages_and_labels(tok):
    examples = [{"id": "a", "passages": ["what a lovely day", "park"], "target": "sci-fi"},
                {"id": "b", "passages": ["the city council approved the new park today"], "target": "[1]"},
                {"id": "c", "passages": ["a", "b", "c"], "target": "comedy"}]
    batch = PassageCollator(tok, 512, 128)(examples)
    B, n, L = batch["input_ids"].shape
    assert (B, n) == (3, 3) and batch["attention_mask"].shape == (3, 3, L)
    assert L == max(len(tok(p)["input_ids"]) for ex in examples for p in ex["passages"])
    mask, ids = batch["attention_mask"], batch["input_ids"]
    for b, ex in enumerate(examples):
        for j in range(n):
            if j < len(ex["passages"]):
                want = tok(ex["passages"][j])["input_ids"]
                assert ids[b, j, :len(want)].tolist() == want and mask[b, j].sum() == len(want)
            else:  # a padding passage: all-zero mask, pad ids only
                assert mask[b, j].sum() == 0 and bool((ids[b, j] == tok.pad_token_id).all())
    assert batch["ids"] == ["a", "b", "c"] and batch["targets"] == ["sci-fi", "[1]", "comedy"]
    labels = batch["labels"]
    for b, ex in enumerate(examples):
        want = tok(ex["target"])["input_ids"]
        assert labels[b, :len(want)].tolist() == want and bool((labels[b, len(want):] == -100).all())
    assert (batch["fallbacks"], batch["retries"]) == (0, 0)


def test_collator_cuts_passages_and_targets_on_the_right(tok):
    long = " ".join(["what a lovely day"] * 20)
    batch = PassageCollator(tok, 7, 3)([{"id": "a", "passages": [long], "target": long}])
    full = tok(long)["input_ids"]
    assert batch["input_ids"][0, 0].tolist() == full[:6] + [tok.eos_token_id]  # T5 keeps its </s>
    assert batch["labels"][0].tolist() == full[:2] + [tok.eos_token_id]


def test_collator_without_golds_has_no_labels(tok):
    unlabeled = [{"id": "a", "passages": ["x"], "target": None}, {"id": "b", "passages": ["y"], "target": "z"}]
    batch = PassageCollator(tok, 512, 128)(unlabeled)  # one example without gold: none are scored
    assert "labels" not in batch and batch["targets"] is None and batch["ids"] == ["a", "b"]


# --- LaMPDataModule -----------------------------------------------------------------------------

def test_datamodule_setup_gives_contract_batches(tmp_path):
    model = build_tiny_t5(tmp_path / "tiny")
    for split in ("train", "dev"):
        write_fake_split(tmp_path / "data", "LaMP_2", split, 5, profile_size=(1, 4), words=(4, 12), seed=1)
    dm = LaMPDataModule(task="LaMP_2", data_dir=tmp_path / "data", download=False, cache_dir=tmp_path / "cache",
                        tokenizer=str(model), k=3, mode="fid", batch_size=2, max_length=48,
                        token_cache=False)  # PassageDataset + PassageCollator (test_tokens: the cache)
    dm.setup("fit")
    assert isinstance(dm.datasets["dev"], PassageDataset)
    batch = next(iter(dm.val_dataloader()))
    B, n, L = batch["input_ids"].shape
    assert B == 2 and 1 <= n <= 3 and L <= 48 and batch["labels"].shape[0] == 2
    assert batch["ids"] == dm.datasets["dev"].store.ids[:2]
    assert batch["targets"] == [dm.datasets["dev"].store[i].output for i in range(2)]
