"""The paper's fine-tuning settings as one table, and the generator of the 40 task configs.

``configs/<mode>_lamp<N>.yaml`` (fid, ipa, none, pplug, pplug_fid x the 8 tasks) are generated from
``BASE``, the paper's setup (docs/official_mode.md#training-setup), with the deltas of ``KINDS`` (per
task kind), ``MODES`` and ``TASK_MODES`` (per task and mode). The PPlug rows follow PPlug's own setup
(Liu et al., "LLMs + Persona-Plug = Personalized LLMs", ACL 2025; issue 9) with FlanT5-base as the LM.
A file writes only the settings that differ from lamp-fid's defaults (what ``lamp-fid fit
--print_config`` resolves without a config) plus those a reader must see (``SHOWN``); its header
states the whole setup. The configs live in the package (``lamp_fid/configs``, shipped in the wheel);
the repository's top-level ``configs`` is a link to that folder.

    python -m lamp_fid.paper                      # rewrite lamp_fid/configs/{fid,ipa,none,pplug,pplug_fid}_lamp*.yaml
    python -m lamp_fid.paper --check true         # exit 1 if a file differs from the table
    python -m lamp_fid.paper --output_dir my_cfg  # the same files elsewhere (e.g. from an installed lamp-fid)
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import yaml
from jsonargparse import auto_cli

from lamp_fid.errors import LaMPError
from lamp_fid.io import atomic_write
from lamp_fid.tasks import TASK_NAMES, get_task

#: Where the package's configs are: the demo configs, the task configs and ``slurm/fit.sbatch``.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

#: The paper's fine-tuning setup, shared by every task and mode (docs/official_mode.md#training-setup).
BASE: dict = {
    "seed_everything": 42,
    "trainer": {"precision": "32-true", "max_epochs": 10, "log_every_n_steps": 50, "gradient_clip_val": 1.0},
    "model": {
        "model_name_or_path": "google/flan-t5-base",
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-5, "weight_decay": 1e-4}},
        "warmup_ratio": 0.05,
        "num_beams": 4,
        "max_new_tokens": 128,
    },
    "data": {"retriever": "bm25", "k": 4, "max_length": 512, "max_target_length": 128, "batch_size": 16},
}

#: Deltas per task kind: 10 epochs for classification and rating, 20 for generation.
KINDS: dict[str, dict] = {"generation": {"trainer": {"max_epochs": 20}}}

#: PPlug's user encoder (frozen history encoder, and the trained query encoder's start), as in its paper.
PPLUG_ENCODER: dict = {"user_encoder": "BAAI/bge-base-en-v1.5", "user_pooling": "cls"}

#: PPlug's training setup (paper and released code): AdamW lr 1e-4, weight decay 1e-4, 5 % warmup,
#: 2 epochs (1 for LaMP_3: ``TASK_MODES``), batch 64, 256 input tokens, 4 beams; the LM frozen.
PPLUG: dict = {
    "trainer": {"max_epochs": 2},
    "model": {"optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-4, "weight_decay": 1e-4}},
              "freeze_lm": True},
    "data": {"mode": "pplug", "retriever": "none", "k": 0, "max_length": 256, "batch_size": 64, **PPLUG_ENCODER},
}

#: Per mode (the file name's prefix): the header's description of the input ({k}, {retriever} filled
#: in) and the deltas.
MODES: dict[str, tuple[str, dict]] = {
    "fid": ("Fusion-in-Decoder, k={k} {retriever}-ranked profile items, one passage per item", {}),
    "ipa": ("in-prompt augmentation, the top k={k} {retriever}-ranked items in one prompt", {}),
    "none": ("the non-personalized baseline (the bare input)", {"data": {"retriever": "none", "k": 0}}),
    "pplug": ("PPlug, the bare input behind two soft tokens from a user embedding of the whole history "
              "(frozen LM)", PPLUG),
    # FiD's setting (its LM fine-tuned on the fused passages, as FiD is) plus PPlug's soft tokens
    "pplug_fid": ("PPlug + Fusion-in-Decoder, k={k} {retriever}-ranked profile items, one passage per item, "
                  "PPlug's two soft tokens in front of every passage; the LM is fine-tuned as FiD's is",
                  {"model": {"freeze_lm": False}, "data": {"mode": "pplug+fid", **PPLUG_ENCODER}}),
}

#: Deltas per (mode, task), applied last: PPlug trains LaMP_3 one epoch and generates 10 tokens there.
TASK_MODES: dict[tuple[str, str], dict] = {
    ("pplug", "LaMP_3"): {"trainer": {"max_epochs": 1}, "model": {"max_new_tokens": 10}},
}

#: Where each mode's setup is described (the header's first sentence).
SETUP = {"pplug": "PPlug's setup (Liu et al., ACL 2025; issue 9) with FlanT5-base as the LM, user encoder "
                  "BAAI/bge-base-en-v1.5 (cls)",
         "pplug_fid": "The paper's FiD fine-tuning setup (docs/official_mode.md#training-setup) with PPlug's "
                      "user encoder BAAI/bge-base-en-v1.5 (cls)"}

#: Written in every file even where equal to the default: what the run is.
SHOWN = ("data.task", "data.mode", "data.retriever", "data.k", "model.model_name_or_path")
#: Also written in the PPlug modes' files: the user encoder.
SHOWN_PPLUG = ("data.user_encoder", "data.user_pooling", "model.freeze_lm")

#: End-of-line comments in the generated YAML.
NOTES = {"trainer.gradient_clip_val": "HF Trainer's default max_grad_norm, as in the official script"}

MARK = "Generated by `python -m lamp_fid.paper`"


def _merge(base: dict, delta: dict) -> dict:
    """``base`` updated by ``delta``, section by section (a class_path value is replaced whole)."""
    out = dict(base)
    for key, value in delta.items():
        nested = isinstance(value, dict) and "class_path" not in value and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


def settings(task: str, mode: str) -> dict:
    """The paper's full settings for ``task`` in ``mode`` (fid, ipa, none, pplug or pplug_fid; the
    data's mode of pplug_fid is pplug+fid), as a nested config."""
    row = get_task(task)
    base = {**BASE, "data": {"task": row.name, "mode": mode, **BASE["data"]}}  # the run's identity first
    full = _merge(_merge(base, KINDS.get(row.kind, {})), MODES[mode][1])
    return _merge(full, TASK_MODES.get((mode, row.name), {}))


