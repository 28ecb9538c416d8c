"""`vitmed evals import` and `vitmed compare` end to end on a small registry built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from vitmed_cli import stats
from vitmed_cli.cli import app
from vitmed_cli.compare import compare
from vitmed_cli.evaluations import import_evaluation, load_evaluation_arrays
from vitmed_cli.errors import InputError, RefusedError
from vitmed_cli.registry.models import (
    MACRO,
    Comparison,
    ComparisonResult,
    Dataset,
    Evaluation,
    Finding,
    Image,
    Label,
    Prediction,
    Split,
    SplitAssignment,
)

FINDINGS = [("cardiomegaly", "Cardiomegaly"), ("effusion", "Pleural effusion"), ("nodule", "Nodule/Mass")]
N = 120


def make_dataset(registry, name="toy", n=N, seed=0):
    """A dataset with labels (1/0/-1/missing) and a split whose test part is every image."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, len(FINDINGS)), dtype=int)
    with registry.session() as s:
        ds = Dataset(name=name, format="csv", source_path="/nowhere", image_size=32)
        ds.findings = [Finding(canonical=c, native=nat, position=i) for i, (c, nat) in enumerate(FINDINGS)]
        s.add(ds)
        s.flush()
        sp = Split(dataset_id=ds.id, name="default", method="random", seed=0)
        s.add(sp)
        imgs = [Image(dataset_id=ds.id, key=f"img{i:04d}", patient_id=f"p{i}", view="frontal",
                      source_path=f"/nowhere/{i}.png") for i in range(n)]
        s.add_all(imgs)
        s.flush()
        for i, img in enumerate(imgs):
            s.add(SplitAssignment(split_id=sp.id, image_id=img.id, part="test"))
            for j, f in enumerate(ds.findings):
                r = rng.random()
                if r < 0.3:
                    y[i, j] = 1
                    s.add(Label(image_id=img.id, finding_id=f.id, value=1))
                elif r < 0.35:
                    y[i, j] = -1
                    s.add(Label(image_id=img.id, finding_id=f.id, value=-1))
                elif r < 0.8:
                    s.add(Label(image_id=img.id, finding_id=f.id, value=0))
                # else: not mentioned
    return y


def write_csv(path, y, strength, seed, columns=None, keys=None, n=None):
    rng = np.random.default_rng(seed)
    n = n or y.shape[0]
    yy = (y[:n] == 1).astype(float)
    p = 1 / (1 + np.exp(-(strength * yy + rng.normal(size=yy.shape))))
    p = np.round(p, 2)  # ties, as real exports often have
    columns = columns or [c for c, _ in FINDINGS]
    keys = keys or [f"img{i:04d}" for i in range(n)]
    lines = ["image_id," + ",".join(columns)]
    for i in range(n):
        lines.append(keys[i] + "," + ",".join(f"{v:.2f}" for v in p[i, : len(columns)]))
    path.write_text("\n".join(lines) + "\n")
    return p


def _db(registry):
    return registry.engine.url.render_as_string(hide_password=False)


def invoke(registry, *args):
    return CliRunner().invoke(app, ["--db", _db(registry), *args])


def test_import_stores_predictions_labels_and_auc(registry, tmp_path):
    y = make_dataset(registry)
    p = write_csv(tmp_path / "a.csv", y, 2.0, seed=1, columns=["cardiomegaly", "Pleural effusion", "nodule"])
    res = invoke(registry, "evals", "import", str(tmp_path / "a.csv"), "--dataset", "toy",
                 "--split", "default", "--name", "ext", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    truth = (y == 1).astype(float)  # uncertain -> 0 (zeros), not mentioned -> 0
    want = np.mean([stats.roc_auc(truth[:, j], p[:, j]) for j in range(3)])
    assert out["n_images"] == N and out["macro_auc"] == pytest.approx(want, abs=1e-12)
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == N * 3
        arr = load_evaluation_arrays(s, out["evaluation_id"])
        ev = s.get(Evaluation, out["evaluation_id"])
        assert ev.source == "import" and ev.init_name == "ext" and ev.uncertain_policy == "zeros"
    assert arr.findings == ["cardiomegaly", "effusion", "nodule"]
    np.testing.assert_array_equal(arr.y_true, truth)
    np.testing.assert_allclose(arr.scores, p)
    # --uncertain ignore leaves uncertain labels out
    out2 = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="ext2", uncertain="ignore")
    with registry.session() as s:
        arr2 = load_evaluation_arrays(s, out2["evaluation_id"])
    assert np.array_equal(np.isnan(arr2.y_true), y == -1)


