"""Derived findings (finetune --merge NAME=A,B, --no-finding NAME): computed from the stored labels
at training and at predict, equal to a direct computation over them, stored and compared by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import build_dataset
from vitmed_cli.cli import app
from vitmed_cli.compare import compare
from vitmed_cli.datasets import ingest_dataset
from vitmed_cli.datasets.derived import add_derived
from vitmed_cli.datasets.parts import load_part
from vitmed_cli.evaluations import predict
from vitmed_cli.evaluations.store import load_evaluation_arrays
from vitmed_cli.registry.models import DERIVED_NATIVE, Dataset, Evaluation, EvaluationMetric, Finding, Label, Run
from vitmed_cli.splits import make_split
from vitmed_cli.stats import roc_auc
from vitmed_cli.training import finetune

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
ARCH = "vit_tiny_patch16_224"
FAST = dict(arch=ARCH, model_kwargs=TINY, lr=2e-3, batch_size=32, device="cpu")
TINY_ARGS = ["--arch", ARCH, "--model-kwargs", json.dumps(TINY), "--quiet", "--device", "cpu"]
FINDINGS = ("Effusion", "Nodule", "Mass")


def _url(registry) -> str:
    return registry.engine.url.render_as_string(hide_password=False)


def _invoke(registry, *args):
    return CliRunner().invoke(app, ["--db", _url(registry), *args])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def _any_of(rows: np.ndarray) -> np.ndarray:
    """"Any of these findings", image by image: 1 if one is 1, 0 if all are 0, -1 if one is
    uncertain, else not mentioned (NaN)."""
    out = []
    for row in rows.tolist():
        if any(v == 1 for v in row):
            out.append(1.0)
        elif all(v == 0 for v in row):  # NaN is not 0: a finding not mentioned is not a negative
            out.append(0.0)
        elif any(v == -1 for v in row):
            out.append(-1.0)
        else:
            out.append(np.nan)
    return np.array(out)


def _none_of(rows: np.ndarray) -> np.ndarray:
    return np.array([{1.0: 0.0, 0.0: 1.0}.get(v, v) for v in _any_of(rows).tolist()])


def _ignore_uncertain(raw: np.ndarray) -> np.ndarray:
    """The training target under --uncertain ignore: not mentioned -> 0, uncertain -> left out."""
    y = np.where(np.isnan(raw), 0.0, raw)
    return np.where(y == -1, np.nan, y)


def _part_rows(info: dict, part: str) -> np.ndarray:
    return (info["parts"] == part) & info["usable"]


def test_merge_equals_a_direct_computation_over_the_stored_labels(registry, tmp_path):
    info = build_dataset(registry, tmp_path, n=240, findings=FINDINGS, uncertain_rate=0.15,
                         missing_rate=0.15)
    want = {part: _any_of(info["labels"][_part_rows(info, part)][:, [1, 2]]) for part in ("train", "test")}
    # the direct computation meets every case: positive, negative, uncertain, not mentioned
    assert {1.0, 0.0, -1.0} <= set(want["test"][~np.isnan(want["test"])].tolist())
    assert np.isnan(want["test"]).any()
    with registry.session() as s:
        part = load_part(s, "toy", None, "test")
        # sources by canonical or native name ("nodule" is the toy dataset's own spelling)
        merged, skipped = add_derived(part, {"nodule_mass": ["nodule", "Mass"]}, None)
    assert skipped == {} and merged.findings == [*FINDINGS, "nodule_mass"]
    np.testing.assert_array_equal(merged.labels[:, -1], want["test"])
    np.testing.assert_array_equal(merged.labels[:, :3], part.labels)  # the dataset's own untouched
    assert merged.finding_ids[-1] is None and merged.derived == {
        "nodule_mass": {"kind": "merge", "of": ["Nodule", "Mass"]}}

    # training: learned beside the findings named, from the same labels
    res = finetune(registry, dataset="toy", epochs=1, findings=["Effusion"], uncertain="ignore",
                   merge={"nodule_mass": ["Nodule", "Mass"]}, **FAST)
    y_train = _ignore_uncertain(want["train"])
    with registry.session() as s:
        run = s.get(Run, res.run_id)
        assert run.findings == ["Effusion", "nodule_mass"]  # Nodule and Mass: not in `findings`
        assert run.config["train"]["merge"] == {"nodule_mass": ["Nodule", "Mass"]}
        assert run.config["derived_findings"] == {"nodule_mass": {"kind": "merge", "of": ["Nodule", "Mass"]}}
        assert run.config["pos_weight"]["nodule_mass"] == pytest.approx(
            np.sum(y_train == 0) / np.sum(y_train == 1), rel=1e-6)

    # predict: the ground truth of the test part derived again, stored like any finding
    ev = predict(registry, run_id=res.run_id, device="cpu")
    assert list(ev.auc) == ["Effusion", "nodule_mass"]
    with registry.session() as s:
        arrays = load_evaluation_arrays(s, ev.evaluation_id)
        j = arrays.findings.index("nodule_mass")
        np.testing.assert_array_equal(arrays.image_ids, info["image_ids"][_part_rows(info, "test")])
        np.testing.assert_array_equal(arrays.y_true[:, j], _ignore_uncertain(want["test"]))
        keep = ~np.isnan(arrays.y_true[:, j])
        stored_auc = s.scalar(select(EvaluationMetric.auc).where(
            EvaluationMetric.evaluation_id == ev.evaluation_id, EvaluationMetric.finding == "nodule_mass"))
        assert stored_auc == pytest.approx(float(roc_auc(arrays.y_true[keep, j], arrays.scores[keep, j])))
        # its predictions need a finding row: marked derived, without labels, not a finding of the
        # dataset as ingested
        row = s.scalars(select(Finding).where(Finding.canonical == "nodule_mass")).one()
        assert row.native == DERIVED_NATIVE
        assert s.scalar(select(func.count()).select_from(Label).where(Label.finding_id == row.id)) == 0
        ds = s.scalars(select(Dataset).where(Dataset.name == "toy")).one()
        assert [f.canonical for f in ds.findings] == list(FINDINGS)
    again = predict(registry, run_id=res.run_id, device="cpu", name="again")
    assert again.auc == ev.auc
    with registry.session() as s:  # one row per dataset and name, however often it is scored
        assert s.scalar(select(func.count()).select_from(Finding).where(Finding.native == DERIVED_NATIVE)) == 1
    shown = _invoke(registry, "datasets", "show", "toy", "--json")
    assert shown.exit_code == 0, shown.output
    assert "nodule_mass" not in shown.stdout


def test_no_finding_equals_a_direct_computation_over_the_stored_labels(registry, tmp_path):
    info = build_dataset(registry, tmp_path, n=240, findings=("Effusion", "Nodule", "Exclude"),
                         uncertain_rate=0.1, missing_rate=0.1)
    with registry.session() as s:
        s.scalars(select(Dataset)).one().options = {"non_findings": ["Exclude"]}
    # a non-finding is not a finding an image can be free of
    want = {part: _none_of(info["labels"][_part_rows(info, part)][:, [0, 1]]) for part in ("val", "test")}
    assert {1.0, 0.0, -1.0} <= set(want["test"][~np.isnan(want["test"])].tolist())
    with registry.session() as s:
        part = load_part(s, "toy", None, "test")
        derived, _ = add_derived(part, None, "No Finding", non_findings=["Exclude"])
    np.testing.assert_array_equal(derived.labels[:, -1], want["test"])
    assert derived.derived == {"No Finding": {"kind": "no_finding", "of": ["Effusion", "Nodule"]}}

    res = finetune(registry, dataset="toy", epochs=1, uncertain="ignore", no_finding="No Finding", **FAST)
    with registry.session() as s:
        run = s.get(Run, res.run_id)
        assert run.findings == ["Effusion", "Nodule", "No Finding"]  # Exclude: a non-finding
        assert run.config["train"]["no_finding"] == "No Finding"
    ev = predict(registry, run_id=res.run_id, part="val", device="cpu")
    with registry.session() as s:
        arrays = load_evaluation_arrays(s, ev.evaluation_id)
    np.testing.assert_array_equal(arrays.y_true[:, arrays.findings.index("No Finding")],
                                  _ignore_uncertain(want["val"]))


NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


def test_chestxray14_no_finding_is_its_no_finding_label(registry, tmp_path):
    """ChestX-ray14 lists "No Finding" in Finding Labels, not as a finding: derived, it is that label."""
    rng = np.random.default_rng(0)
    root = tmp_path / "nih"
    choices = ["No Finding", "No Finding", "Effusion", "Nodule|Mass", "Cardiomegaly|Effusion", "Hernia"]
    rows, expected = [], {}
    for i in range(30):
        name, labels = f"{i:08d}_000.png", choices[int(rng.integers(len(choices)))]
        rows.append(f"{name},{labels},0,{i},50,F,PA,2500,2048,0.143,0.143\n")
        expected[name] = 1.0 if labels == "No Finding" else 0.0
        (root / "images").mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((40, 40), 40 + i, dtype=np.uint8)).save(root / "images" / name)
    (root / "Data_Entry_2017_v2020.csv").write_text(NIH_HEADER + "".join(rows))
    ingest_dataset(registry, "cxr14", root, name="nih", image_size=16, workers=1)
    make_split(registry, "nih", val=0.2, test=0.2, seed=0)
    got = {}
    with registry.session() as s:
        for part in ("train", "val", "test"):
            p, _ = add_derived(load_part(s, "nih", None, part), None, "No Finding")
            assert len(p.derived["No Finding"]["of"]) == 14  # every ChestX-ray14 finding
            got.update(zip(p.image_keys, p.labels[:, -1].tolist()))
    assert got == expected and 0 < sum(expected.values()) < len(expected)


def test_a_native_no_finding_is_chosen_with_findings(registry, tmp_path):
    build_dataset(registry, tmp_path, n=80, findings=("No Finding", "Effusion", "Nodule"))
    with registry.session() as s:  # even where the dataset lists it as a non-finding
        s.scalars(select(Dataset)).one().options = {"non_findings": ["No Finding"]}
    result = _invoke(registry, "finetune", "--dataset", "toy", "--epochs", "1", "--findings",
                     "no finding,Effusion", *TINY_ARGS, "--json")  # the dataset's own spelling
    assert result.exit_code == 0, result.output
    with registry.session() as s:
        assert s.get(Run, json.loads(result.stdout)["run_id"]).findings == ["No Finding", "Effusion"]
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--no-finding", "No Finding",
                                   *TINY_ARGS))
    assert line == ("Error: --no-finding No Finding is already a finding of dataset 'toy' - learn it with "
                    "--findings, or give the derived finding another name")


def test_cli_merge_errors_are_one_line_naming_the_flag_and_its_form(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60, findings=FINDINGS)
    form = "Error: --merge must be NAME=A,B (a new finding NAME, then the findings it merges), e.g. " \
           "nodule_mass=Nodule,Mass - got "
    for bad in ("nodule_mass", "=Nodule,Mass", "nodule_mass=Nodule,", "nodule_mass="):
        line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--merge", bad, *TINY_ARGS))
        assert line == form + repr(bad)
    cases = {
        ("nm=Nodule,Mass", "nm=Effusion"): "Error: --merge names nm twice - give each merged finding its own NAME",
        ("nm=Nodul,Mass",): "Error: --merge nm: Nodul is not a finding of dataset 'toy' - choose from: "
                            "Effusion, Nodule, Mass",
        ("Nodule=Effusion,Mass",): "Error: --merge Nodule is already a finding of dataset 'toy' - learn it "
                                   "with --findings, or give the derived finding another name",
        ("MASS=Nodule,Effusion",): "Error: --merge MASS is another spelling of Mass, a finding of dataset "
                                   "'toy' - learn it with --findings, or give the derived finding another name",
        ("nm=nm,Mass",): "Error: --merge nm merges itself - give the merged finding a new NAME",
    }
    for merges, want in cases.items():
        args = [a for m in merges for a in ("--merge", m)]
        assert _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", *args, *TINY_ARGS)) == want
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0


def test_derived_findings_compare_by_name_and_follow_the_run_to_another_dataset(registry, tmp_path):
    build_dataset(registry, tmp_path / "a", n=160, findings=FINDINGS)
    build_dataset(registry, tmp_path / "b", name="other", n=80, findings=("Effusion", "Nodule"), seed=3)
    merge = {"nodule_mass": ["Nodule", "Mass"]}
    evs = [predict(registry, run_id=finetune(registry, dataset="toy", epochs=1, seed=seed, merge=merge,
                                             **FAST).run_id, device="cpu").evaluation_id
           for seed in (0, 1)]
    pair = compare(registry, evals=evs, n_resamples=50)["pairs"][0]
    assert "nodule_mass" in [f["finding"] for f in pair["findings"]]
    # another dataset without Mass: the run's nodule_mass cannot be derived there, and says why
    with registry.session() as s:
        run_id = s.scalar(select(Evaluation.run_id).where(Evaluation.id == evs[0]))
    other = predict(registry, run_id=run_id, dataset="other", device="cpu")
    assert set(other.auc) == {"Effusion", "Nodule"}
    assert other.skipped_reasons["nodule_mass"] == (
        "derived from Nodule, Mass, but Mass is not a finding of dataset 'other'")


def test_resume_recomputes_the_derived_findings(registry, tmp_path):
    import signal

    from vitmed_cli.training import resume

    build_dataset(registry, tmp_path, n=160, findings=FINDINGS)
    merge = {"nodule_mass": ["Nodule", "Mass"]}
    whole = finetune(registry, dataset="toy", epochs=2, seed=4, merge=merge, **FAST)

    def interrupt(epoch, batch):
        if epoch == 0 and batch == 1:
            signal.raise_signal(signal.SIGINT)

    cut = finetune(registry, dataset="toy", epochs=2, seed=4, merge=merge, on_step=interrupt, **FAST)
    assert cut.status == "interrupted"
    done = resume(registry, cut.run_id)
    assert done.status == "completed"
    for a, b in zip(whole.history, done.history, strict=True):
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6)


def test_merge_names_are_checked_before_anything_runs():
    from vitmed_cli.errors import TrainingError
    from vitmed_cli.training.config import TrainConfig

    with pytest.raises(TrainingError, match=r"^`merge` x needs the findings it merges"):
        TrainConfig(dataset="d", merge={"x": []}).check()
    with pytest.raises(TrainingError, match=r"^`no_finding` x is also a `merge` NAME"):
        TrainConfig(dataset="d", merge={"x": ["A", "B"]}, no_finding="x").check()


def test_two_evaluations_making_one_derived_row_at_once_share_it(any_registry, tmp_path):
    """Runs predicted in parallel (a study on a cluster) make a derived finding's row once."""
    import threading
    import time

    from vitmed_cli.evaluations.store import derived_finding_ids

    registry = any_registry
    build_dataset(registry, tmp_path, n=40, findings=FINDINGS)
    with registry.session(readonly=True) as s:
        part, _ = add_derived(load_part(s, "toy", None, "test"), {"nm": ["Nodule", "Mass"]}, None)
        ds_id = s.scalar(select(Dataset.id))
    ids: dict[str, int] = {}

    def second() -> None:
        with registry.session() as s:
            ids["b"] = derived_finding_ids(s, ds_id, part)[-1]

    with registry.session() as s:
        ids["a"] = derived_finding_ids(s, ds_id, part)[-1]  # made, not yet committed
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.5)  # the second waits: on the row's unique key (PostgreSQL), the write lock (SQLite)
    other.join()
    assert ids["a"] == ids["b"]
    with registry.session() as s:
        rows = s.scalars(select(Finding).where(Finding.canonical == "nm")).all()
        assert [(r.id, r.native) for r in rows] == [(ids["a"], DERIVED_NATIVE)]


def test_derived_names_fit_the_registry(registry, tmp_path):
    build_dataset(registry, tmp_path, n=60, findings=FINDINGS)
    long = "n" * 129
    line = _one_line_error(_invoke(registry, "finetune", "--dataset", "toy", "--no-finding", long, *TINY_ARGS))
    assert line == ("Error: the no-finding name is 129 characters long; the registry keeps at most 128 - "
                    "choose a shorter --no-finding (e.g. 'nnnnnnnnnnnnnnnnnnnnnnnn')")