def config_name(task: str, mode: str) -> str:
    """``fid_lamp2.yaml``, ``none_lamp2n.yaml``: the file of ``task`` in ``mode``."""
    return f"{mode}_{get_task(task).name.lower().replace('_', '')}.yaml"


def code_defaults() -> dict:
    """What ``lamp-fid fit --print_config`` resolves without a config: the values a file may leave out."""
    from lamp_fid.train import lightning_main  # heavy (Lightning, transformers): only this needs it

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            lightning_main(["fit", "--print_config"])
    except SystemExit as err:
        if err.code not in (0, None):
            raise LaMPError("lamp-fid fit --print_config failed: cannot read lamp-fid's defaults") from None
    return yaml.safe_load(out.getvalue())


def covers(default, value) -> bool:
    """True when the resolved ``default`` already is ``value`` (a class_path dict: same class and args)."""
    if isinstance(value, dict):
        return isinstance(default, dict) and all(covers(default.get(k), v) for k, v in value.items())
    return default == value


def written(full: dict, defaults: dict, prefix: str = "", shown: tuple[str, ...] | None = None) -> dict:
    """The part of ``full`` a file must write: values that differ from ``defaults``, and ``SHOWN``
    (plus ``SHOWN_PPLUG`` in the PPlug modes)."""
    if shown is None:
        mode = (full.get("data") or {}).get("mode", "")
        shown = SHOWN + (SHOWN_PPLUG if str(mode).startswith("pplug") else ())
    out = {}
    for key, value in full.items():
        name, default = prefix + key, defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and "class_path" not in value:
            section = written(value, default or {}, name + ".", shown)
            if section:
                out[key] = section
        elif name in shown or not covers(default, value):
            out[key] = value
    return out


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).split("\n")[0]


def _yaml(config: dict, indent: int = 0, prefix: str = "") -> list[str]:
    lines = []
    for key, value in config.items():
        name = prefix + key
        note = f"  # {NOTES[name]}" if name in NOTES else ""
        if isinstance(value, dict):
            lines.append(f"{' ' * indent}{key}:{note}")
            lines += _yaml(value, indent + 2, name + ".")
        else:
            lines.append(f"{' ' * indent}{key}: {_scalar(value)}{note}")
    return lines


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"model.num_beams": 4, "model.optimizer": {...}, ...}``: dotted keys down to values."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and "class_path" not in value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _num(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-") if x < 1e-3 else f"{x:g}"


