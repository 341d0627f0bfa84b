"""``lamp-fid demo-distill``: the reader -> retriever distillation loop on generated data, offline.

It generates the words-mislead task (:mod:`lamp_fid.data.demo_words`: the useful profile items share
meaning but no words with the input, other items share words but not meaning), its word-level tokenizer,
a tiny T5 and a small random BERT-style encoder, and runs:

* the distillation loop (``lamp-fid distill-loop``) from BM25: round 0's reader reads BM25's top k, its
  passage scores train the encoder, rounds 1 and 2 read with the distilled encoder;
* one reader with the untrained encoder (dense retrieval before any distillation);
* on the demo's own LaMP_2 data (where BM25 works) one round: BM25 vs the encoder distilled from it.

and writes one table and one plot (``<output_dir>/demo_distill.md``, ``.json``, ``.png``): recall@4 of
the useful items and the FiD dev metrics for each retriever, and whether the issue's targets are met.
Every loop is restartable, so an interrupted demo resumes. Not part of ``lamp-fid demo`` (it takes
longer): see docs/distill.md#demo.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write

MANIFEST = "demo_words_manifest.json"
RECALL_K = 4
CANDIDATES = 16
PROFILE = (8, 16)  # with at most 16 items the reader scores every item of a profile


def words_material(out: Path, seed: int, users: tuple[int, int] = (200, 50), tags: str = "theme") -> dict:
    """The words-mislead task, tokenizer, tiny T5 and untrained encoder in ``out`` (skipped when the
    manifest says they are there with the same settings)."""
    from lamp_fid.data.demo import DEMO_MODEL, build_tiny_t5, build_tokenizer
    from lamp_fid.data.demo_words import DEMO_ENCODER, FORMAT_VERSION, build_demo_encoder, generate_words_data, useful_path

    settings = {"format_version": FORMAT_VERSION, "seed": seed, "model": DEMO_MODEL, "encoder": DEMO_ENCODER,
                "profile_size": list(PROFILE), "users": list(users), "tags": tags}
    paths = {"data_dir": out / "LaMP", "model": out / "tiny-t5", "encoder": out / "encoder"}
    manifest = out / MANIFEST
    try:
        done = json.loads(manifest.read_text(encoding="utf-8")) == settings
    except (OSError, ValueError):
        done = False
    if not done:
        if manifest.exists():
            manifest.unlink()  # a half-rebuilt folder must not look finished
        generate_words_data(paths["data_dir"], seed=seed, profile_size=PROFILE, n_train_users=users[0],
                            n_dev_users=users[1], tags=tags)
        build_tokenizer(paths["data_dir"], paths["model"])
        build_tiny_t5(paths["model"], paths["model"], seed=seed, **DEMO_MODEL)
        build_demo_encoder(paths["model"], paths["encoder"], seed=seed)
        atomic_write(manifest, json.dumps(settings), overwrite=True)
    return {**paths, "useful": useful_path(paths["data_dir"], "dev")}


def lamp2_material(out: Path, seed: int) -> dict:
    """The demo's LaMP_2 data and tiny T5 (``lamp-fid demo-data``) and an untrained encoder over its
    tokenizer."""
    from lamp_fid.data.demo import demo_data
    from lamp_fid.data.demo_words import build_demo_encoder

    made = demo_data(out / "data", tasks=["LaMP_2"], seed=seed)
    encoder = out / "encoder"
    if not (encoder / "config.json").exists():
        build_demo_encoder(made["model_dir"], encoder, seed=seed)
    return {"data_dir": Path(made["data_dir"]), "model": Path(made["model_dir"]), "encoder": encoder}


def _overrides(material: dict, cache: Path, seed: int, overrides: list[str]) -> list[str]:
    return [f"--data.data_dir={material['data_dir']}", f"--data.cache_dir={cache}",
            f"--model.model_name_or_path={material['model']}", f"--seed_everything={seed}", *overrides]


def _row(name: str, record: dict, recall: bool) -> dict:
    m = record.get("metrics") or {}
    return {"retriever": name, f"recall@{RECALL_K}": record.get(f"recall@{RECALL_K}") if recall else None,
            "accuracy": m.get("val/accuracy"), "f1": m.get("val/f1"), "ndcg_dev": record.get("ndcg_dev")}


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _verdict(words: list[dict], lamp2: list[dict] | None) -> list[str]:
    """The issue's targets, one line each, with the numbers."""
    key = f"recall@{RECALL_K}"
    bm25, distilled = words[0], words[2:]
    best = max(distilled, key=lambda r: r[key])
    lines = [f"{'MET' if best[key] >= bm25[key] + 0.20 else 'NOT MET'}: distilled {key} {best[key]:.4f} "
             f"({best['retriever']}) vs BM25 {bm25[key]:.4f} (target: at least +0.20)"]
    acc = max(distilled, key=lambda r: r["accuracy"])
    lines.append(f"{'MET' if acc['accuracy'] > bm25['accuracy'] else 'NOT MET'}: FiD dev accuracy with the "
                 f"distilled encoder {acc['accuracy']:.4f} ({acc['retriever']}) vs BM25 {bm25['accuracy']:.4f}")
    if lamp2:
        b, d = lamp2
        ok = d["accuracy"] >= b["accuracy"] and d["f1"] >= b["f1"]
        lines.append(f"{'MET' if ok else 'NOT MET'}: demo LaMP_2 (BM25 works there): distilled accuracy/F1 "
                     f"{d['accuracy']:.4f}/{d['f1']:.4f} vs BM25 {b['accuracy']:.4f}/{b['f1']:.4f} (target: not worse)")
    return lines


