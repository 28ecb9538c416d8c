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
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import write_study_layouts

from vitmed_cli.cli import app
from vitmed_cli.datasets.findings import canonical_name
from vitmed_cli.registry.db import open_registry
from vitmed_cli.registry.models import MACRO, Comparison, ComparisonResult, Evaluation, Run, Study, StudyCell
from vitmed_cli.study import DemoSettings, demo_study_text, preset_text

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


def test_local_run_completes_status_and_report_over_seeds(tmp_path):
    f = _study_file(tmp_path)
    db = f"sqlite:///{tmp_path / 'registry.db'}"
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

    reg = open_registry(db)
    try:
        counts = _runs_per_hash(reg)
        assert len(counts) == 5 and set(counts.values()) == {1}  # the source stage and 2 inits x 2 seeds
        with reg.session() as s:
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


def test_killed_study_run_resumes_and_trains_nothing_twice(tmp_path):
    f = _study_file(tmp_path, epochs=8, seeds=(0,))
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
        assert killed is not None, "the study finished before it could be interrupted"
        status = json.loads(_vitmed(db, "study", "status", str(f), "--json").stdout)
        assert {c["state"] for c in status["cells"]} >= {"done", "pending"}

        again = _vitmed(db, "study", "run", str(f), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["n_done"] == 12
        counts = _runs_per_hash(reg)
        assert len(counts) == 3 and set(counts.values()) == {1}  # each cell's run trained once
        with reg.session() as s:
            run = s.get(Run, killed)
            assert run.status == "completed" and run.epochs_done == 8
            assert len(run.config["resumes"]) == 1  # continued where it was killed, not started again
            assert s.scalar(select(func.count()).select_from(StudyCell).where(StudyCell.state != "done")) == 0
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


def test_a_failing_cell_is_tried_twice_then_reported_and_blocks_what_needs_it(tmp_path):
    f = _study_file(tmp_path, seeds=(0,))
    # a finding the target does not have: its fine-tunings cannot start
    f.write_text(f.read_text().replace("[datasets.demo-target]\n", "[datasets.demo-target]\nfindings = [\"Hernia\"]\n"))
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    result = runner.invoke(app, ["--db", db, "study", "run", str(f), "--executor", "local"])
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert [line.split(":")[1].strip() for line in failed] == [
        "finetune/demo-target/random/0", "finetune/demo-target/demo-source-supervised/0"]
    status = json.loads(runner.invoke(app, ["--db", db, "study", "status", str(f), "--json"]).stdout)
    by_key = {c["key"]: c for c in status["cells"]}
    assert by_key["finetune/demo-source-supervised"]["state"] == "done"  # the source stage is unaffected
    for key in ("finetune/demo-target/random/0", "finetune/demo-target/demo-source-supervised/0"):
        assert by_key[key]["state"] == "failed" and by_key[key]["attempts"] == 2
        assert "Hernia" in by_key[key]["error"]
    assert by_key["predict/demo-target/random/0"]["state"] == "pending"
    assert by_key["report"]["state"] == "pending"