def render(task: str, mode: str, defaults: dict) -> str:
    """The text of ``config_name(task, mode)``: a comment header, then the settings it must write."""
    row, full = get_task(task), settings(task, mode)
    t, m, d = full["trainer"], full["model"], full["data"]
    opt, name = m["optimizer"], config_name(task, mode)
    what = MODES[mode][0].format(k=d["k"], retriever={"bm25": "BM25"}.get(d["retriever"], d["retriever"]))
    body = written(full, defaults)
    left_out = [key for key in flatten(full) if key not in flatten(body)]
    header = [
        f"{row.name} ({row.title}): {what}.",
        f"{SETUP.get(mode, 'The paper' + chr(39) + 's fine-tuning setup (docs/official_mode.md#training-setup)')}: "
        f"{m['model_name_or_path']}{', LM frozen' if m.get('freeze_lm') else ''}, "
        f"{opt['class_path'].rpartition('.')[2]} lr {_num(opt['init_args']['lr'])}, weight decay "
        f"{_num(opt['init_args']['weight_decay'])}, linear schedule with {_num(m['warmup_ratio'] * 100)} % "
        f"warmup, batch {d['batch_size']}, {t['max_epochs']} epoch{'' if t['max_epochs'] == 1 else 's'}, {d['max_length']} input tokens, "
        f"{m['max_new_tokens']} new tokens, {m['num_beams']} beams; best checkpoint by val/{row.monitor} "
        f"({row.monitor_mode}).",
        f"  lamp-fid fit --config configs/{name}                          # user split",
        f"  lamp-fid fit --config configs/{name} --data.time_split true   # time split",
        "GPU: --trainer.precision bf16-mixed (never fp16 with T5). Logs: CSV in <run>/fit/version_N/.",
        f"{MARK} from the table in lamp_fid/paper.py (edit the table, not this file): below "
        "only what differs from lamp-fid's defaults, and what the run is. Left out as defaults "
        "(`--print_config` shows every resolved value): " + ", ".join(left_out) + ".",
    ]
    comment = "".join(f"# {line}\n" for line in _wrap(header))
    return comment + "\n".join(_yaml(body)) + "\n"


def _wrap(paragraphs: list[str], width: int = 104) -> list[str]:
    """Paragraphs broken at spaces into lines of at most ``width`` (indented ones, commands, kept whole)."""
    out = []
    for text in paragraphs:
        line = ""
        for word in [text] if text.startswith(" ") else text.split(" "):
            if line and len(line) + 1 + len(word) > width:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        out.append(line)
    return out


def generate(defaults: dict | None = None) -> dict[str, str]:
    """``{file name: text}`` of every task config: each task of the task table in each mode (MODES)."""
    defaults = code_defaults() if defaults is None else defaults
    return {config_name(task, mode): render(task, mode, defaults) for task in TASK_NAMES for mode in MODES}


def write_configs(output_dir: Path = CONFIGS_DIR, check: bool = False, overwrite: bool = False) -> list[Path]:
    """Write the task configs generated from the paper table; only files whose text changes are written.

    Args:
        output_dir: folder of the configs (default: the package's, which the repository's configs/ links to).
        check: write nothing; exit with an error naming every file that is missing or differs.
        overwrite: also replace files that were not generated (no "Generated by" line): hand-written ones.

    Returns:
        The files that differ (check) or were written.
    """
    output_dir = Path(output_dir)
    changed: dict[Path, str] = {}
    for name, text in generate().items():
        path = output_dir / name
        try:
            old = path.read_bytes() if path.is_file() else None
        except OSError as err:
            raise LaMPError(f"{path}: cannot read ({err.strerror or err})") from None
        if old == text.encode("utf-8"):
            continue
        if old is not None and MARK.encode() not in old and not overwrite and not check:
            raise LaMPError(f"{path} was not generated by lamp_fid.paper (hand-written?); nothing written: "
                            "pass --overwrite true to replace it")
        changed[path] = text
    if check and changed:
        raise LaMPError(f"{', '.join(map(str, changed))}: differ from the table in lamp_fid/paper.py; "
                        "regenerate with `python -m lamp_fid.paper`")
    for path, text in ({} if check else changed).items():
        atomic_write(path, text, overwrite=True)  # a write failure is one LaMPError line naming the file
        print(f"wrote {path}")
    return list(changed)


def main(args: list[str] | None = None) -> None:
    """``python -m lamp_fid.paper [--output_dir DIR] [--check true] [--overwrite true]``."""
    try:
        auto_cli(write_configs, args=args, as_positional=False, prog="python -m lamp_fid.paper")
    except LaMPError as err:
        print(f"python -m lamp_fid.paper: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
