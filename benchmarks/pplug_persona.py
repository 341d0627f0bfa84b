"""pplug+fid: soft tokens in front of every passage vs one extra persona passage, beside plain FiD.

On the offline demo's LaMP_3 data (``lamp-fid demo-data``), for each data seed: plain FiD
(configs/demo_lamp3.yaml as it is), and pplug+fid with ``--model.persona every_passage`` and
``extra_passage`` (the tiny T5 is trained from scratch, so ``--model.freeze_lm false``). The user
encoder is a random 2-layer BERT (hidden 64) over the demo's own tokenizer with mean pooling, made
here: no pretrained sentence encoder is needed offline. Prints the best dev MAE / RMSE of each run.

    OMP_NUM_THREADS=1 nice python benchmarks/pplug_persona.py --work /tmp/pplug_persona --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "lamp_fid" / "configs" / "demo_lamp3.yaml"
RUNS = {"fid": [],
        "every_passage": ["--model.persona", "every_passage"],
        "extra_passage": ["--model.persona", "extra_passage"]}


def lamp_fid(*args: str, log: Path) -> None:
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "lamp_fid.cli", *args], check=True, stdout=out, stderr=out,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def user_encoder(tokenizer_dir: Path, path: Path) -> Path:
    """A random 2-layer BERT (hidden 64, seed 0) with the demo's tokenizer, saved to ``path``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/pplug_persona"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        d = args.work / f"seed{seed}"
        lamp_fid("demo-data", "--output_dir", str(d), "--tasks", "[LaMP_3]", "--seed", str(seed),
                 log=args.work / f"demo-data-{seed}.log")
        bert = user_encoder(d / "tiny-t5", d / "user-bert")
        for name, extra in RUNS.items():
            pplug = [] if name == "fid" else ["--data.mode", "pplug+fid", "--model.freeze_lm", "false",
                                              "--data.user_encoder", str(bert), "--data.user_pooling", "mean"]
            start = time.perf_counter()
            lamp_fid("fit", "--config", str(CONFIG), "--data.data_dir", str(d / "LaMP"), "--seed_everything",
                     str(seed), "--data.cache_dir", str(d / "cache"), "--model.model_name_or_path",
                     str(d / "tiny-t5"), "--runs_dir", str(d / "runs"), *pplug, *extra, "--run_name", name,
                     "--trainer.enable_progress_bar", "false", log=d / f"{name}.log")
            result = json.loads((d / "runs" / name / "results.json").read_text())
            rows.append((seed, name, result["metrics"]["val/MAE"], result["metrics"]["val/RMSE"], result["step"],
                         time.perf_counter() - start))
            print(f"seed {seed} {name}: MAE {rows[-1][2]:.4f} RMSE {rows[-1][3]:.4f} "
                  f"(best step {rows[-1][4]}, {rows[-1][5]:.0f} s)", flush=True)
    print("\n| seed | run | dev MAE | dev RMSE | best step | wall s |\n|---|---|---|---|---|---|")
    for seed, name, mae, rmse, step, wall in rows:
        print(f"| {seed} | {name} | {mae:.4f} | {rmse:.4f} | {step} | {wall:.0f} |")


if __name__ == "__main__":
    main()
