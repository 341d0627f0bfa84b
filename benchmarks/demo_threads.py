"""Seconds per training step of the demo's FiD model with 1 vs 2 torch threads, on real demo batches.

Builds the LaMP_2 demo DataModule (FiD, k=4 BM25, separate layout, batch 32: the demo's heaviest
training) from a ``lamp-fid demo-data`` folder, takes the first ``--steps`` training batches, and times
``--steps`` optimizer steps of a fresh copy of the tiny T5 per thread count. Thread counts alternate
(1, 2, 1, 2, ...) ``--rounds`` times in one process, so both see the same background load.

    lamp-fid demo-data --output_dir /tmp/demo0
    python benchmarks/demo_threads.py --data /tmp/demo0 --steps 40 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

from lamp_fid.data.module import LaMPDataModule
from lamp_fid.model import FiDModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a lamp-fid demo-data folder")
    parser.add_argument("--task", default="LaMP_2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    model_dir = str(args.data / "tiny-t5")
    dm = LaMPDataModule(task=args.task, data_dir=args.data / "LaMP", download=False, mode="fid",
                        layout="separate", retriever="bm25", k=4, tokenizer=model_dir, max_length=96,
                        max_target_length=8, batch_size=32, cache_dir=args.data / "cache")
    dm.setup("fit")
    torch.manual_seed(0)
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == args.steps:
            break
    base = FiDModule(task=args.task, model_name_or_path=model_dir, num_beams=1, max_new_tokens=8)

    times: dict[int, list[float]] = {n: [] for n in args.threads}
    for r in range(args.rounds):
        for n in args.threads:
            torch.set_num_threads(n)
            model = copy.deepcopy(base).train()
            opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
            load0, wall0, cpu0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
            for batch in batches:
                loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            times[n].append(wall / len(batches))
            print(json.dumps({"round": r, "threads": n, "steps": len(batches), "wall_s": round(wall, 2),
                              "s_per_step": round(wall / len(batches), 4), "cpu_s": round(cpu, 2),
                              "load_1min_at_start": load0}), flush=True)
    for n, ts in times.items():
        print(f"threads {n}: median {statistics.median(ts):.4f} s/step, min {min(ts):.4f}, max {max(ts):.4f} "
              f"over {len(ts)} rounds of {args.steps} steps")


if __name__ == "__main__":
    main()
