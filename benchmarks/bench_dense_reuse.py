"""Dense ranking reuse across files: items embedded for dev after train on a generated time split.

Generates a LaMP_7-like time split with ``lamp_fid.data.fake.fake_examples`` (``--users`` users with
``--questions`` questions each sharing most of the user's profile items, as the time split's files do):
each user's first questions go to train, the last to dev, whose profile also gets ``--new`` items
train never saw (the user's newer history). Then ranks with the dense retriever (a random-weight BERT
of ``--layers`` x ``--hidden`` with a word-level tokenizer trained on the data: the saving does not
depend on the weights) through ``get_rankings``:

  cold   dev alone, empty caches: every distinct dev item text embedded
  train  train, empty caches (fills the embedding cache)
  warm   dev after train: only the dev items train did not have are embedded

and prints the distinct item texts embedded for dev in each case, the fraction, and the wall times.

    python benchmarks/bench_dense_reuse.py                 # the numbers in RESULTS.md
    python benchmarks/bench_dense_reuse.py --users 20      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def write_time_split(folder: Path, users: int, questions: int, profile: tuple[int, int], new: int,
                     seed: int = 0) -> dict[str, Path]:
    from lamp_fid.data.fake import fake_examples

    records = [q for q, _ in fake_examples("LaMP_7", users * questions, profile_size=profile, words=(5, 30),
                                           seed=seed, questions_per_user=questions)]
    fresh = [q["profile"] for q, _ in fake_examples("LaMP_7", users, profile_size=(new, new), words=(5, 30),
                                                    seed=seed + 1)]
    split = {"train": [], "dev": []}
    for u in range(users):
        mine = records[u * questions:(u + 1) * questions]
        split["train"] += mine[:-1]
        split["dev"].append({**mine[-1], "profile": mine[-1]["profile"] + fresh[u]})
    paths = {}
    for name, rows in split.items():
        paths[name] = folder / f"{name}_questions.json"
        paths[name].write_text(json.dumps(rows))
    return paths


def build_encoder(folder: Path, texts: list[str], layers: int, hidden: int) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special, vocab_size=8000))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--questions", type=int, default=4, help="questions per user (the last one: dev)")
    parser.add_argument("--profile", type=int, nargs=2, default=(40, 120))
    parser.add_argument("--new", type=int, default=8, help="items per dev profile that train never saw")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lamp_fid.data.store import LaMPStore
    from lamp_fid.retrieval.base import item_texts
    from lamp_fid.retrieval.dense import DenseRetriever
    from lamp_fid.retrieval.rank import get_rankings

    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {args.threads}, load {os.getloadavg()[0]:.1f}")
    embedded: list[int] = []
    embed = DenseRetriever.embed

    def counting(self, texts, desc="embed", *a, **kw):
        if "item" in desc:
            embedded.append(len(texts))
        return embed(self, texts, desc, *a, **kw)

    DenseRetriever.embed = counting
    tmp = Path(tempfile.mkdtemp(prefix="bench-dense-"))
    try:
        paths = write_time_split(tmp, args.users, args.questions, tuple(args.profile), args.new)
        stores = {k: LaMPStore.open("LaMP_7", p, None, cache_dir=tmp / "store", progress=False)
                  for k, p in paths.items()}
        texts = {k: {t for ex in s for t in item_texts(s.task, ex)} for k, s in stores.items()}
        encoder = build_encoder(tmp / "encoder", sorted(texts["train"] | texts["dev"]), args.layers, args.hidden)
        print(f"time split: {len(stores['train'])} train / {len(stores['dev'])} dev questions; distinct item "
              f"texts: train {len(texts['train'])}, dev {len(texts['dev'])} ({len(texts['dev'] - texts['train'])}"
              f" not in train); encoder: random BERT {args.layers} x {args.hidden}")

        def rank(split: str, cache: Path) -> tuple[float, int]:
            before = len(embedded)
            t0 = time.perf_counter()
            get_rankings(stores[split], "dense", encoder=encoder, cache_dir=cache, progress=False)
            return time.perf_counter() - t0, sum(embedded[before:])

        cold = rank("dev", tmp / "cold")
        train = rank("train", tmp / "warm")
        warm = rank("dev", tmp / "warm")
        print(f"  cold  dev alone:       {cold[1]:6d} item texts embedded, {cold[0]:6.2f} s")
        print(f"  train (fills cache):   {train[1]:6d} item texts embedded, {train[0]:6.2f} s")
        print(f"  warm  dev after train: {warm[1]:6d} item texts embedded, {warm[0]:6.2f} s")
        print(f"  dev items embedded after train: {warm[1] / cold[1]:.3f} of them "
              f"({warm[1]}/{cold[1]}); dev ranking time {warm[0] / cold[0]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