@pytest.mark.parametrize(
    "lines,message",
    [
        (["image_id,cardiomegaly,bogus", "img0000,0.1,0.2"],
         "Error: a.csv: columns bogus are not findings of 'toy' (findings: cardiomegaly, effusion, nodule)"),
        (["image_id,cardiomegaly", "img0000,1.5"],
         "Error: a.csv: column 'cardiomegaly' has 1 values that are not probabilities in [0, 1] (e.g. row 2: '1.5')"),
        (["image_id,cardiomegaly", "img0000,"],
         "Error: a.csv: column 'cardiomegaly' has 1 values that are not probabilities in [0, 1]"),
        (["image_id,cardiomegaly", "nope1,0.1", "nope2,0.2"],
         "Error: a.csv: 2 image keys are not images of 'toy' (e.g. nope1, nope2)"),
    ],
)
def test_import_bad_input_is_one_line_and_stores_nothing(registry, tmp_path, lines, message):
    make_dataset(registry, n=5)
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    res = invoke(registry, "evals", "import", str(tmp_path / "a.csv"), "--dataset", "toy", "--name", "x")
    assert res.exit_code == 1
    assert res.stderr.startswith(message), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Evaluation)) == 0


def test_compare_two_inits_cli_json_and_storage(any_registry, tmp_path):
    registry = any_registry
    y = make_dataset(registry)
    pa = write_csv(tmp_path / "a.csv", y, 3.0, seed=1)
    pb = write_csv(tmp_path / "b.csv", y, 0.5, seed=2)
    ea = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="dinov2")["evaluation_id"]
    eb = import_evaluation(registry, tmp_path / "b.csv", dataset="toy", name="imagenet")["evaluation_id"]
    res = invoke(registry, "compare", "--dataset", "toy", "--init", "dinov2", "--init", "imagenet",
                 "--n-resamples", "200", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["a"] == "dinov2" and out["b"] == "imagenet" and out["n_images"] == N
    assert [f["finding"] for f in out["findings"]] == ["cardiomegaly", "effusion", "nodule"]
    truth = (y == 1).astype(float)
    boot = stats.paired_bootstrap(truth, pa, pb, n_resamples=200, seed=0)
    adj = stats.fdr_bh(boot.p_value)
    for j, f in enumerate(out["findings"]):
        assert set(f) >= {"finding", "auc_a", "auc_b", "diff", "ci_low", "ci_high", "p_value",
                          "p_delong", "p_adjusted"}
        assert f["auc_a"] == pytest.approx(stats.roc_auc(truth[:, j], pa[:, j]), abs=1e-12)
        assert f["ci_low"] == pytest.approx(boot.findings[j].ci_low, abs=1e-12)
        assert f["p_value"] == pytest.approx(boot.findings[j].p_value, abs=1e-12)
        assert f["p_adjusted"] == pytest.approx(adj[j], abs=1e-12)
        assert f["p_delong"] == pytest.approx(
            stats.delong_test(truth[:, j], pa[:, j], pb[:, j]).p_value, abs=1e-12)
    assert out["macro"]["diff"] > 0.1 and out["macro"]["p_value"] < 0.05
    assert out["macro"]["better"] == "dinov2" and out["macro"]["p_delong"] is None
    with registry.session() as s:
        cmp_row = s.get(Comparison, out["comparison_id"])
        assert (cmp_row.evaluation_a_id, cmp_row.evaluation_b_id) == (ea, eb)
        assert cmp_row.n_resamples == 200 and cmp_row.group_id
        rows = {r.finding: r for r in cmp_row.results}
        assert set(rows) == {"cardiomegaly", "effusion", "nodule", MACRO}
        assert rows[MACRO].diff == pytest.approx(out["macro"]["diff"])
        assert rows["nodule"].p_adjusted == pytest.approx(out["findings"][2]["p_adjusted"])


def test_compare_three_models_fdr_over_all_pairs_and_csv(registry, tmp_path):
    y = make_dataset(registry)
    ids = []
    for name, strength, seed in [("a", 3.0, 1), ("b", 1.0, 2), ("c", 0.2, 3)]:
        write_csv(tmp_path / f"{name}.csv", y, strength, seed=seed)
        ids.append(import_evaluation(registry, tmp_path / f"{name}.csv", dataset="toy", name=name)["evaluation_id"])
    res = invoke(registry, "compare", *sum([["--eval", str(i)] for i in ids], []), "--n-resamples", "100",
                 "--json", "--csv", str(tmp_path / "out.csv"))
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["pairs"]) == 3
    raw = [f["p_value"] for p in out["pairs"] for f in p["findings"]]
    np.testing.assert_allclose([f["p_adjusted"] for p in out["pairs"] for f in p["findings"]],
                               stats.fdr_bh(raw), atol=1e-12)
    csv_lines = (tmp_path / "out.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 3 * 4 and csv_lines[0].startswith("comparison_id,a,b,finding,auc_a")
    with registry.session() as s:
        groups = s.scalars(select(Comparison.group_id)).all()
        assert len(groups) == 3 and len(set(groups)) == 1
        assert s.scalar(select(func.count()).select_from(ComparisonResult)) == 12


def test_compare_refuses_different_images_unless_intersect(registry, tmp_path):
    y = make_dataset(registry)
    write_csv(tmp_path / "a.csv", y, 2.0, seed=1)
    write_csv(tmp_path / "b.csv", y, 1.0, seed=2, n=100, columns=["cardiomegaly", "effusion"])
    ea = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="a")["evaluation_id"]
    eb = import_evaluation(registry, tmp_path / "b.csv", dataset="toy", name="b")["evaluation_id"]
    res = invoke(registry, "compare", "--eval", str(ea), "--eval", str(eb), "--n-resamples", "50")
    assert res.exit_code == 1
    assert res.stderr.strip() == (
        f"Error: evaluations {ea} and {eb} differ in 20 images (20 only in {ea}, 0 only in {eb}, "
        "e.g. img0100, img0101, img0102, ...) - rerun predict on the same split, or pass --intersect"
    )
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Comparison)) == 0
    res = invoke(registry, "compare", "--eval", str(ea), "--eval", str(eb), "--n-resamples", "50",
                 "--intersect", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_images"] == 100 and out["n_dropped_images"] == 20
    assert [f["finding"] for f in out["findings"]] == ["cardiomegaly", "effusion"]
    assert out["skipped_findings"] == [{"finding": "nodule", "reason": f"only in evaluation {ea}"}]


def test_compare_refuses_different_ground_truth(registry, tmp_path):
    y = make_dataset(registry)
    write_csv(tmp_path / "a.csv", y, 2.0, seed=1)
    ea = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="a")["evaluation_id"]
    eb = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="b", uncertain="ones")["evaluation_id"]
    n_unc = int((y == -1).sum())
    with pytest.raises(RefusedError, match=rf"disagree on the ground truth of {n_unc} image x finding labels"):
        compare(registry, evals=[ea, eb], n_resamples=20)
    out = compare(registry, evals=[ea, eb], n_resamples=20, intersect=True)
    assert out["pairs"][0]["n_label_conflicts"] == n_unc


