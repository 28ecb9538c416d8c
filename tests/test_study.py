"""The whole study as one command: the study file, presets, plan, run (local), status, report --study."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import write_study_layouts

from vitmed_cli.cli import app
from vitmed_cli.datasets.findings import canonical_name
from vitmed_cli.registry.db import open_registry
from vitmed_cli.registry.models import MACRO, Comparison, ComparisonResult, Evaluation, Run, Study, StudyCell
from vitmed_cli.study import DemoSettings, demo_study_text, load_study, preset_text

runner = CliRunner()
PROTOCOL_FILE = Path(__file__).parent / "data" / "tayebi2024-protocol.md"


def _plan_error(tmp_path, text: str) -> str:
    f = tmp_path / "s.toml"
    f.write_text(text)
    result = runner.invoke(app, ["--db", f"sqlite:///{tmp_path / 'r.db'}", "study", "plan", str(f)])
    assert result.exit_code == 1, result.output
    return result.stderr.strip()


MINIMAL = """
[study]
name = "mini"
[datasets.toy]
format = "synthetic"
path = "data/toy"
ingest = { n_images = 40 }
[inits.random]
"""


def test_study_file_errors_name_the_key_and_the_fix(tmp_path):
    assert _plan_error(tmp_path, MINIMAL + "[protocol]\nlr_rate = 0.1\n").startswith(
        "Error: `protocol.lr_rate` is not a training option - use one of: arch, batch_size,")
    assert _plan_error(tmp_path, MINIMAL + "[protocol]\nepochs = \"ten\"\n") == (
        "Error: `protocol.epochs` must be an integer, got 'ten' (a string)")
    assert _plan_error(tmp_path, MINIMAL + "[statistic]\nresamples = 10\n") == (
        "Error: [statistic] is not a study file table - use one of: [study], [protocol], [datasets], [inits], "
        "[comparisons], [statistics], [report], [executor]")
    assert _plan_error(tmp_path, MINIMAL.replace('name = "mini"', 'name = "mini"\nseed = [1]')) == (
        "Error: `study.seed` is not a study file key - use one of: name, seeds, description")
    assert _plan_error(tmp_path, MINIMAL.replace('format = "synthetic"\npath = "data/toy"\ningest = { n_images = 40 }',
                                                 'format = "cxr14"\npath = "nowhere"')) == (
        f"Error: `datasets.toy.path` {tmp_path / 'nowhere'} does not exist - point it at the cxr14 download "
        "(relative paths are read from the study file's folder)")
    assert _plan_error(tmp_path, MINIMAL + "[protocol]\nseed = 3\n") == (
        "Error: `protocol.seed` is set by the study for each cell - use study.seeds")
    assert _plan_error(tmp_path, MINIMAL + "[[comparisons]]\nreference = \"imagenet\"\n") == (
        "Error: `comparisons[0]` names init 'imagenet', which the study does not declare - use one of: random")
    assert _plan_error(tmp_path, MINIMAL + "[protocol]\nbatch_size = 0\n") == (
        "Error: `protocol.batch_size` must be at least 1, got 0 (fine-tuning toy from random)")


def _protocol_tables() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The finding lists of the protocol file: per dataset, and shrunk to MIMIC-CXR's."""
    text = PROTOCOL_FILE.read_text()
    full = {}
    for m in re.finditer(r"^\| (VinDr-CXR|CheXpert|MIMIC-CXR|ChestX-ray14|PadChest) \| (\d+) \| (.+) \|$", text, re.M):
        names = [n.strip() for n in m.group(3).split(",")]
        assert len(names) == int(m.group(2))
        full[m.group(1)] = [n.split(" (")[0] for n in names]
    shrunk_vindr = re.search(r"VinDr-CXR 8 \(([^)]*)\)", text.replace("\n", " ")).group(1)
    return full, {"VinDr-CXR": [n.strip() for n in shrunk_vindr.split(",")], "ChestX-ray14": full["MIMIC-CXR"],
                  "PadChest": full["MIMIC-CXR"]}


# the code's names vitmed's vocabulary does not know: PadChest's own labels and the merged finding
NOT_IN_VOCABULARY = {"scoliosis": "scoliosis", "congestion": "hilar congestion", "aortic_elongation":
                     "aortic elongation", "kyphosis": "kyphosis", "nodule_mass": "nodule_mass"}


def _canonical(native: str) -> str:
    return NOT_IN_VOCABULARY.get(native) or canonical_name(native) or native


