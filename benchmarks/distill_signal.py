"""Where the distillation demo's signal is lost: the reader's scores or the encoder's training?

Reads a finished ``lamp-fid demo-distill`` folder and measures, on the words-mislead task's dev split:

1. per loop round, recall@4 of the useful items in the **reader's own order** (its passage scores over
   the candidates, the distribution the encoder is trained towards) next to the retriever's recall@4 and
   a random order's: the ceiling of what distillation can learn from that reader;
2. the same encoder training as the demo (same start encoder, steps, batch, lr) on **oracle scores**
   (1 for a useful item, 0 for the others, over the same candidates as round 0's reader scored): what
   the encoder side can learn when the signal is clean.

    python3 benchmarks/distill_signal.py --demo_dir demo_runs/distill

Prints one table; numbers in benchmarks/RESULTS.md ("Distillation demo").
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from lamp_fid.data.demo_words import useful_path
from lamp_fid.data.store import LaMPStore
from lamp_fid.distill.loop import read_useful, reader_order
from lamp_fid.distill.quality import mean_recall_at_k
from lamp_fid.distill.scores import read_scores
from lamp_fid.distill.trainer import DistillSettings, load_encoder, questions_from_scores, train_encoder
from lamp_fid.retrieval.rank import get_rankings

K = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo_dir", type=Path, default=Path("demo_runs/distill"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    words = args.demo_dir / "words"
    data_dir, cache = words / "LaMP", words / "cache"
    settings = json.loads((words / "loop" / "loop_settings.json").read_text())
    stores = {s: LaMPStore.open_split(data_dir, "LaMP_2", s, cache_dir=cache) for s in ("train", "dev")}
    useful = {s: read_useful(useful_path(data_dir, s)) for s in ("train", "dev")}
    dev = stores["dev"]

    print(f"| round | retriever recall@{K} | reader-order recall@{K} | random-order recall@{K} |")
    print("|---|---|---|---|")
    rounds = json.loads((words / "loop" / "results.json").read_text())["rounds"]
    for r in rounds:
        rk = get_rankings(dev, r["retriever"], cache_dir=cache, encoder=r["encoder"] or settings["encoder"],
                          progress=False)
        ranked = {ex.id: rk.item_ids(ex) for ex in dev}
        scores = read_scores(words / "loop" / f"round{r['round']}" / "scores-dev.json")
        rand = {q: random.Random(q).sample(items, len(items)) for q, items in ranked.items()}
        print(f"| {r['round']} ({r['retriever_label']}) | {mean_recall_at_k(ranked, useful['dev'], K):.4f} | "
              f"{mean_recall_at_k(reader_order(scores, ranked), useful['dev'], K):.4f} | "
              f"{mean_recall_at_k(rand, useful['dev'], K):.4f} |")

    # oracle scores over round 0's candidates, the demo's encoder training
    cand = {s: read_scores(words / "loop" / "round0" / f"scores-{s}.json") for s in ("train", "dev")}
    oracle = {s: {q: {i: float(i in useful[s][q]) for i in items} for q, items in cand[s].items()}
              for s in cand}
    d = settings["distill"]
    ds = DistillSettings(steps=d["steps"], batch_size=d["batch_size"], lr=d["lr"], weight_decay=d["weight_decay"],
                         warmup_ratio=d["warmup_ratio"], temperature=d["temperature"], eval_every=d["eval_every"],
                         seed=d["seed"])
    model, tok = load_encoder(settings["encoder"])
    t = time.time()
    train_encoder(model, tok, questions_from_scores(stores["train"], "LaMP_2", oracle["train"]), ds,
                  dev=questions_from_scores(dev, "LaMP_2", oracle["dev"]))
    seconds = time.time() - t
    out = args.demo_dir / "oracle-encoder"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    rk = get_rankings(dev, "dense", cache_dir=cache, encoder=str(out), progress=False)
    recall = mean_recall_at_k({ex.id: rk.item_ids(ex) for ex in dev}, useful["dev"], K)
    print(f"\nencoder distilled from oracle scores ({ds.steps} steps, {seconds:.0f} s): dev recall@{K} {recall:.4f}")


if __name__ == "__main__":
    main()
