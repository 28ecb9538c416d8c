"""What the CLI prints: user strings as written (never as rich markup), undefined values as n/a with why."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
from PIL import Image as PILImage
from sqlalchemy import select, update
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.cli import app
from vitmed_cli.registry.models import Finding, Image, Label, SplitAssignment

runner = CliRunner()
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _invoke(url: str, *args: str):
    return runner.invoke(app, ["--db", url, *args])


def _bracketed_csv(folder) -> str:
    (folder / "img [v2]").mkdir(parents=True)
    rows = []
    for i in range(24):
        name = f"img [v2]/{i:03d}.png"
        PILImage.fromarray(np.full((24, 24), 10 * i, dtype=np.uint8)).save(folder / name)
        rows.append({"path": name, "patient_id": f"[/]P{i}", "view": "PA",
                     "Effusion [left]": i % 2, "[bold]Nodule[/bold]": (i // 2) % 2})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return str(folder / "labels.csv")


def test_square_brackets_in_names_are_shown_as_written(sqlite_url, tmp_path):
    csv_path = _bracketed_csv(tmp_path / "data [x]")
    for name in ("study [v2]", "odd [/]"):
        res = _invoke(sqlite_url, "ingest", "csv", csv_path, "--name", name, "--image-size", "16",
                      "--workers", "1")
        assert res.exit_code == 0, res.output
        assert f"ingested {name}" in res.stdout and "Effusion [left]" in res.stdout
    listed = _invoke(sqlite_url, "datasets", "list")
    assert listed.exit_code == 0, listed.output
    out = " ".join(listed.stdout.split())
    assert "study [v2]" in out and "odd [/]" in out
    shown = _invoke(sqlite_url, "datasets", "show", "odd [/]")
    assert shown.exit_code == 0, shown.output
    assert "Effusion [left]" in shown.stdout and "[bold]Nodule[/bold]" in shown.stdout
    split = _invoke(sqlite_url, "split", "study [v2]", "--name", "s [1]")
    assert split.exit_code == 0, split.output
    # datasets show gives each part's used images: the counts split shows and training uses
    made = json.loads(_invoke(sqlite_url, "split", "odd [/]", "--name", "s2", "--json").stdout)
    shown = json.loads(_invoke(sqlite_url, "datasets", "show", "odd [/]", "--json").stdout)
    assert shown["splits"][0]["used"] == {p: v["n_used"] for p, v in made["parts"].items() if v["n_images"]}
    assert sum(shown["splits"][0]["used"].values()) == 24
    assert "split s [1] of study [v2]" in " ".join(split.stdout.split())
    assert "Effusion [left] (positives)" in split.stdout
    errors = _invoke(sqlite_url, "datasets", "show", "[red]nope")
    assert errors.exit_code == 1 and "unknown dataset '[red]nope'" in errors.stderr


def test_undefined_metrics_are_n_a_with_the_reason(registry, tmp_path):
    build_dataset(registry, tmp_path, n=120)
    url = registry.engine.url.render_as_string(hide_password=False)
    with registry.session() as s:  # no validation image is positive for Nodule
        val = select(SplitAssignment.image_id).where(SplitAssignment.part == "val")
        nodule = s.scalar(select(Finding.id).where(Finding.canonical == "Nodule"))
        s.execute(update(Label).where(Label.image_id.in_(val), Label.finding_id == nodule).values(value=0))
    res = _invoke(url, "finetune", "--dataset", "toy", "--epochs", "1", "--arch", "vit_tiny_patch16_224",
                  "--model-kwargs", json.dumps(TINY), "--quiet", "--json")
    assert res.exit_code == 0, res.output
    run_id = json.loads(res.stdout)["run_id"]
    pred = _invoke(url, "predict", "--run", str(run_id))
    assert pred.exit_code == 0, pred.output
    row = next(line for line in pred.stdout.splitlines() if "Nodule" in line and "│" in line)
    assert row.count("n/a") == 4  # threshold, sensitivity, specificity, accuracy
    assert ("n/a for Nodule: the validation part has no positives for Nodule (no threshold, so no "
            "sensitivity, specificity or accuracy)") in " ".join(pred.stdout.split())
    out = json.loads(_invoke(url, "predict", "--run", str(run_id), "--json").stdout)
    assert set(out["undefined"]) == {"Nodule"}
    assert out["metrics"][1]["finding"] == "Nodule" and out["metrics"][1]["threshold"] is None
    with registry.session() as s:
        assert s.scalar(select(Image.id).limit(1)) is not None


def test_predict_names_why_a_finding_was_not_scored(registry, tmp_path):
    build_dataset(registry, tmp_path, n=80, no_positive="Nodule")
    url = registry.engine.url.render_as_string(hide_password=False)
    res = _invoke(url, "finetune", "--dataset", "toy", "--epochs", "1", "--min-positives", "1",
                  "--arch", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY), "--quiet", "--json")
    assert res.exit_code == 0, res.output
    run_id = json.loads(res.stdout)["run_id"]
    pred = _invoke(url, "predict", "--run", str(run_id))
    assert pred.exit_code == 0, pred.output
    assert ("not scored: Nodule (left out when the run trained: 0 training positives, fewer than "
            "min_positives 1)") in " ".join(pred.stdout.split())
    assert "not shared" not in pred.stdout


def test_predicting_twice_says_so_and_prune_frees_resume_files(registry, tmp_path):
    build_dataset(registry, tmp_path, n=80)
    url = registry.engine.url.render_as_string(hide_password=False)
    kept = json.loads(_invoke(url, "finetune", "--dataset", "toy", "--epochs", "1", "--keep-resume",
                              "--arch", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY),
                              "--quiet", "--json").stdout)
    dropped = json.loads(_invoke(url, "finetune", "--dataset", "toy", "--epochs", "1",
                                 "--arch", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY),
                                 "--quiet", "--json").stdout)
    from vitmed_cli.registry.models import Run

    with registry.session() as s:
        kept_run, dropped_run = s.get(Run, kept["run_id"]), s.get(Run, dropped["run_id"])
        kept_file = kept_run.resume_path
        assert kept_file and os.path.isfile(kept_file)
        assert dropped_run.resume_path is None and dropped_run.config["resume_removed"] is True
    more = _invoke(url, "finetune", "--resume", str(dropped["run_id"]), "--epochs", "2")
    assert more.exit_code == 1
    assert (f"its resume.pt was removed to save space - train on from its weights in a new run "
            f"(--init run:{dropped['run_id']}), or keep resume.pt next time (--keep-resume)") in more.stderr
    plain = _invoke(url, "finetune", "--resume", str(dropped["run_id"]))
    assert plain.exit_code == 1  # the removed file is said first, not "pass a larger --epochs"
    assert f"run {dropped['run_id']} is already completed (1 epochs) and its resume.pt was removed" \
        in " ".join(plain.stderr.split())
    changed = _invoke(url, "finetune", "--resume", str(kept["run_id"]), "--epochs", "2", "--lr", "0.5",
                      "--batch-size", "4")
    assert changed.exit_code == 1
    assert " ".join(changed.stderr.split()) == (
        f"Error: --batch-size, --lr: --resume {kept['run_id']} continues the run with the settings it was "
        "started with (only --epochs and --device may change) - leave them out")
    first = _invoke(url, "predict", "--run", str(kept["run_id"]), "--name", "mine")
    assert first.exit_code == 0 and "warning" not in first.stderr
    second = _invoke(url, "predict", "--run", str(kept["run_id"]), "--name", "mine")
    assert second.exit_code == 0, second.output
    assert "warning: evaluation name 'mine' was already used by evaluation(s) 1; stored another one, 2" \
        in " ".join(second.stderr.split())
    pruned = json.loads(_invoke(url, "runs", "prune", "--yes", "--json").stdout)
    assert pruned["pruned"] == [kept["run_id"]] and pruned["bytes_freed"] > 0
    assert not os.path.exists(kept_file)


def test_a_bad_option_value_is_one_line_naming_the_choices(sqlite_url):
    res = _invoke(sqlite_url, "runs", "list", "--status", "complete")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("Error: Invalid value for '--status': 'complete' is not one of 'running', "
                                  "'completed', 'failed', 'interrupted', 'stale' - see vitmed runs list --help")
    res = _invoke(sqlite_url, "checkpoints", "list", "--role", "bset")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "'init', 'best', 'last'" in res.stderr
    empty = _invoke(sqlite_url, "runs", "list", "--status", "failed")
    assert empty.exit_code == 0 and empty.stdout.strip() == "runs: none with status failed"


def test_evals_import_says_what_it_left_out_and_a_reused_name(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60, n_lateral=6)
    url = registry.engine.url.render_as_string(hide_password=False)
    with registry.session() as s:
        keys = s.execute(select(Image.key, SplitAssignment.part).join(
            SplitAssignment, SplitAssignment.image_id == Image.id)).all()
        lateral = s.scalars(select(Image.key).where(Image.view == "lateral")).first()
    test_keys = [k for k, p in keys if p == "test"]
    rows = [{"key": k, "Effusion": 0.5, "Nodule": 0.5} for k in test_keys + [lateral]]
    pd.DataFrame(rows).to_csv(tmp_path / "all.csv", index=False)
    pd.DataFrame(rows[:5]).to_csv(tmp_path / "five.csv", index=False)
    first = _invoke(url, "evals", "import", str(tmp_path / "all.csv"), "--dataset", "toy", "--name", "ext",
                    "--split", "default", "--json")
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    n_used = out["n_images"]
    assert out["n_left_out"] >= 1  # the lateral at least
    assert out["warnings"][0].startswith(f"{out['n_left_out']} of the file's {len(rows)} images were left out: "
                                         "laterals, unreadable or unlabelled images")
    again = _invoke(url, "evals", "import", str(tmp_path / "five.csv"), "--dataset", "toy", "--name", "ext",
                    "--split", "default")
    assert again.exit_code == 0, again.output
    text = " ".join(again.stderr.split())
    assert "warning: the file covers" in text and f"of the {n_used} images of the test part" in text
    assert "warning: evaluation name 'ext' was already used by evaluation(s) 1" in text


def test_help_shows_no_type_after_a_flag_and_lists_print_plainly(sqlite_url, tmp_path):
    helped = _invoke(sqlite_url, "runs", "list", "--help")
    assert helped.exit_code == 0 and "<bool>" not in helped.stdout and "--json" in helped.stdout
    pruned = _invoke(sqlite_url, "runs", "prune")
    assert pruned.exit_code == 0 and pruned.stdout.strip() == "nothing to prune"
    build_dataset_args = _invoke(sqlite_url, "ingest", "synthetic", str(tmp_path / "s"), "--name", "s",
                                 "--n-images", "12", "--image-size", "16")
    assert build_dataset_args.exit_code == 0, build_dataset_args.output
    assert _invoke(sqlite_url, "split", "s", "--name", "a").exit_code == 0
    listed = _invoke(sqlite_url, "datasets", "list")
    row = next(line for line in listed.stdout.splitlines() if "synthetic" in line)
    assert "['a']" not in row and " a " in row
