"""The configs: shipped inside the package, and the 40 task configs generated from the paper table."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import yaml

from lamp_fid import paper
from lamp_fid.errors import LaMPError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def defaults() -> dict:
    return paper.code_defaults()


@pytest.fixture
def fixed_defaults(monkeypatch, defaults):
    """write_configs without re-reading lamp-fid's defaults for every call (~1 s each)."""
    monkeypatch.setattr(paper, "code_defaults", lambda: defaults)


def _shipped_files() -> set[str]:
    return {p.relative_to(paper.CONFIGS_DIR).as_posix() for p in paper.CONFIGS_DIR.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_configs_live_in_the_package_and_configs_links_there():
    shipped = resources.files("lamp_fid") / "configs"
    for name in ("demo_lamp3.yaml", "demo_lamp2.yaml", "fid_lamp2.yaml", "none_lamp2n.yaml", "slurm/fit.sbatch"):
        assert (shipped / name).is_file(), name
    assert Path(str(shipped)).resolve() == paper.CONFIGS_DIR == ROOT / "lamp_fid" / "configs"
    link = ROOT / "configs"  # the clone's configs/: one source of truth, the package's folder
    assert link.is_symlink() and link.resolve() == paper.CONFIGS_DIR
    assert (link / "fid_lamp2.yaml").read_bytes() == (paper.CONFIGS_DIR / "fid_lamp2.yaml").read_bytes()


def test_package_data_declares_every_config():
    """What the wheel ships is what pyproject.toml's package-data matches (the wheel test builds one)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    matched = {p.relative_to(paper.CONFIGS_DIR).as_posix()
               for pattern in patterns["lamp_fid"] for p in (ROOT / "lamp_fid").glob(pattern)}
    assert len(_shipped_files()) == 43 and _shipped_files() == matched


def test_the_wheel_carries_every_config(tmp_path):
    # built offline (--no-build-isolation) with the installed setuptools, which needs its own bdist_wheel
    pytest.importorskip("setuptools.command.bdist_wheel")
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lamp_fid", src / "lamp_fid", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("lamp_fid-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    in_wheel = {name.removeprefix("lamp_fid/configs/") for name in names if name.startswith("lamp_fid/configs/")}
    assert {"demo_lamp3.yaml", "demo_lamp2.yaml", "fid_lamp2.yaml", "slurm/fit.sbatch"} <= in_wheel
    assert in_wheel == _shipped_files()
    assert "lamp_fid/paper.py" in names


def test_task_configs_are_generated_from_the_paper_table(defaults):
    """Fails on drift: a config edited by hand, the table changed, or a default a config leaves out changed
    (then regenerate with `python -m lamp_fid.paper`)."""
    generated = paper.generate(defaults)
    assert len(generated) == 40
    on_disk = {p.name for p in paper.CONFIGS_DIR.glob("*_lamp*.yaml") if not p.name.startswith("demo_")}
    assert on_disk == set(generated)
    stale = [name for name, text in generated.items() if (paper.CONFIGS_DIR / name).read_text() != text]
    assert not stale, f"{stale} differ from lamp_fid/paper.py's table: run `python -m lamp_fid.paper`"


def test_a_config_writes_only_what_differs_from_the_defaults_and_what_the_run_is(defaults):
    for name, text in paper.generate(defaults).items():
        mode, task = name.removesuffix(".yaml").rsplit("_", 1)
        full = paper.settings(task, mode)
        body = yaml.safe_load(text)
        assert body == paper.written(full, defaults)  # the YAML says exactly the delta
        assert {key for key in paper.SHOWN} <= set(paper.flatten(body))
        for key, value in paper.flatten(full).items():  # the rest is the code default
            assert key in paper.flatten(body) or paper.covers(paper.flatten(defaults).get(key), value), key
    fid2 = yaml.safe_load(paper.generate(defaults)["fid_lamp2.yaml"])
    assert "optimizer" not in fid2["model"]  # the paper optimizer is written once: in the table
    assert fid2["data"] == {"task": "LaMP_2", "mode": "fid", "retriever": "bm25", "k": 4}


def test_the_table_holds_the_paper_setup(defaults):
    """docs/official_mode.md#training-setup: 10 epochs for classification and rating, 20 for generation."""
    epochs = {task: paper.settings(task, "fid")["trainer"]["max_epochs"] for task in paper.TASK_NAMES}
    assert epochs == {"LaMP_1": 10, "LaMP_2": 10, "LaMP_2N": 10, "LaMP_3": 10,
                      "LaMP_4": 20, "LaMP_5": 20, "LaMP_6": 20, "LaMP_7": 20}
    none = paper.settings("LaMP_3", "none")["data"]
    assert (none["mode"], none["retriever"], none["k"]) == ("none", "none", 0)
    model = paper.settings("LaMP_5", "ipa")["model"]
    assert model["optimizer"] == {"class_path": "torch.optim.AdamW",
                                  "init_args": {"lr": 5e-5, "weight_decay": 1e-4}}
    assert (model["warmup_ratio"], model["num_beams"], model["max_new_tokens"]) == (0.05, 4, 128)
    text = paper.generate(defaults)["ipa_lamp5.yaml"]
    header = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    assert "google/flan-t5-base, AdamW lr 5e-5, weight decay 1e-4, linear schedule with 5 % warmup, " \
           "batch 16, 20 epochs, 512 input tokens, 128 new tokens, 4 beams; best checkpoint by " \
           "val/rouge-1 (max)." in header
    assert paper.MARK in header and "Left out as defaults" in header and "model.optimizer" in header


def test_write_configs_writes_changed_files_and_keeps_hand_written_ones(tmp_path, fixed_defaults, capsys):
    written = paper.write_configs(tmp_path)
    assert len(written) == 40 and paper.write_configs(tmp_path) == []  # the second run changes nothing
    assert paper.write_configs(tmp_path, check=True) == []

    edited = tmp_path / "fid_lamp3.yaml"  # a generated file edited by hand: drift, regenerated
    edited.write_text(edited.read_text().replace("k: 4", "k: 8"))
    with pytest.raises(LaMPError, match="fid_lamp3.yaml: differ from the table"):
        paper.write_configs(tmp_path, check=True)
    assert "k: 8" in edited.read_text()  # check writes nothing
    assert paper.write_configs(tmp_path) == [edited] and "k: 8" not in edited.read_text()

    own = tmp_path / "ipa_lamp4.yaml"  # not generated: never replaced unless asked
    own.write_text("data:\n  task: LaMP_4\n")
    edited.write_text(edited.read_text().replace("k: 4", "k: 8"))
    with pytest.raises(LaMPError, match="ipa_lamp4.yaml was not generated by lamp_fid.paper"):
        paper.write_configs(tmp_path)
    assert own.read_text() == "data:\n  task: LaMP_4\n" and "k: 8" in edited.read_text()  # none written
    assert paper.write_configs(tmp_path, overwrite=True) == [edited, own]
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_the_generator_command_reports_drift_in_one_line(tmp_path, fixed_defaults, capsys):
    (tmp_path / "none_lamp1.yaml").write_text("# " + paper.MARK + "\nseed_everything: 1\n")
    with pytest.raises(SystemExit) as exit_info:
        paper.main(["--output_dir", str(tmp_path), "--check", "true"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m lamp_fid.paper: error: ") and "\n" not in err
    assert "none_lamp1.yaml" in err and "regenerate with `python -m lamp_fid.paper`" in err
    assert (tmp_path / "none_lamp1.yaml").read_text().endswith("seed_everything: 1\n")


def test_the_pplug_rows(defaults):
    """PPlug's setup (issue 9): AdamW lr 1e-4, wd 1e-4, 5 % warmup, 2 epochs (1 for LaMP_3), batch 64, 256
    input tokens, 4 beams, flan-t5-base, BGE-base cls, the LM frozen; pplug_fid: the FiD row plus PPlug."""
    for task in paper.TASK_NAMES:
        full = paper.settings(task, "pplug")
        t, m, d = full["trainer"], full["model"], full["data"]
        assert t["max_epochs"] == (1 if task == "LaMP_3" else 2)
        assert m["optimizer"] == {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-4, "weight_decay": 1e-4}}
        assert (m["warmup_ratio"], m["num_beams"], m["model_name_or_path"], m["freeze_lm"]) == \
            (0.05, 4, "google/flan-t5-base", True)
        assert (d["mode"], d["retriever"], d["k"], d["batch_size"], d["max_length"]) == ("pplug", "none", 0, 64, 256)
        assert (d["user_encoder"], d["user_pooling"]) == ("BAAI/bge-base-en-v1.5", "cls")
        fid, both = paper.settings(task, "fid"), paper.settings(task, "pplug_fid")
        assert both["data"]["mode"] == "pplug+fid" and both["model"]["freeze_lm"] is False
        assert paper.flatten(both) == {**paper.flatten(fid), "data.mode": "pplug+fid", "model.freeze_lm": False,
                                       "data.user_encoder": "BAAI/bge-base-en-v1.5", "data.user_pooling": "cls"}
    assert paper.settings("LaMP_3", "pplug")["model"]["max_new_tokens"] == 10
    text = paper.generate(defaults)["pplug_lamp3.yaml"]
    body = yaml.safe_load(text)
    assert body["data"]["mode"] == "pplug" and body["data"]["user_encoder"] == "BAAI/bge-base-en-v1.5"
    assert "1 epoch, 256 input tokens, 10 new tokens, 4 beams" in " ".join(
        line[2:] for line in text.splitlines() if line.startswith("# "))