def test_compare_errors_name_the_fix(registry, tmp_path):
    make_dataset(registry)
    res = invoke(registry, "compare", "--dataset", "toy", "--init", "dinov2", "--init", "imagenet")
    assert res.exit_code == 1
    assert res.stderr.strip() == (
        "Error: no evaluation of init 'dinov2' on the test part of 'toy' (none yet) - "
        "run vitmed predict or vitmed evals import first"
    )
    with pytest.raises(InputError, match="two or more models"):
        compare(registry, evals=[1])


def test_compare_checks_the_csv_path_before_computing_or_storing(registry, tmp_path):
    y = make_dataset(registry)
    ids = []
    for name, strength, seed in [("a", 2.0, 1), ("b", 1.0, 2)]:
        write_csv(tmp_path / f"{name}.csv", y, strength, seed=seed)
        ids.append(import_evaluation(registry, tmp_path / f"{name}.csv", dataset="toy", name=name)["evaluation_id"])
    evals = ["--eval", str(ids[0]), "--eval", str(ids[1]), "--n-resamples", "20"]
    (tmp_path / "afile").write_text("")
    bad = tmp_path / "afile" / "out.csv"
    res = invoke(registry, "compare", *evals, "--csv", str(bad))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip() == f"Error: cannot create the folder of --csv {bad}: File exists - choose a writable place"
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Comparison)) == 0
    # a failed comparison leaves an existing file as it was, and creates no new one
    keep = tmp_path / "keep.csv"
    keep.write_text("old\n")
    for target in (keep, tmp_path / "new.csv"):
        res = invoke(registry, "compare", "--eval", str(ids[0]), "--eval", "999", "--csv", str(target))
        assert res.exit_code == 1
    assert keep.read_text() == "old\n" and not (tmp_path / "new.csv").exists()
    res = invoke(registry, "compare", *evals, "--csv", str(keep))
    assert res.exit_code == 0, res.output
    assert keep.read_text().startswith("comparison_id,a,b,finding")


