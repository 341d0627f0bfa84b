"""What ``--model.passage_scores fid`` adds to ``lamp-fid predict``: the same predict run with and without.

A random T5 with Flan-T5-small's architecture (the config and tokenizer of ../shared/assets/flan-t5-small;
no pretrained weights are needed for a cost measurement) predicts a fake LaMP_3 split through Lightning
(``LaMPDataModule`` with the token cache, FiD, k passages per question, beam search), once with
``passage_scores="none"`` and once with ``"fid"``, alternating (order swapped every repeat) in one
process. The token cache is built in a warm-up run; the timed fid run includes the per-passage item
ids (``LaMPDataModule.passage_items``, computed at setup). Generation is capped at ``--max_new_tokens`` and the random model rarely stops early, so both
variants decode the same number of steps; the predictions are also compared (they must be identical).

    OMP_NUM_THREADS=1 nice python benchmarks/bench_passage_scores.py            # the numbers in RESULTS.md
    python benchmarks/bench_passage_scores.py --questions 4 --repeats 1         # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small"


def build_model(folder: Path) -> Path:
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config.from_pretrained(ASSETS)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(ASSETS).save_pretrained(folder)
    return folder


def predict(args, root: Path, model: Path, scores: str) -> tuple[float, float, list]:
    from lightning.pytorch import Trainer

    from lamp_fid.data.module import LaMPDataModule
    from lamp_fid.model import FiDModule

    dm = LaMPDataModule(task="LaMP_3", data_dir=root / "data", cache_dir=root / "cache", download=False,
                        k=args.k, mode="fid", tokenizer=str(model), max_length=args.max_length,
                        batch_size=args.batch_size, predict_split="dev")
    m = FiDModule(task="LaMP_3", model_name_or_path=str(model), num_beams=args.beams,
                  max_new_tokens=args.max_new_tokens, passage_scores=scores)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    wall, cpu = time.perf_counter(), time.process_time()
    out = trainer.predict(m, datamodule=dm)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from lamp_fid.data.fake import write_fake_split

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_split(root / "data", "LaMP_3", "dev", args.questions, profile_size=(args.k, args.k + 10),
                         words=(60, 150), seed=0)
        model = build_model(root / "t5")
        predict(args, root, model, "none")  # warm-up: caches built, code paths loaded
        times: dict[str, list[tuple[float, float]]] = {"none": [], "fid": []}
        outputs = {}
        for r in range(args.repeats):
            for scores in (("none", "fid") if r % 2 == 0 else ("fid", "none")):
                wall, cpu, out = predict(args, root, model, scores)
                times[scores].append((wall, cpu))
                outputs[scores] = out
        same = outputs["none"] == outputs["fid"]
    print(f"LaMP_3 fake dev, {args.questions} questions, k={args.k}, max_length {args.max_length}, "
          f"batch {args.batch_size}, beams {args.beams}, max_new_tokens {args.max_new_tokens}, "
          f"{args.repeats} repeats; predictions identical: {same}")
    print("| passage_scores | median wall s | median CPU s |")
    print("|---|---|---|")
    med = {}
    for scores, values in times.items():
        med[scores] = (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        print(f"| {scores} | {med[scores][0]:.2f} | {med[scores][1]:.2f} |")
    ratios = [f / n for (_, f), (_, n) in zip(times["fid"], times["none"])]
    print(f"CPU time fid / none: median {statistics.median(ratios):.3f} "
          f"(per repeat: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
