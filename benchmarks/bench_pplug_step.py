"""PPlug training step vs full fine-tuning of the same LM on the same batches: step time and peak memory.

One random-init T5 of the real Flan-T5 config, with its own lm_head as the checkpoints have
(``--lm small``: ../shared/assets/flan-t5-small/config.json; ``--lm base``: the same with Flan-T5-base's
sizes, d_model 768, d_ff 2048, 12+12 layers, 12 heads) and the same random batches (``--batch`` inputs
of ``--length`` tokens, targets of ``--target`` tokens, ``--items`` frozen history vectors per user,
queries of ``--query`` tokens) in three variants:

  full    the LM alone, every parameter trained (plain input ids): full fine-tuning
  pplug   PPlug as the paper trains it: the LM frozen (requires_grad False, not in the optimizer),
          trained I, Proj_I, Proj and the query encoder; LM input [I'; P; Emb(x)] (lamp_fid.pplug)
  pplug+lm  PPlug with --model.freeze_lm false: the LM trained too

The query encoder is a random BERT of ``--encoder``'s shape: ``bge-base`` (the paper's BGE-base-en-v1.5:
768 hidden, 12 layers, 110 M parameters) or ``minilm`` (all-MiniLM-L6-v2: 384 hidden, 6 layers, 23 M).
A step is forward + backward + AdamW step (lr 1e-4, weight decay 1e-4) + zero_grad(set_to_none).

Each variant runs in a fresh subprocess (one at a time), so its peak memory is its own: ``peak`` is the
process's maximum resident set size (getrusage ru_maxrss: weights, gradients, optimizer state,
activations, plus torch itself); ``setup`` the RSS after building the models and the batches, before the
first step; ``train`` = peak - setup, what training adds. Time: the median of ``--steps`` steps after one
warm-up step. One torch thread unless ``--threads``.

    python benchmarks/bench_pplug_step.py                                   # small, BGE-base shape
    python benchmarks/bench_pplug_step.py --lm base --steps 2               # base
    python benchmarks/bench_pplug_step.py --encoder minilm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

T5_SMALL = Path(__file__).resolve().parents[2] / "shared/assets/flan-t5-small/config.json"
T5_BASE = {"d_model": 768, "d_ff": 2048, "d_kv": 64, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12}
ENCODERS = {
    "bge-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
}
VARIANTS = ("full", "pplug", "pplug+lm")


def rss_mib() -> float:
    """Current resident set size (MiB) from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> dict:
    """Run one variant in this process; return its timings and memory."""
    import torch
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    from lamp_fid.pplug import PersonaPlug, prepend_soft_tokens

    torch.set_num_threads(args.threads)
    config = T5Config.from_json_file(str(T5_SMALL))
    if args.lm == "base":
        for key, value in T5_BASE.items():
            setattr(config, key, value)
    torch.manual_seed(0)
    lm = T5ForConditionalGeneration(config)
    # transformers 5 ties lm_head to the input embeddings for a T5 built from a config; the released
    # Flan-T5 checkpoints keep their own lm_head (docs: ENGINEERING.md), so untie for their real size
    lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone())
    lm.config.tie_word_embeddings = False
    lm.train()
    plug = None
    if args.variant != "full":
        enc = BertModel(BertConfig(vocab_size=30522, **ENCODERS[args.encoder]))
        plug = PersonaPlug(enc, lm.get_input_embeddings(), pooling="cls")
        plug.train()
        if args.variant == "pplug":
            lm.requires_grad_(False)  # frozen: no gradients, no optimizer state
    params = [p for m in (lm, plug) if m is not None for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    g = torch.Generator().manual_seed(1)
    B, L = args.batch, args.length
    ids = torch.randint(3, config.vocab_size, (B, L), generator=g)
    mask = (torch.arange(L) < torch.randint(L // 2, L + 1, (B, 1), generator=g)).long()
    ids = ids * mask
    labels = torch.randint(3, config.vocab_size, (B, args.target), generator=g)
    labels[:, -1] = 1
    query = torch.randint(3, 30522, (B, args.query), generator=g)
    query_mask = torch.ones_like(query)
    hist = torch.nn.functional.normalize(torch.randn(B, args.items, ENCODERS[args.encoder]["hidden_size"],
                                                     generator=g), dim=-1)
    hist_mask = torch.ones(B, args.items, dtype=torch.bool)

    def step() -> float:
        t0 = time.perf_counter()
        if plug is None:
            loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        else:
            soft = plug(query, query_mask, hist, hist_mask)
            embeds, full_mask = prepend_soft_tokens(lm, ids, mask, soft)
            loss = lm(inputs_embeds=embeds, attention_mask=full_mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    setup = rss_mib()
    step()  # warm-up: allocates gradients and AdamW state
    times = [step() for _ in range(args.steps)]
    return {"variant": args.variant, "lm_params": sum(p.numel() for p in lm.parameters()),
            "trained_params": sum(p.numel() for p in params), "step_s": statistics.median(times),
            "setup_mib": setup, "peak_mib": peak_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", choices=("small", "base"), default="small")
    ap.add_argument("--encoder", choices=tuple(ENCODERS), default="bge-base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256, help="input tokens (the paper's 256)")
    ap.add_argument("--target", type=int, default=8, help="target tokens")
    ap.add_argument("--query", type=int, default=128, help="query tokens of the query encoder")
    ap.add_argument("--items", type=int, default=100, help="history items per user")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child's
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    print(f"LM flan-t5-{args.lm} (random init), query encoder {args.encoder} shape; batch {args.batch} x "
          f"{args.length} input tokens, {args.target} target tokens, {args.items} history items, "
          f"{args.query}-token queries; median of {args.steps} steps after 1 warm-up")
    base_cmd = [sys.executable, __file__, "--lm", args.lm, "--encoder", args.encoder, "--batch", str(args.batch),
                "--length", str(args.length), "--target", str(args.target), "--query", str(args.query),
                "--items", str(args.items), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    rows = {}
    for variant in args.variants:
        out = subprocess.run([*base_cmd, "--variant", variant], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"{variant} failed:\n{out.stderr[-2000:]}")
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = rows.get("full")
    print("| variant | LM params | trained params | step (s) | setup RSS (MiB) | peak RSS (MiB) "
          "| train = peak - setup (MiB) | peak / full | train / full | step / full |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        train = r["peak_mib"] - r["setup_mib"]
        ratios = ("-", "-", "-") if ref is None else (
            f"{r['peak_mib'] / ref['peak_mib']:.2f}", f"{train / (ref['peak_mib'] - ref['setup_mib']):.2f}",
            f"{r['step_s'] / ref['step_s']:.2f}")
        print(f"| {name} | {r['lm_params'] / 1e6:.1f} M | {r['trained_params'] / 1e6:.1f} M | {r['step_s']:.2f} "
              f"| {r['setup_mib']:.0f} | {r['peak_mib']:.0f} | {train:.0f} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
