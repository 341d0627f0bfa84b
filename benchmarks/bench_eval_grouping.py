"""Generation time on the demo's dev split: evaluation batches in file order vs sorted by length.

Generates the offline demo's data and tiny T5 (``lamp-fid demo-data``) in a temp folder, then for each
demo task runs ``Trainer.validate`` (greedy generation of the whole dev split, the demo configs' data
settings: FiD k=4 bm25, separate layout, max_length 96, eval batch 64, max_new_tokens from the config)
with ``--data.group_by_length none`` and ``eval``, alternately, ``--repeats`` times each, and reports
the best and median wall time of each, the padding fraction of the ``[B, n, L]`` evaluation batches
(and its floor, one example per batch: the passages of one example are padded to its longest) and whether the prediction files are identical. The model is the demo's tiny T5 as generated
(untrained: its outputs are as long as ``max_new_tokens`` allows, the same in both orders).

    python benchmarks/bench_eval_grouping.py            # the numbers in RESULTS.md
    python benchmarks/bench_eval_grouping.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lamp_fid.paper import CONFIGS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["LaMP_3", "LaMP_2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lightning.pytorch import Trainer

    from lamp_fid.callbacks import LaMPPredictionWriter
    from lamp_fid.data.demo import demo_data
    from lamp_fid.data.module import LaMPDataModule
    from lamp_fid.data.tokens import padding_fraction
    from lamp_fid.model import FiDModule

    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {args.threads}, load {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        made = demo_data(tmp / "data", tasks=args.tasks)
        for task in args.tasks:
            config = yaml.safe_load((CONFIGS_DIR / f"demo_{task.lower().replace('_', '')}.yaml").read_text())
            data = {**config["data"], "data_dir": made["data_dir"], "cache_dir": tmp / "cache",
                    "tokenizer": made["model_dir"]}
            model_opts = {k: v for k, v in config["model"].items() if k in ("num_beams", "max_new_tokens")}
            module = FiDModule(task=data["task"], model_name_or_path=made["model_dir"], **model_opts)
            times: dict[str, list[float]] = {"none": [], "eval": []}
            files, padding = {}, {}
            for r in range(args.repeats):
                for group in ("none", "eval"):
                    dm = LaMPDataModule(**{**data, "group_by_length": group})
                    out = tmp / "out" / f"{task}-{group}-{r}.json"
                    writer = LaMPPredictionWriter(path=str(out), on_validate=True)
                    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                      enable_model_summary=False, callbacks=[writer])
                    dm.setup("validate")  # the token cache is built once, before timing
                    t0 = time.perf_counter()
                    trainer.validate(module, dm, verbose=False)
                    times[group].append(time.perf_counter() - t0)
                    files.setdefault(group, out.read_text())
                    ds = dm.datasets[dm.hparams.val_split]
                    loader = dm.val_dataloader()
                    batches = list(loader.batch_sampler)
                    padding[group] = padding_fraction(ds, batches)
                    padding["floor"] = padding_fraction(ds, [[i] for i in range(len(ds))])
            n = len(LaMPDataModule(**data)._store(data.get("val_split", "dev")))
            print(f"\n{task} dev: {n} examples, eval batch {data['eval_batch_size']}, "
                  f"max_new_tokens {model_opts.get('max_new_tokens')}, greedy")
            for group in ("none", "eval"):
                t = times[group]
                print(f"  group_by_length {group:4}: validate best {min(t):.2f} s, median "
                      f"{statistics.median(t):.2f} s ({n / min(t):.0f} ex/s); padding {padding[group]:.3f}")
            print(f"  padding floor (one example per batch): {padding['floor']:.3f}")
            print(f"  sorted / file order (best): {min(times['eval']) / min(times['none']):.2f}x; "
                  f"prediction files identical: {files['none'] == files['eval']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
