"""Multi-seed comparisons: compare_over_seeds, adjust_fdr and `vitmed compare --over-seeds`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import func, select
from statsmodels.stats.multitest import multipletests
from typer.testing import CliRunner

from helpers import add_seeded_evaluations
from vitmed_cli import stats
from vitmed_cli.cli import app
from vitmed_cli.compare import adjust_fdr, compare, compare_over_seeds
from vitmed_cli.errors import InputError, RefusedError
from vitmed_cli.evaluations import load_evaluation_arrays
from vitmed_cli.registry.models import MACRO, Comparison, ComparisonResult

INITS = {"dinov2": 1.6, "imagenet": 0.6}


def _ids(data, init, seeds):
    return [data["evaluations"][(init, s)] for s in seeds]


def test_compare_over_seeds_stores_one_row_equal_to_the_statistic(any_registry):
    registry = any_registry
    data = add_seeded_evaluations(registry, inits=INITS, seeds=(0, 1, 2))
    ids_a, ids_b = _ids(data, "dinov2", (0, 1, 2)), _ids(data, "imagenet", (1, 2))
    out = compare_over_seeds(registry, evaluations_a=ids_a, evaluations_b=ids_b, label_a="dinov2",
                             label_b="imagenet", n_resamples=200, seed=3, per_seed=True, group_id="study-1")
    assert out["group_id"] == "study-1" and len(out["pairs"]) == 1
    pair = out["pairs"][0]
    # the statistic on the arrays read back from the registry, independently of compare
    with registry.session() as s:
        arrays = [load_evaluation_arrays(s, i) for i in ids_a + ids_b]
    y = arrays[0].y_true
    for arr in arrays:
        y = np.where(np.isnan(arr.scores), np.nan, y)
    want = stats.paired_bootstrap_seeds(y, [a.scores for a in arrays[:3]], [a.scores for a in arrays[3:]],
                                        n_resamples=200, seed=3, seed_pairs=[(1, 0), (2, 1)])
    assert [f["finding"] for f in pair["findings"]] == data["findings"]
    for f, w, wa, wb in zip(pair["findings"], want.findings, want.a, want.b):
        assert (f["auc_a"], f["auc_b"], f["diff"], f["ci_low"], f["ci_high"], f["p_value"]) == (
            w.auc_a, w.auc_b, w.diff, w.ci_low, w.ci_high, w.p_value)
        assert (f["sd_a"], f["bootstrap_sd_b"]) == (wa.sd, wb.bootstrap_sd)
        assert f["p_delong"] is None
    assert pair["macro"]["p_value"] == want.macro.p_value and pair["macro"]["diff"] == want.macro.diff
    np.testing.assert_allclose([f["p_adjusted"] for f in pair["findings"]],
                               multipletests([w.p_value for w in want.findings], method="fdr_bh")[1])
    assert pair["mode"] == "seeds" and pair["seeds_a"] == [0, 1, 2] and pair["seeds_b"] == [1, 2]
    assert [p["seed"] for p in pair["per_seed"]] == [1, 2]
    assert pair["per_seed"][0]["macro"]["p_value"] == want.per_seed[0].result.macro.p_value
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Comparison)) == 1
        row = s.get(Comparison, pair["comparison_id"])
        assert (row.evaluation_a_id, row.evaluation_b_id, row.group_id) == (ids_a[0], ids_b[0], "study-1")
        assert (row.label_a, row.label_b, row.n_resamples, row.seed) == ("dinov2", "imagenet", 200, 3)
        o = row.options
        assert o["mode"] == "seeds" and o["fdr_family"] == "comparison"
        assert (o["evaluations_a"], o["evaluations_b"], o["seeds_a"], o["seeds_b"]) == (
            ids_a, ids_b, [0, 1, 2], [1, 2])
        assert o["over_seeds"]["a"]["Nodule"]["mean"] == pytest.approx(want.a[2].mean, abs=1e-12)
        assert o["over_seeds"]["b"][MACRO]["sd"] == pytest.approx(want.b_macro.sd, abs=1e-12)
        assert o["over_seeds"]["a"][MACRO]["bootstrap_sd"] == pytest.approx(want.a_macro.bootstrap_sd,
                                                                            abs=1e-12)
        assert o["over_seeds"]["a"]["Cardiomegaly"]["per_seed"] == pytest.approx(list(want.a[0].per_seed))
        assert o["per_seed"][1]["evaluation_a"] == ids_a[2] and "DeLong" in o["p_delong"]
        rows = {r.finding: r for r in row.results}
        assert set(rows) == {*data["findings"], MACRO}
        assert rows["Effusion"].auc_a == pytest.approx(want.findings[1].auc_a, abs=1e-12)
        assert rows["Effusion"].p_delong is None
        assert rows[MACRO].p_value == pytest.approx(want.macro.p_value, abs=1e-12)


def test_compare_over_seeds_refuses_different_test_images_and_stores_nothing(registry):
    data = add_seeded_evaluations(registry, inits=INITS, seeds=(0, 1), images={("imagenet", 1): 100})
    ids_a, ids_b = _ids(data, "dinov2", (0, 1)), _ids(data, "imagenet", (0, 1))
    with pytest.raises(RefusedError) as err:
        compare_over_seeds(registry, evaluations_a=ids_a, evaluations_b=ids_b, label_a="dinov2",
                           label_b="imagenet", n_resamples=50)
    assert str(err.value) == (
        f"evaluations {ids_a[0]} and {ids_b[1]} differ in 20 images (20 only in {ids_a[0]}, 0 only in "
        f"{ids_b[1]}, e.g. img0100, img0101, img0102, ...) - rerun predict on the same split, or pass "
        "`intersect`"
    )
    with pytest.raises(InputError, match=f"evaluation {ids_a[0]} is listed twice"):
        compare_over_seeds(registry, evaluations_a=ids_a, evaluations_b=[ids_a[0]], label_a="a", label_b="b")
    with registry.session() as s:
        assert s.scalar(select(func.count()).select_from(Comparison)) == 0


def test_compare_over_seeds_refuses_mixed_tuning_and_other_datasets(registry):
    data = add_seeded_evaluations(registry, inits=INITS, seeds=(0, 1), tune={"dinov2": "all", "imagenet": "head"})
    ids_a, ids_b = _ids(data, "dinov2", (0, 1)), _ids(data, "imagenet", (0, 1))
    with pytest.raises(RefusedError) as err:
        compare_over_seeds(registry, evaluations_a=ids_a, evaluations_b=ids_b, label_a="dinov2",
                           label_b="imagenet", n_resamples=50)
    assert str(err.value) == (
        "dinov2 (seed 0) is a full fine-tune (tune all) and imagenet (seed 0) a linear probe (tune head) - "
        "the difference would mix the initialisations with how they were trained; compare runs of one "
        "tuning mode, or pass `allow_mixed_tuning`"
    )
    out = compare_over_seeds(registry, evaluations_a=ids_a, evaluations_b=ids_b, label_a="dinov2",
                             label_b="imagenet", n_resamples=50, allow_mixed_tuning=True)
    assert (out["pairs"][0]["tune_a"], out["pairs"][0]["tune_b"]) == ("all", "head")
    other = add_seeded_evaluations(registry, inits={"random": 1.0}, seeds=(0,), name="other")
    with pytest.raises(InputError, match="are on different datasets - compare evaluations of one dataset"):
        compare_over_seeds(registry, evaluations_a=ids_a, evaluations_b=list(other["evaluations"].values()),
                           label_a="a", label_b="b")


def test_adjust_fdr_equals_statsmodels_over_the_stored_p_values(registry):
    first = add_seeded_evaluations(registry, inits={**INITS, "random": 0.1}, seeds=(0, 1), name="one")
    second = add_seeded_evaluations(registry, inits=INITS, seeds=(0, 1), name="two", seed=5)
    ids = []
    for data, b in ((first, "imagenet"), (first, "random"), (second, "imagenet")):
        out = compare_over_seeds(registry, evaluations_a=_ids(data, "dinov2", (0, 1)),
                                 evaluations_b=_ids(data, b, (0, 1)), label_a="dinov2", label_b=b,
                                 n_resamples=100)
        ids.append(out["pairs"][0]["comparison_id"])
    adjust_fdr(registry, ids, family="study", alpha=0.01)
    with registry.session() as s:
        rows = s.scalars(select(ComparisonResult).where(ComparisonResult.comparison_id.in_(ids))
                         .order_by(ComparisonResult.id)).all()
        findings = [r for r in rows if r.finding != MACRO]
        macros = [r for r in rows if r.finding == MACRO]
        assert len(findings) == 9 and len(macros) == 3
        np.testing.assert_allclose([r.p_adjusted for r in findings],
                                   multipletests([r.p_value for r in findings], method="fdr_bh")[1],
                                   rtol=0, atol=1e-15)
        np.testing.assert_allclose([r.p_adjusted for r in macros],
                                   multipletests([r.p_value for r in macros], method="fdr_bh")[1],
                                   rtol=0, atol=1e-15)
        for i in ids:
            o = s.get(Comparison, i).options
            assert o["fdr_family"] == "study" and o["fdr_comparisons"] == ids and o["alpha"] == 0.01
            assert o["fdr_n_tests"] == 9
    # a family per dataset: only that dataset's comparisons
    adjust_fdr(registry, ids[:2], family="study/one")
    with registry.session() as s:
        fam = [r for r in s.scalars(select(ComparisonResult).where(ComparisonResult.comparison_id.in_(ids[:2]))
                                    .order_by(ComparisonResult.id)) if r.finding != MACRO]
        np.testing.assert_allclose([r.p_adjusted for r in fam],
                                   multipletests([r.p_value for r in fam], method="fdr_bh")[1], atol=1e-15)
        assert s.get(Comparison, ids[2]).options["fdr_family"] == "study"


def _invoke(registry, *args):
    url = registry.engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(app, ["--db", url, *args], terminal_width=200)


def test_cli_compare_over_seeds_json_and_table(registry):
    data = add_seeded_evaluations(registry, inits=INITS, seeds=(0, 1, 2))
    args = ["compare", "--dataset", "toy", "--init", "dinov2", "--init", "imagenet", "--over-seeds",
            "--n-resamples", "100"]
    res = _invoke(registry, *args, "--per-seed", "--json")
    assert res.exit_code == 0, res.output
    pair = json.loads(res.stdout)
    assert pair["mode"] == "seeds" and (pair["n_seeds_a"], pair["n_seeds_b"]) == (3, 3)
    assert pair["evaluations_a"] == _ids(data, "dinov2", (0, 1, 2))
    assert [p["seed"] for p in pair["per_seed"]] == [0, 1, 2]
    direct = compare_over_seeds(registry, evaluations_a=pair["evaluations_a"],
                                evaluations_b=pair["evaluations_b"], label_a="dinov2", label_b="imagenet",
                                n_resamples=100)["pairs"][0]
    assert [f["p_value"] for f in pair["findings"]] == [f["p_value"] for f in direct["findings"]]
    assert pair["macro"]["auc_a"] == direct["macro"]["auc_a"]
    table = _invoke(registry, *args)
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    print("TABLE", table.stdout)
    m = pair["macro"]
    assert f"{m['auc_a']:.3f} ± {m['sd_a']:.3f}" in text
    assert "dinov2 (A, 3 seeds: 0, 1, 2, tune all) vs imagenet (B, 3 seeds: 0, 1, 2, tune all)" in text
    assert ("FDR family: the findings of this comparison (macro row on its own), Benjamini-Hochberg"
            in text)
    both = _invoke(registry, *args, "--all-seeds")
    assert both.exit_code == 1
    assert both.stderr.strip() == ("Error: --over-seeds pools the seeds and --all-seeds compares seed s "
                                   "with seed s - pick one (--per-seed adds the seed-by-seed p-values to "
                                   "--over-seeds)")
    alone = _invoke(registry, "compare", "--dataset", "toy", "--init", "dinov2", "--init", "imagenet",
                    "--per-seed")
    assert alone.exit_code == 1 and "--per-seed goes with --over-seeds" in alone.stderr


def test_compare_over_seeds_through_compare_with_three_inits_adjusts_over_all_pairs(registry):
    add_seeded_evaluations(registry, inits={**INITS, "random": 0.1}, seeds=(0, 1))
    out = compare(registry, dataset="toy", inits=["dinov2", "imagenet", "random"], over_seeds=True,
                  n_resamples=60)
    assert len(out["pairs"]) == 3 and out["fdr_family"] == "group"
    raw = [f["p_value"] for p in out["pairs"] for f in p["findings"]]
    np.testing.assert_allclose([f["p_adjusted"] for p in out["pairs"] for f in p["findings"]],
                               stats.fdr_bh(raw), atol=1e-15)
    with registry.session() as s:
        groups = s.scalars(select(Comparison.group_id)).all()
        assert len(groups) == 3 and len(set(groups)) == 1