def _plot(words: list[dict], lamp2: list[dict] | None, path: Path, scores: str) -> bool:
    from lamp_fid.report import _png, _pyplot

    plt = _pyplot()
    if plt is None:
        return False
    panels = [("words-mislead task (dev)", words, [f"recall@{RECALL_K}", "accuracy", "f1"])]
    if lamp2:
        panels.append(("demo LaMP_2 (dev)", lamp2, ["accuracy", "f1"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, rows, keys) in zip(axes[0], panels):
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
            ax.bar(xs, [r[key] or 0 for r in rows], width, label=key)
        ax.set_xticks(range(len(rows)), [r["retriever"] for r in rows], fontsize=8, rotation=12)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"FiD reader -> retriever distillation ({scores} scores; higher is better)", fontsize=11)
    fig.tight_layout()
    atomic_write(path, _png(fig), overwrite=True)
    plt.close(fig)
    return True


def demo_distill(output_dir: Path = Path("demo_runs/distill"), seed: int = 0, rounds: int = 2,
                 scores: Literal["fid", "atlas", "pdist"] = "pdist", encoder_steps: int = 300, encoder_lr: float = 1e-3,
                 temperature: float = 1.0, lamp2: bool = True, users: tuple[int, int] = (200, 50),
                 tags: Literal["theme", "any"] = "theme", threads: int = 1,
                 overrides: list[str] = [], overwrite: bool = False) -> dict:  # noqa: B006
    """Offline demo: BM25 vs the untrained and the distilled encoder where words mislead BM25.

    Also one round on the demo's LaMP_2 data, where they do not (see docs/distill.md#demo).

    Args:
        output_dir: folder of the demo: words/ (the generated task, model, encoder, loops), lamp2/ (the
            LaMP_2 demo's), and demo_distill.md / .json / .png (the table and plot).
        seed: seed of the data, the models' initialisation and the training order.
        rounds: distillation rounds on the words task (the table shows every round).
        scores: the reader's passage scores the encoder learns from: pdist (default: the gold output's
            log-likelihood reading one passage at a time, Atlas's perplexity distillation), atlas
            (attention of the gold output weighted by value norms) or fid (first decoded token's
            cross-attention; see docs/distill.md). The demo's tiny reader's attention hardly separates
            the useful items (docs/distill.md#demo-results), hence pdist.
        encoder_steps: encoder optimizer steps per round (batches of 16 questions).
        encoder_lr: encoder learning rate (the encoder is trained from scratch, hence higher than FiD's 1e-4).
        temperature: reader scores are divided by it before the softmax.
        lamp2: also run BM25 vs one distillation round on the demo's LaMP_2 data.
        users: train and dev users of the words task (15 and 8 questions each).
        tags: the words task's personal tags: theme (one of the theme's three) or any (any of the 15,
            so that only the items' content tells which are useful).
        threads: torch threads (1 is fastest on a busy 2-core machine, see lamp-fid demo --help).
        overrides: extra `lamp-fid fit` options for every reader, e.g. ["--trainer.max_steps=100"].
        overwrite: replace an existing demo table and restart loops made with other settings.
    """
    import torch

    from lamp_fid.distill.loop import distill_loop
    from lamp_fid.paper import CONFIGS_DIR

    output_dir = Path(output_dir)
    out_md = output_dir / "demo_distill.md"
    if out_md.exists() and not overwrite:
        raise LaMPError(f"{out_md} exists: pass --overwrite true to write the demo's table again")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise LaMPError(f"--threads: {threads!r} is not a thread count (1 or more)")
    if rounds < 1:
        raise LaMPError(f"--rounds: {rounds!r}: the demo needs at least one distillation round")
    config = CONFIGS_DIR / "demo_lamp2.yaml"
    encoder_args = {"steps": encoder_steps, "batch_size": 16, "lr": encoder_lr, "temperature": temperature,
                    "eval_every": 50, "seed": seed, "scores": scores, "candidates": CANDIDATES,
                    "recall_k": RECALL_K, "overwrite": overwrite}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start, times = time.time(), {}
    try:
        t = time.time()
        words = words_material(output_dir / "words", seed, tuple(users), tags)
        args = {**encoder_args, "fit_config": config, "useful_items": words["useful"],
                "overrides": _overrides(words, output_dir / "words" / "cache", seed, list(map(str, overrides)))}
        loop = distill_loop(loop_dir=output_dir / "words" / "loop", rounds=rounds, retriever="bm25",
                            encoder=str(words["encoder"]), **args)
        untrained = distill_loop(loop_dir=output_dir / "words" / "untrained", rounds=0, retriever="dense",
                                 encoder=str(words["encoder"]), **args)
        times["words task"] = round(time.time() - t, 1)
        lamp2_loop = None
        if lamp2:
            t = time.time()
            material = lamp2_material(output_dir / "lamp2", seed)
            lamp2_loop = distill_loop(
                **{**encoder_args, "fit_config": config, "loop_dir": output_dir / "lamp2" / "loop", "rounds": 1,
                   "retriever": "bm25", "encoder": str(material["encoder"]),
                   "overrides": _overrides(material, output_dir / "lamp2" / "cache", seed, list(map(str, overrides)))})
            times["LaMP_2"] = round(time.time() - t, 1)
    finally:
        torch.set_num_threads(previous)
    wall = time.time() - start

    rows = [_row("BM25", loop["rounds"][0], True), _row("untrained encoder", untrained["rounds"][0], True)]
    rows += [_row(f"distilled, round {r['round']}", r, True) for r in loop["rounds"][1:]]
    lamp2_rows = ([_row("BM25", lamp2_loop["rounds"][0], False), _row("distilled, round 1", lamp2_loop["rounds"][1], False)]
                  if lamp2_loop else None)
    verdict = _verdict(rows, lamp2_rows)
    key = f"recall@{RECALL_K}"
    lines = [f"| retriever | {key} of useful items | dev accuracy | dev F1 | nDCG vs reader |", "|---|---|---|---|---|"]
    lines += [f"| {r['retriever']} | {_num(r[key])} | {_num(r['accuracy'])} | {_num(r['f1'])} | {_num(r['ndcg_dev'])} |"
              for r in rows]
    text = ["# lamp-fid distillation demo (dev split of generated data)", "",
            f"Seed {seed}; {threads} torch thread(s); reader: the demo's tiny T5, FiD k = 4 (separate layout); "
            f"encoder: random BERT-style ({scores} scores over the top {CANDIDATES}, {encoder_steps} steps per round).",
            "", "Words-mislead task:", "", *lines, ""]
    if lamp2_rows:
        text += ["Demo LaMP_2 (BM25 works there):", "", "| retriever | dev accuracy | dev F1 | nDCG vs reader |",
                 "|---|---|---|---|"]
        text += [f"| {r['retriever']} | {_num(r['accuracy'])} | {_num(r['f1'])} | {_num(r['ndcg_dev'])} |"
                 for r in lamp2_rows]
        text.append("")
    text += [*verdict, "", f"Wall time: {wall:.0f} s ({', '.join(f'{k}: {v:.0f} s' for k, v in times.items())})."]
    plotted = _plot(rows, lamp2_rows, output_dir / "demo_distill.png", scores)
    result = {"seed": seed, "threads": threads, "scores": scores, "words": rows, "lamp2": lamp2_rows,
              "verdict": verdict, "wall_s": wall, "times_s": times,
              "plot": str(output_dir / "demo_distill.png") if plotted else None,
              "loops": {"words": str(output_dir / "words" / "loop"), "untrained": str(output_dir / "words" / "untrained"),
                        "lamp2": str(output_dir / "lamp2" / "loop") if lamp2 else None}}
    atomic_write(out_md, "\n".join(text) + "\n", overwrite=True)
    atomic_write(output_dir / "demo_distill.json", json.dumps(result, indent=2) + "\n", overwrite=True)
    print("\n".join(text))
    return result