def test_compare_help_documents_both_json_shapes():
    res = CliRunner().invoke(app, ["compare", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert 'Two models: the pair object itself, {"comparison_id", "a", "b"' in text
    assert 'Three or more models: {"group_id": ID, "pairs": LIST}' in text


def test_import_accepts_native_paths_with_a_release_prefix(registry, tmp_path):
    # CheXpert's CSV names images "CheXpert-v1.0-small/train/..."; vitmed keys drop the prefix
    y = make_dataset(registry)
    keys = [f"CheXpert-v1.0-small/img{i:04d}" for i in range(N)]
    p = write_csv(tmp_path / "a.csv", y, 2.0, seed=3, keys=keys)
    out = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="native")
    with registry.session() as s:
        arr = load_evaluation_arrays(s, out["evaluation_id"])
    assert arr.image_keys == [f"img{i:04d}" for i in range(N)]
    np.testing.assert_allclose(arr.scores, p)


def test_import_matches_file_paths_and_leaves_out_laterals(registry, tmp_path):
    y = make_dataset(registry)
    with registry.session() as s:
        lat = s.scalars(select(Image).where(Image.key.in_(["img0000", "img0001"]))).all()
        for img in lat:
            img.view = "lateral"
    # MIMIC-style file paths whose stem is the registered key
    keys = [f"files/p10/p{i}/s1/img{i:04d}.jpg" for i in range(N)]
    write_csv(tmp_path / "a.csv", y, 2.0, seed=4, keys=keys)
    out = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="paths")
    assert out["n_images"] == N - 2 and out["n_left_out"] == 2
    with registry.session() as s:
        arr = load_evaluation_arrays(s, out["evaluation_id"])
    assert "img0000" not in arr.image_keys and len(arr.image_keys) == N - 2


def test_compare_mixes_a_run_and_an_imported_evaluation(registry, tmp_path):
    from vitmed_cli.registry.models import Run

    y = make_dataset(registry)
    write_csv(tmp_path / "a.csv", y, 2.0, seed=5)
    write_csv(tmp_path / "b.csv", y, 0.5, seed=6)
    ea = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="mine")["evaluation_id"]
    eb = import_evaluation(registry, tmp_path / "b.csv", dataset="toy", name="theirs")["evaluation_id"]
    with registry.session() as s:
        ds = s.scalar(select(Dataset))
        sp = s.scalar(select(Split))
        run = Run(dataset_id=ds.id, split_id=sp.id, init_name="random", arch="x", image_size=32,
                  seed=0, epochs_planned=1, status="completed")
        s.add(run)
        s.flush()
        s.get(Evaluation, ea).run_id = run.id
        run_id = run.id
    res = invoke(registry, "compare", "--run", str(run_id), "--eval", str(eb), "--n-resamples", "50",
                 "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["evaluation_a"], out["evaluation_b"]) == (ea, eb)
    assert out["macro"]["diff"] > 0  # the stronger model is A
    both = invoke(registry, "compare", "--dataset", "toy", "--init", "mine", "--eval", str(eb))
    assert both.exit_code == 1 and "not both" in both.stderr


def test_table_warns_when_resamples_were_degenerate(registry, tmp_path):
    y = make_dataset(registry, n=14, seed=2)
    write_csv(tmp_path / "a.csv", y, 2.0, seed=7, n=14)
    write_csv(tmp_path / "b.csv", y, 0.5, seed=8, n=14)
    ea = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="a")["evaluation_id"]
    eb = import_evaluation(registry, tmp_path / "b.csv", dataset="toy", name="b")["evaluation_id"]
    res = invoke(registry, "compare", "--eval", str(ea), "--eval", str(eb), "--n-resamples", "200")
    assert res.exit_code == 0, res.output
    out = json.loads(invoke(registry, "compare", "--eval", str(ea), "--eval", str(eb),
                            "--n-resamples", "200", "--json").stdout)
    worst = max(f["n_degenerate"] for f in out["findings"] + [out["macro"]])
    assert worst > 0
    assert f"warning: up to {worst} of 200 resamples" in " ".join(res.stdout.split())


