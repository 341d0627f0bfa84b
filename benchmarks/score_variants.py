"""Which passage score separates the useful items: fid, atlas or pdist, from the same reader?

Reads a finished (or running) ``lamp-fid demo-distill`` folder, takes a loop round's reader (round 0:
the BM25 reader) and scores the dev questions of the words-mislead task three times through
``lamp-fid predict --model.passage_scores <variant>`` over the top 16 (every item of a profile), then
prints recall@4 of the useful items in the **reader's own order** for each variant (the order the
encoder is distilled towards), beside BM25's order and a random order. Also the wall time of each
scoring pass (400 questions x 16 candidates, one thread): the cost of the variants side by side.

    python3 benchmarks/score_variants.py --demo_dir demo_runs/distill [--round 0]

Numbers in benchmarks/RESULTS.md ("Distillation demo").
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
from lamp_fid.distill.loop import read_useful, reader_order, score_split
from lamp_fid.distill.quality import mean_recall_at_k
from lamp_fid.distill.scores import VARIANTS, read_scores
from lamp_fid.retrieval.rank import get_rankings

K, CANDIDATES = 4, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo_dir", type=Path, default=Path("demo_runs/distill"))
    parser.add_argument("--round", type=int, default=0, help="the loop round whose reader scores")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    words = args.demo_dir / "words"
    loop = words / "loop"
    settings = json.loads((loop / "loop_settings.json").read_text())
    run_dir = loop / f"round{args.round}" / "reader"
    checkpoint = json.loads((run_dir / "results.json").read_text())["best_checkpoint"]
    data_dir, cache = words / "LaMP", words / "cache"
    dev = LaMPStore.open_split(data_dir, "LaMP_2", "dev", cache_dir=cache)
    useful = read_useful(useful_path(data_dir, "dev"))
    retriever = "bm25" if args.round == 0 else "dense"
    encoder = settings["encoder"] if args.round == 0 else str(loop / f"round{args.round - 1}" / "encoder")
    rk = get_rankings(dev, retriever, cache_dir=cache, encoder=encoder, progress=False)
    ranked = {ex.id: rk.item_ids(ex) for ex in dev}
    rand = {q: random.Random(q).sample(items, len(items)) for q, items in ranked.items()}
    overrides = [*settings["overrides"], "--data.retriever", retriever, "--data.encoder", encoder]
    rows = [f"| retriever ({retriever}) | {mean_recall_at_k(ranked, useful, K):.4f} | - |",
            f"| random | {mean_recall_at_k(rand, useful, K):.4f} | - |"]
    out_dir = args.demo_dir / "score_variants"
    out_dir.mkdir(exist_ok=True)
    for variant in VARIANTS:
        out = out_dir / f"round{args.round}-{variant}.json"
        t = time.time()
        score_split(run_dir, checkpoint, "dev", CANDIDATES, out, overrides, variant)
        seconds = time.time() - t
        recall = mean_recall_at_k(reader_order(read_scores(out), ranked), useful, K)
        rows.append(f"| reader's {variant} scores | {recall:.4f} | {seconds:.0f} |")
    print(f"\nround {args.round} reader ({run_dir}), dev, {len(ranked)} questions, top {CANDIDATES}\n")
    print("\n".join([f"| order | recall@{K} of useful items | scoring wall time (s) |", "|---|---|---|", *rows]))


if __name__ == "__main__":
    main()
