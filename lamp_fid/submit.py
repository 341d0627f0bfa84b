"""``lamp-fid submit``: package test-set predictions for the LaMP leaderboard.

The organizers take results through a form (lamp-benchmark.github.io/leaderboard) and score them with
their all-task evaluator, which reads every ``*.json`` of a zip and matches files by their ``"task"``
field. So the package is one official-format file per task, ``LaMP_<n>_test_outputs.json``, zipped,
after checking that each file answers exactly the split's questions.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

from lamp_fid.data.paths import check_split, default_data_dir, split_paths
from lamp_fid.data.reader import iter_json_array
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_write, check_target
from lamp_fid.predictions import check_ids, matching_golds, outputs_by_task, predictions_json
from lamp_fid.tasks import TASKS, resolve_task, task_for


def question_ids(path: str | Path) -> list[str]:
    """The ``id`` of every record of a questions file, in file order (streamed: flat memory)."""
    path = Path(path)
    ids = []
    for i, rec in enumerate(iter_json_array(path, progress=True)):
        rid = rec.get("id") if isinstance(rec, dict) else None
        if not isinstance(rid, str):
            raise LaMPDataError(path, f"question #{i} has no string id", field="id")
        ids.append(rid)
    return ids


def submit(
    preds_dir: Path,
    output: Path,
    golds_dir: Path | None = None,
    questions_dir: Path | None = None,
    split: str = "test",
    time_split: bool = False,
    tasks: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Zip one official-format predictions file per task for the LaMP leaderboard.

    Every task's predictions must answer exactly the ids of the split's questions: no id missing, none
    extra. Files are named LaMP_<n>_<split>_outputs.json; the zip is written atomically.

    Args:
        preds_dir: folder or zip of official-format prediction files (one per task, matched by "task").
        output: the zip to write.
        golds_dir: take the reference ids from official-format outputs files instead of questions:
            a file, folder or zip (e.g. dev golds, for a dry run on dev predictions).
        questions_dir: the LaMP data folder in the downloader's layout (<dir>/LaMP_1/test/test_questions.json,
            LaMP_2 movies under LaMP_2/new/, the time split under time/); its questions give the ids.
            Default: lamp-fid download's default folder ($LAMP_FID_DATA, else ~/.cache/lamp-fid/LaMP).
        split: the questions split whose ids the predictions must match: train, dev or test.
        time_split: read the time-based split's questions (<dir>/time/LaMP_<n>/...).
        tasks: package only these tasks (default: every task with predictions). LaMP_2N reads the
            deprecated news task's questions for "LaMP_2" predictions.
        overwrite: allow replacing an existing output zip.
    """
    output = Path(output)
    check_split(split)  # it names the zip's members, whichever source gives the ids
    if golds_dir is not None and questions_dir is not None:
        raise LaMPError("give either --questions_dir (the LaMP data folder) or --golds_dir, not both")
    if golds_dir is None and questions_dir is None:
        questions_dir = default_data_dir()
    check_target(output, overwrite=overwrite)  # before any reading
    chosen = [resolve_task(t) for t in tasks] if tasks else []
    preds = outputs_by_task(preds_dir)
    names = [t.official_name for t in chosen] or sorted(preds)
    missing = [n for n in names if n not in preds]
    if missing:
        raise LaMPError(f"{preds_dir}: no predictions for {', '.join(missing)}")
    golds = outputs_by_task(golds_dir, several=True) if golds_dir is not None else None

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            task = task_for(name, next((t for t in chosen if t.official_name == name), None))
            if golds is not None:
                if name not in golds:
                    raise LaMPError(f"{golds_dir}: no outputs file for {name} to check ids against")
                ref_file = matching_golds(golds[name], preds[name])
                ref, ref_where = list(ref_file.outputs), ref_file.where
            else:
                q_path, _ = split_paths(questions_dir, task, split, time_split)
                if not q_path.is_file():
                    raise LaMPError(f"{task.name}: no questions file {q_path}; --questions_dir must be the "
                                    "LaMP data folder in the downloader's layout")
                ref, ref_where = question_ids(q_path), q_path
            pred = preds[name]
            check_ids(pred.outputs, ref, pred.where)
            member = f"{name}_{split}_outputs.json"
            zf.writestr(member, predictions_json(task, {i: pred.outputs[i] for i in ref}))
            print(f"{member}: {len(ref)} predictions for {task.name}, ids checked against {ref_where}",
                  file=sys.stderr)
    atomic_write(output, buffer.getvalue(), overwrite=overwrite)

    absent = sorted({t.official_name for t in TASKS.values()} - set(names))
    if absent:
        print(f"note: no {', '.join(absent)} in this package (the official all-task evaluator expects "
              "all 7 tasks)", file=sys.stderr)
    print(f"wrote {output}", file=sys.stderr)
    return output