def test_warnings_are_stored_with_the_comparison_and_reach_json_and_the_report(registry, tmp_path):
    from vitmed_cli.registry.models import Comparison
    from vitmed_cli.report import create_report

    y = make_dataset(registry, n=14, seed=2)
    write_csv(tmp_path / "a.csv", y, 2.0, seed=7, n=14)
    write_csv(tmp_path / "b.csv", y, 0.5, seed=8, n=14)
    ea = import_evaluation(registry, tmp_path / "a.csv", dataset="toy", name="a")["evaluation_id"]
    eb = import_evaluation(registry, tmp_path / "b.csv", dataset="toy", name="b")["evaluation_id"]
    out = json.loads(invoke(registry, "compare", "--eval", str(ea), "--eval", str(eb),
                            "--n-resamples", "200", "--json").stdout)
    worst = max(f["n_degenerate"] for f in out["findings"] + [out["macro"]])
    expected = (f"up to {worst} of 200 resamples had a finding with no positive or no negative image "
                f"and were left out of it (macro: {out['macro']['n_degenerate']}); with this few images "
                "the p-values are unreliable - compare on a larger test part")
    assert out["warnings"] == [expected]
    with registry.session() as s:
        assert s.get(Comparison, out["comparison_id"]).options["warnings"] == [expected]
    md = create_report(registry, tmp_path / "r.md", n_resamples=20).path.read_text()
    assert f"> **Warning:** {expected}" in md
    html = create_report(registry, tmp_path / "r.html", n_resamples=20).path.read_text()
    assert f"<strong>Warning:</strong> {expected}" in html


def test_too_few_resamples_for_alpha_is_a_stored_warning(registry, tmp_path):
    from vitmed_cli.registry.models import Comparison

    y = make_dataset(registry)
    ids = []
    for name, strength, seed in [("a", 2.0, 1), ("b", 1.0, 2)]:
        write_csv(tmp_path / f"{name}.csv", y, strength, seed=seed)
        ids.append(import_evaluation(registry, tmp_path / f"{name}.csv", dataset="toy", name=name)["evaluation_id"])
    out = json.loads(invoke(registry, "compare", "--eval", str(ids[0]), "--eval", str(ids[1]),
                            "--n-resamples", "30", "--json").stdout)
    floor = 2 / 31  # the smallest bootstrap p-value with 30 resamples, above alpha 0.05
    from vitmed_cli.choices import DEFAULT_RESAMPLES

    expected = (f"with 30 resamples the smallest possible p-value is {floor:.3g}, above `alpha` 0.05: no "
                f"difference can come out significant - use `n_resamples` of at least 40 (default "
                f"{DEFAULT_RESAMPLES})")
    assert expected in out["warnings"]
    shown = invoke(registry, "compare", "--eval", str(ids[0]), "--eval", str(ids[1]), "--n-resamples", "30")
    assert "above --alpha 0.05" in " ".join(shown.stdout.split())
    assert min(f["p_value"] for f in out["findings"]) >= floor - 1e-12
    with registry.session() as s:
        assert any(w.startswith("with 30 resamples") for w in s.get(Comparison, out["comparison_id"]).options["warnings"])
    enough = json.loads(invoke(registry, "compare", "--eval", str(ids[0]), "--eval", str(ids[1]),
                               "--n-resamples", "40", "--json").stdout)
    assert not any(w.startswith("with 40 resamples") for w in enough["warnings"])