def test_tayebi2024_preset_matches_the_protocol_file():
    preset = tomllib.loads(preset_text("tayebi2024"))
    full, shrunk = _protocol_tables()
    ours = {"VinDr-CXR": "vindr", "CheXpert": "chexpert", "MIMIC-CXR": "mimic", "ChestX-ray14": "cxr14",
            "PadChest": "padchest"}
    assert set(full) == set(ours)
    for paper, name in ours.items():
        ds = preset["datasets"][name]
        assert ds["format"] == name and ds["image_size"] == 224
        assert ds["findings"] == [_canonical(n) for n in full[paper]], paper
        if paper in shrunk:
            assert ds["findings_by_init"]["mimic-supervised"] == [_canonical(n) for n in shrunk[paper]], paper
        else:
            assert "findings_by_init" not in ds
    assert preset["datasets"]["padchest"]["protocol"]["merge"] == {"nodule_mass": ["Nodule", "Mass"]}
    assert preset["datasets"]["cxr14"]["protocol"]["no_finding"] == "No Finding"
    assert preset["datasets"]["vindr"]["split"]["policy"] == "official"
    assert preset["datasets"]["uka"]["format"] == "csv"
    p = preset["protocol"]
    assert (p["lr"], p["weight_decay"], p["batch_size"], p["epochs"], p["image_size"]) == (1e-5, 0.0, 30, 100, 224)
    assert (p["flip"], p["rotation"], p["normalise"], p["uncertain"], p["tune"]) == (True, 7.0, "none", "zeros", "all")
    assert preset["statistics"]["resamples"] == 1000
    inits = preset["inits"]
    assert (inits["dinov2"]["pretrain"], inits["imagenet"]["pretrain"]) == ("dinov2", "imagenet")
    assert inits["mimic-supervised"]["stage"] == {"dataset": "mimic", "from": "imagenet", "seed": 0}


def test_plan_of_the_tayebi2024_preset_lists_the_full_matrix(tmp_path):
    f = tmp_path / "study.toml"
    assert runner.invoke(app, ["study", "init", "--out", str(f)]).exit_code == 0
    write_study_layouts(tmp_path)
    (tmp_path / "weights").mkdir()
    for name in ("dinov2_vitb14_pretrain.pth", "vit_base_patch16_224.augreg_in21k.safetensors"):
        (tmp_path / "weights" / name).write_bytes(b"")
    result = runner.invoke(app, ["--db", f"sqlite:///{tmp_path / 'r.db'}", "study", "plan", str(f), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["stages"] == {"ingest": 6, "split": 6, "register": 3, "finetune": 1 + 17 * 3, "predict": 17 * 3,
                              "compare": 11, "report": 1}
    cells = {c["key"]: c for c in plan["cells"]}
    assert "finetune/mimic/mimic-supervised/0" not in cells  # the in-domain init is not tuned on its own data
    # MIMIC-CXR from ImageNet, seed 0, is the stage's own training: planned after it, trained once
    assert cells["finetune/mimic/imagenet/0"]["hash"] == cells["finetune/mimic-supervised"]["hash"]
    assert "finetune/mimic-supervised" in cells["finetune/mimic/imagenet/0"]["deps"]
    assert cells["finetune/vindr/mimic-supervised/2"]["deps"] == ["split/vindr", "register/mimic-supervised"]
    assert all(c["state"] == "pending" for c in plan["cells"])


def _study_file(tmp_path, *, epochs: int = 2, seeds=(0, 1)) -> Path:
    s = DemoSettings.smallest()
    s = dataclasses.replace(s, source_epochs=epochs, target_epochs=epochs, n_resamples=50)
    f = tmp_path / "tiny.toml"
    f.write_text(demo_study_text(s, seeds=list(seeds), name="tiny", report_out="out/report.md"))
    return f


def _vitmed(db: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitmed_cli", "--db", db, *args], capture_output=True, text=True,
                          **kw)


def _runs_per_hash(reg) -> dict[str, int]:
    with reg.session() as s:
        rows = s.execute(select(Run.config_hash, func.count()).group_by(Run.config_hash)).all()
    return dict(rows)


def test_killed_study_run_resumes_completes_and_reports_over_seeds(tmp_path):
    """The demo study, two seeds, run locally: killed (with its cell's process) while a run is
    mid-training, then run again - it finishes the matrix, resuming the killed run and training
    nothing twice; status, plan and the report then show the whole study."""
    f = _study_file(tmp_path, epochs=3)
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "vitmed_cli", "--db", db, "study", "run", str(f)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    reg = open_registry(db)
    killed = None
    try:
        while proc.poll() is None and killed is None:
            time.sleep(0.05)
            try:
                with reg.session() as s:
                    run = s.scalar(select(Run).where(Run.resume_path.is_not(None), Run.status == "running",
                                                     Run.epochs_done < Run.epochs_planned))
                    if run is not None:
                        os.killpg(proc.pid, signal.SIGKILL)  # the study run and its cell's process
                        killed = run.id
            except Exception:  # the registry may not exist yet
                continue
        proc.wait()
    finally:
        reg.dispose()
    assert killed is not None, "the study finished before it could be interrupted"
    status = json.loads(_vitmed(db, "study", "status", str(f), "--json").stdout)
    assert {c["state"] for c in status["cells"]} >= {"done", "pending"}

    proc = _vitmed(db, "study", "run", str(f), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_done"] == out["n_cells"] == 16 and out["failed"] == {}

    status = json.loads(_vitmed(db, "study", "status", str(f), "--json").stdout)
    assert status["study"] == "tiny"
    assert all(c["state"] == "done" for c in status["cells"])
    for c in status["cells"]:
        assert {"stage", "dataset", "init", "seed", "state", "run_id", "evaluation_id"} <= set(c)
    predicted = [c for c in status["cells"] if c["stage"] == "predict"]
    assert len(predicted) == 4 and all(c["run_id"] and c["evaluation_id"] for c in predicted)
    plan = json.loads(runner.invoke(app, ["--db", db, "study", "plan", str(f), "--json"]).stdout)
    assert [(c["key"], c["state"], c["evaluation_id"]) for c in plan["cells"]] == [
        (c["key"], "done", c["evaluation_id"]) for c in status["cells"]]  # the plan shows what is done
    # ... without checking a trained cell's image size again: a finished study's plan loads no torch
    code = ("import runpy, sys\nsys.argv = ['vitmed', '--db', %r, 'study', 'plan', %r, '--json']\n"
            "try:\n    runpy.run_module('vitmed_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'timm') if m in sys.modules], file=sys.stderr)") % (db, str(f))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert json.loads(out.stdout)["cells"] == plan["cells"] and out.stderr.splitlines()[-1] == "[]", out.stderr

    reg = open_registry(db)
    try:
        counts = _runs_per_hash(reg)
        assert len(counts) == 5 and set(counts.values()) == {1}  # the source stage and 2 inits x 2 seeds
        with reg.session() as s:
            run = s.get(Run, killed)
            assert (run.status, run.epochs_done) == ("completed", 3)
            assert len(run.config["resumes"]) == 1  # continued where it was killed, not started again
            study = s.scalar(select(Study).where(Study.name == "tiny"))
            assert len(study.cells) == 16 and {c.state for c in study.cells} == {"done"}
            evs = {(c.init, c.seed): s.get(Evaluation, c.evaluation_id) for c in study.cells if c.stage == "predict"}
            for (init, seed), ev in evs.items():
                run = s.get(Run, ev.run_id)
                assert (run.init_name, run.seed, run.status) == (init, seed, "completed")
            cmp_cell = next(c for c in study.cells if c.stage == "compare")
            cmp = s.get(Comparison, cmp_cell.comparison_id)
            macro = s.scalar(select(ComparisonResult).where(
                ComparisonResult.comparison_id == cmp.id, ComparisonResult.finding == MACRO))
            # one comparison over both seeds of each init, adjusted over the study's family
            assert cmp.options["mode"] == "seeds" and cmp.options["fdr_family"] == "tiny"
            assert cmp.options["evaluations_a"] == [evs[("demo-source-supervised", k)].id for k in (0, 1)]
            assert cmp.options["evaluations_b"] == [evs[("random", k)].id for k in (0, 1)]
            boot_sd = cmp.options["over_seeds"]["a"][MACRO]["bootstrap_sd"]
    finally:
        reg.dispose()

    # the study's report cell wrote the paper's table: mean +- SD over the seeds' evaluations
    text = (tmp_path / "out" / "report.md").read_text()
    for init in ("random", "demo-source-supervised"):
        aucs = [evs[(init, s)].macro_auc for s in (0, 1)]
        cell = f"{np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}"
        assert cell in text, (cell, text)
    row, boot_row = [line for line in text.splitlines() if line.startswith("| demo-target |")]
    p = macro.p_adjusted
    assert row.endswith(f"(p {p:.3f}) |" if p >= 0.001 else "(p <0.001) |")
    source_mean = np.mean([evs[("demo-source-supervised", k)].macro_auc for k in (0, 1)])
    assert boot_row.endswith(f"{source_mean:.3f} ± {boot_sd:.3f} |")  # the paper's SD, named as such
    assert "validation part taken from the training data" in text and "Two-sided" in text
    assert "lr = 0.0003 (the paper: 1e-05)" in text

    # the same table through vitmed report --study, as HTML
    html = tmp_path / "study.html"
    res = runner.invoke(app, ["--db", db, "report", "--study", "tiny", "--out", str(html)])
    assert res.exit_code == 0, res.output
    assert "Macro AUC (mean ± SD over seeds)" in html.read_text() and "data:image/png;base64" in html.read_text()

    # run again: everything is found done, nothing is trained or computed again
    again = json.loads(_vitmed(db, "study", "run", str(f), "--json").stdout)
    assert again["executed"] == [] and again["n_done"] == 16
    reg = open_registry(db)
    try:
        assert _runs_per_hash(reg) == counts
    finally:
        reg.dispose()


def test_slurm_executor_refuses_a_sqlite_registry(tmp_path):
    f = _study_file(tmp_path)
    result = runner.invoke(app, ["--db", f"sqlite:///{tmp_path / 'r.db'}", "study", "run", str(f),
                                 "--executor", "slurm"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: --executor slurm needs a PostgreSQL registry: Slurm jobs on several nodes would write one SQLite "
        "file over a network file system, where SQLite's locks do not hold and data is lost - pass "
        "--db postgresql+psycopg://USER:PASSWORD@HOST/DB")


def test_study_init_writes_presets_and_refuses_to_overwrite(tmp_path):
    f = tmp_path / "s.toml"
    assert runner.invoke(app, ["study", "init", "--preset", "demo", "--out", str(f)]).exit_code == 0
    demo = tomllib.loads(f.read_text())
    assert demo["study"]["seeds"] == [0, 1] and set(demo["datasets"]) == {"demo-source", "demo-target"}
    again = runner.invoke(app, ["study", "init", "--preset", "demo", "--out", str(f)])
    assert again.exit_code == 1
    assert again.stderr.strip() == f"Error: {f} already exists - choose another --out or pass --force to overwrite it"


def test_cells_are_registry_rows_and_a_changed_file_replans_only_what_it_changes(any_registry, tmp_path):
    from vitmed_cli.study import cell_states, load_study, run_cell

    f = _study_file(tmp_path)
    spec = load_study(f)
    for key in ("ingest/demo-source", "split/demo-source"):
        assert run_cell(any_registry, spec, key).state == "done"
    states = {st.key: st.state for st in cell_states(any_registry, spec)}
    assert states["split/demo-source"] == "done" and states["ingest/demo-target"] == "pending"
    assert states["finetune/demo-source-supervised"] == "pending"
    with any_registry.session() as s:
        rows = {c.key: c for c in s.scalar(select(Study).where(Study.name == "tiny")).cells}
        assert len(rows) == 16 and rows["split/demo-source"].state == "done" and rows["split/demo-source"].attempts == 0

    # another validation fraction for the source: its split (and all after it) is planned again, its ingest is not
    f.write_text(f.read_text().replace("val = 0.15, test = 0.15", "val = 0.2, test = 0.15"))
    changed = load_study(f)
    assert changed.datasets["demo-source"].split.val == 0.2
    states = {st.key: st.state for st in cell_states(any_registry, changed)}
    assert states["ingest/demo-source"] == "done" and states["split/demo-source"] == "pending"
    assert run_cell(any_registry, changed, "split/demo-source").state == "done"


FAILING_STUDY = """
[study]
name = "failing"
seeds = [0]

[protocol]
image_size = 32
epochs = 1
arch = "vit_tiny_patch16_224"
model_kwargs = { patch_size = 8, embed_dim = 32, depth = 1, num_heads = 2 }

[datasets.target]
format = "synthetic"
path = "data/target"
image_size = 32
ingest = { n_images = 120, seed = 1, flavour = "target" }
split = { policy = "random", name = "demo", val = 0.2, test = 0.3, seed = 0 }
findings = ["Hernia"]      # a finding the target does not have: its fine-tunings cannot start

[inits.random]
"""


def test_a_failing_cell_is_tried_twice_then_reported_and_blocks_what_needs_it(tmp_path):
    f = tmp_path / "failing.toml"
    f.write_text(FAILING_STUDY)
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    result = runner.invoke(app, ["--db", db, "study", "run", str(f), "--executor", "local"])
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert [line.split(":")[1].strip() for line in failed] == ["finetune/target/random/0"]
    status = json.loads(runner.invoke(app, ["--db", db, "study", "status", str(f), "--json"]).stdout)
    by_key = {c["key"]: c for c in status["cells"]}
    assert by_key["ingest/target"]["state"] == by_key["split/target"]["state"] == "done"  # unaffected
    cell = by_key["finetune/target/random/0"]
    assert cell["state"] == "failed" and cell["attempts"] == 2 and "Hernia" in cell["error"]
    assert by_key["predict/target/random/0"]["state"] == "pending"  # what needs it waits
    assert by_key["report"]["state"] == "pending"


class _Jobs:
    """A scheduler's answers, as study status reads them (``states(job_ids)``)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.asked = answers, []

    def states(self, job_ids: list[str]) -> dict[str, str]:
        self.asked.append(list(job_ids))
        return {j: self.answers[j] for j in job_ids if j in self.answers}


def test_status_gives_a_cell_its_jobs_state(make_registry, tmp_path):
    from vitmed_cli.study import study_status, sync_study

    f = _study_file(tmp_path, seeds=(0,))
    spec = load_study(f)
    reg = make_registry()
    sync_study(reg, spec)
    jobs = {"finetune/demo-target/random/0": "11", "predict/demo-target/random/0": "11",
            "finetune/demo-source-supervised": "12", "ingest/demo-target": "13", "split/demo-target": "14"}
    with reg.session() as s:
        for row in s.scalars(select(StudyCell).where(StudyCell.key.in_(jobs))):
            row.job_id = jobs[row.key]
        s.scalar(select(StudyCell).where(StudyCell.key == "split/demo-target")).state = "done"
    fake = _Jobs({"11": "pending", "12": "cancelled", "13": "unknown", "14": "failed"})
    cells = {c["key"]: c for c in study_status(reg, spec, jobs=fake)["cells"]}
    assert sorted(fake.asked[0]) == ["11", "11", "12", "13"]  # done cells are not asked about
    for key in ("finetune/demo-target/random/0", "predict/demo-target/random/0"):  # queued: in progress
        assert (cells[key]["state"], cells[key]["job_state"]) == ("running", "pending")
    stage = cells["finetune/demo-source-supervised"]
    assert (stage["state"], stage["job_state"], stage["error"]) == (
        "pending", "cancelled", "job 12 cancelled - study run resumes the cell")
    assert (cells["ingest/demo-target"]["state"], cells["ingest/demo-target"]["job_state"]) == ("pending", None)
    assert (cells["split/demo-target"]["state"], cells["split/demo-target"]["job_state"]) == ("done", None)
    # on SQLite no scheduler is asked: the registry alone answers
    alone = {c["key"]: c for c in study_status(reg, spec)["cells"]}
    assert all(c["job_state"] is None for c in alone.values())
    assert alone["finetune/demo-target/random/0"]["state"] == "pending"


# --------------------------------------------------------------------------- resolution sweeps

def _plan(text: str):
    from vitmed_cli.study import build_plan, parse_study

    return build_plan(parse_study(text, file="/study/s.toml", check_paths=False))


def _demo_plan_formula(spec) -> dict[str, str]:
    """The hashes of the demo's fine-tunings, predictions and comparison, by the formula a one-size
    study has always used (a study's registry rows are found by these)."""
    from vitmed_cli.study.plan import train_payload
    from vitmed_cli.study.spec import config_hash

    plan = {c.key: c for c in _plan(spec.text)}
    out = {}
    for init in ("random", "demo-source-supervised"):
        for seed in (0, 1):
            cfg = spec.train_config("demo-target", init, seed)
            h = config_hash({"train": train_payload(cfg), "split": plan["split/demo-target"].hash,
                             "init": plan["register/demo-source-supervised"].hash if init != "random"
                             else config_hash({"registered": "random"})})
            out[f"finetune/demo-target/{init}/{seed}"] = h
            out[f"predict/demo-target/{init}/{seed}"] = config_hash({"run": h, "part": "test"})
    out["compare/demo-target/demo-source-supervised-vs-random"] = config_hash({
        "a": [out[f"predict/demo-target/demo-source-supervised/{k}"] for k in (0, 1)],
        "b": [out[f"predict/demo-target/random/{k}"] for k in (0, 1)],
        "stats": dataclasses.asdict(spec.statistics)})
    return out


def test_a_one_size_study_keeps_its_cell_keys_and_hashes():
    from vitmed_cli.study import parse_study

    # the demo preset at 64 px, its default size when these hashes were pinned
    text = demo_study_text(dataclasses.replace(DemoSettings(), image_size=64))
    assert text == preset_text("demo").replace("image_size = 48", "image_size = 64")
    spec = parse_study(text, file="/study/s.toml", check_paths=False)
    plan = _plan(text)
    assert [c.key for c in plan] == [
        "ingest/demo-source", "split/demo-source", "ingest/demo-target", "split/demo-target",
        "finetune/demo-source-supervised", "register/demo-source-supervised",
        "finetune/demo-target/random/0", "predict/demo-target/random/0",
        "finetune/demo-target/random/1", "predict/demo-target/random/1",
        "finetune/demo-target/demo-source-supervised/0", "predict/demo-target/demo-source-supervised/0",
        "finetune/demo-target/demo-source-supervised/1", "predict/demo-target/demo-source-supervised/1",
        "compare/demo-target/demo-source-supervised-vs-random", "report"]
    hashes = {c.key: c.hash for c in plan}
    # the hashes of the demo preset's data cells before datasets could list several sizes
    assert [hashes[k] for k in ("ingest/demo-source", "split/demo-source", "ingest/demo-target", "split/demo-target")] == [
        "5dd5ad02a9acb92de27baebd4bb883d72c0588934015313e3a5f0f66c6e7a63d",
        "3a554b97ee4f3535ca20b3c160040faaae5e03d4642730b8517d5f92cd19eea3",
        "943f4b9acb7ffe0eca5a4553494ac066d8b4eda9e09aacd844b9ab46ae553a17",
        "3bf9c3977287748010e41c6a3b46c0b1333bbfca47bba361e28d03bb9a5ae883"]
    # ... and of the source stage, the init it registers and the report (every target cell's hash
    # builds on the register cell's)
    assert [hashes[k] for k in ("finetune/demo-source-supervised", "register/demo-source-supervised", "report")] == [
        "79274f804f81602342100ed2e3de8d36fae5666d6b1609c00679a80a2cd94b3a",
        "dfd2cf028740a0c2814035766d07baf4f67e876b57bd6efb2fefd723fd8de997",
        "557d8db17939dcfe33b95e0f16d58d249890b0e360cb58bc2848295368b22b74"]
    for key, h in _demo_plan_formula(spec).items():
        assert hashes[key] == h, key
    assert all(c.image_size is None for c in plan)

    # a list of one size is the same study as image_size
    tayebi = preset_text("tayebi2024")
    listed = tayebi.replace("\nimage_size = 224\n", "\nimage_sizes = [224]\n")
    assert listed.count("image_sizes = [224]") == 6
    assert [(c.key, c.hash, c.deps) for c in _plan(listed)] == [(c.key, c.hash, c.deps) for c in _plan(tayebi)]


def _sweep_text(sizes: str, *, seeds=(0,), source_sizes: str | None = None) -> str:
    s = DemoSettings.smallest()
    s = dataclasses.replace(s, n_resamples=50)
    text = demo_study_text(s, seeds=list(seeds), name="sweep", report_out="out/report.md")
    text = text.replace('path = "data/demo-target"\nimage_size = 32', f'path = "data/demo-target"\nimage_sizes = {sizes}')
    if source_sizes is not None:
        text = text.replace('path = "data/demo-source"\nimage_size = 32',
                            f'path = "data/demo-source"\nimage_sizes = {source_sizes}')
    return text


def test_a_sweep_plans_one_ingest_per_size_one_split_and_cells_per_size():
    text = _sweep_text("[32, 48]")
    cells = {c.key: c for c in _plan(text)}
    assert [k for k in cells if k.startswith(("ingest/", "split/"))] == [
        "ingest/demo-source", "split/demo-source", "ingest/demo-target", "ingest/demo-target@48", "split/demo-target"]
    assert cells["ingest/demo-target@48"].deps == ["ingest/demo-target"]
    assert cells["ingest/demo-target@48"].params == {"image_size": 48}
    assert cells["split/demo-target"].deps == ["ingest/demo-target"]  # patients are split once, for every size
    for size in (32, 48):
        for init in ("random", "demo-source-supervised"):
            ft = cells[f"finetune/demo-target/{init}/0@{size}"]
            assert ft.params["train"]["image_size"] == size and ft.image_size == size
            assert ("ingest/demo-target@48" in ft.deps) == (size == 48)
            assert cells[f"predict/demo-target/{init}/0@{size}"].deps == [ft.key]
        cmp = cells[f"compare/demo-target/demo-source-supervised-vs-random@{size}"]
        assert cmp.deps == [f"predict/demo-target/demo-source-supervised/0@{size}", f"predict/demo-target/random/0@{size}"]
    assert not any(k.startswith(("finetune/demo-target/", "predict/", "compare/")) and "@" not in k for k in cells)
    assert len([k for k in cells if k.startswith("compare/")]) == 2
    # the first size trains what the one-size study trained (its protocol's image_size is 32): its runs count
    one = {c.key: c.hash for c in _plan(_sweep_text("[32]"))}
    assert cells["finetune/demo-target/random/0@32"].hash == one["finetune/demo-target/random/0"]
    assert cells["finetune/demo-target/random/0@48"].hash != one["finetune/demo-target/random/0"]

    # a stage trained on a swept dataset stays at its first size
    staged_text = _sweep_text("[32, 48]", source_sizes="[48, 32]").replace(
        "target = false             # only the source of the in-domain init\n", "")
    staged = {c.key: c for c in _plan(staged_text)}
    assert staged["finetune/demo-source-supervised"].params["train"]["image_size"] == 48
    assert staged["ingest/demo-source@32"].deps == ["ingest/demo-source"]


def test_adding_sizes_to_a_dataset_keeps_the_runs_of_its_first_size():
    """Without image_size in the protocol a run trains at its dataset's (first) size: sweeping the
    dataset later must not change the hashes of what the one-size study already trained - the
    target's fine-tunings, nor a stage's, nor the inits it registers and the runs made from them."""
    def without_protocol_size(text: str) -> str:
        return text.replace("[protocol]\nimage_size = 32\n", "[protocol]\n")

    one = {c.key: c for c in _plan(without_protocol_size(_sweep_text("[32]")))}
    swept_text = without_protocol_size(_sweep_text("[32, 48]", source_sizes="[32, 48]")).replace(
        "target = false             # only the source of the in-domain init\n", "")
    one_source = {c.key: c for c in _plan(without_protocol_size(_sweep_text("[32]")).replace(
        "target = false             # only the source of the in-domain init\n", ""))}
    swept = {c.key: c for c in _plan(swept_text)}
    assert "[protocol]\nimage_size" not in swept_text
    for key in ("finetune/demo-target/random/0", "finetune/demo-target/demo-source-supervised/0"):
        assert swept[key + "@32"].hash == one[key].hash
        assert swept[key + "@32"].params["train"]["image_size"] is None  # the dataset's size, as before
        assert swept[key + "@48"].params["train"]["image_size"] == 48
    for key in ("finetune/demo-source-supervised", "register/demo-source-supervised"):
        assert swept[key].hash == one_source[key].hash


def test_a_dataset_only_a_stage_trains_on_is_not_swept(tmp_path):
    assert _plan_error(tmp_path, _sweep_text("[32]", source_sizes="[32, 48]")) == (
        "Error: `datasets.demo-source.image_sizes` sweeps a dataset with target = false - a stage trains only at "
        "one size, so give `datasets.demo-source.image_size` (the stage's size)")


def test_image_sizes_errors_name_the_key(tmp_path):
    base = MINIMAL.replace('path = "data/toy"', 'path = "data/toy"\nSIZES')
    assert _plan_error(tmp_path, base.replace("SIZES", "image_size = 224\nimage_sizes = [224, 512]")) == (
        "Error: `datasets.toy` has both image_size and image_sizes - keep `datasets.toy.image_sizes` to sweep "
        "several sizes, or `datasets.toy.image_size` for one")
    assert _plan_error(tmp_path, base.replace("SIZES", "image_sizes = []")) == (
        "Error: `datasets.toy.image_sizes` is empty - list one or more sizes in pixels, e.g. [224, 512]")
    assert _plan_error(tmp_path, base.replace("SIZES", "image_sizes = [224, -512]")) == (
        "Error: `datasets.toy.image_sizes[1]` must be between 16 and 2048 pixels, got -512")
    assert _plan_error(tmp_path, base.replace("SIZES", 'image_sizes = [224, "512"]')) == (
        "Error: `datasets.toy.image_sizes[1]` must be an integer, got '512' (a string)")
    assert _plan_error(tmp_path, base.replace("SIZES", "image_sizes = 224")) == (
        "Error: `datasets.toy.image_sizes` must be a list, got 224 (an integer)")
    assert _plan_error(tmp_path, base.replace("SIZES", "image_sizes = [224, 512, 224]")) == (
        "Error: `datasets.toy.image_sizes` lists 224 more than once - list each size once")
    # a size the ViT's patch does not divide: the nearest that fit (random is ViT-B/16)
    assert _plan_error(tmp_path, base.replace("SIZES", "image_sizes = [224, 500]")) == (
        "Error: `datasets.toy.image_sizes` 500 is not a multiple of the patch size 16 of vit_base_patch16_224 "
        "(the last 4 pixel rows and columns would be dropped) - use 496 or 512 (fine-tuning toy from random)")
    # DINOv2's patch is 14: a size ImageNet's 16 divides can still be refused
    from vitmed_cli.study import StudyFileError, parse_study
    from vitmed_cli.study.plan import check_image_sizes

    tayebi = preset_text("tayebi2024").replace('path = "data/vindr-cxr/1.0.0"\nimage_size = 224',
                                               'path = "data/vindr-cxr/1.0.0"\nimage_sizes = [224, 512]')
    with pytest.raises(StudyFileError) as err:
        check_image_sizes(parse_study(tayebi, file="/study/s.toml", check_paths=False))
    assert str(err.value) == (
        "`datasets.vindr.image_sizes` 512 is not a multiple of the patch size 14 of vit_base_patch14_dinov2.lvd142m "
        "(the last 8 pixel rows and columns would be dropped) - use 504 or 518 (fine-tuning vindr from dinov2)")


def test_a_sweep_runs_each_size_and_reports_a_column_per_size(registry, tmp_path):
    from vitmed_cli.study import load_study, run_study

    f = tmp_path / "sweep.toml"
    f.write_text(_sweep_text("[32, 48]"))
    spec = load_study(f)
    out = run_study(registry, spec)
    assert out.failed == {} and out.n_done == out.n_cells == 18
    with registry.session() as s:
        study = s.scalar(select(Study).where(Study.name == "sweep"))
        cells = {c.key: c for c in study.cells}
        for size in (32, 48):
            for init in ("random", "demo-source-supervised"):
                run = s.get(Run, cells[f"finetune/demo-target/{init}/0@{size}"].run_id)
                assert (run.init_name, run.image_size, run.status) == (init, size, "completed")
                ev = s.get(Evaluation, cells[f"predict/demo-target/{init}/0@{size}"].evaluation_id)
                assert ev.run_id == run.id
            cmp = s.get(Comparison, cells[f"compare/demo-target/demo-source-supervised-vs-random@{size}"].comparison_id)
            sides = [s.get(Run, s.get(Evaluation, e).run_id) for e in (cmp.evaluation_a_id, cmp.evaluation_b_id)]
            assert [(r.init_name, r.image_size) for r in sides] == [("demo-source-supervised", size), ("random", size)]
            macro = s.scalar(select(ComparisonResult).where(ComparisonResult.comparison_id == cmp.id,
                                                            ComparisonResult.finding == MACRO))
            p = macro.p_adjusted
            cell = f"{ev.macro_auc:.3f} (p {p:.3f})" if p >= 0.001 else f"{ev.macro_auc:.3f} (p <0.001)"
            ev_by = {(i, z): s.get(Evaluation, cells[f"predict/demo-target/{i}/0@{z}"].evaluation_id).macro_auc
                     for i in ("random", "demo-source-supervised") for z in (32, 48)}
    text = (tmp_path / "out" / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| dataset |"))
    assert header == ("| dataset | random @32px | demo-source-supervised @32px | random @48px | "
                      "demo-source-supervised @48px |")
    row = next(line for line in text.splitlines() if line.startswith("| demo-target |"))
    cols = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cols[0] == f"{ev_by[('random', 32)]:.3f}" and cols[2] == f"{ev_by[('random', 48)]:.3f}"
    assert cols[1].startswith(f"{ev_by[('demo-source-supervised', 32)]:.3f} (p ")
    assert cols[3] == cell  # the 48 px comparison's p beside the 48 px column
    assert "| dataset demo-target | synthetic at 32, 48 px, split random;" in text
    from vitmed_cli.report.study import gather_study

    forest = gather_study(registry, "sweep").forest
    assert [r.label for r in forest] == ["demo-source-supervised vs random @32px",
                                         "demo-source-supervised vs random @48px"]
