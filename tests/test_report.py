"""vitmed report: tables, figures and provenance rebuilt from a small registry."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from bs4 import BeautifulSoup
from PIL import Image as PILImage
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from vitmed_cli.cli import app
from vitmed_cli.errors import NotFound
from vitmed_cli.registry.models import (
    MACRO,
    Checkpoint,
    Comparison,
    ComparisonResult,
    Dataset,
    EpochMetric,
    Evaluation,
    EvaluationMetric,
    Finding,
    Image,
    Label,
    Prediction,
    Run,
    Split,
    SplitAssignment,
)
from vitmed_cli.report import build_report, create_report, render_html, write_report

N_RESAMPLES = 200
FINDINGS = ["Cardiomegaly", "Effusion & <fluid>"]
SHA_IMAGENET = "a1" * 32
SHA_DINO = "d7" * 32
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def _scores(rng, y, strength):
    """Scores that separate the classes by ``strength`` (0 = chance)."""
    return 1 / (1 + np.exp(-(strength * (y - 0.5) * 2 + rng.normal(0, 1, len(y)))))


def _add_eval(s, *, ds, split, findings, images, labels, scores, name, init, run=None,
              source="predict", created_at=T0, thresholds=True):
    ev = Evaluation(name=name, source=source, run_id=run.id if run else None, dataset_id=ds.id,
                    split_id=split.id if split else None, part="test", init_name=init,
                    n_images=len(images), created_at=created_at)
    s.add(ev)
    s.flush()
    aucs = []
    for j, f in enumerate(findings):
        y, p = labels[:, j], scores[:, j]
        keep = ~np.isnan(y)
        auc = roc_auc_score(y[keep], p[keep])
        aucs.append(auc)
        for img, yy, pp in zip(images, y, p):
            s.add(Prediction(evaluation_id=ev.id, image_id=img.id, finding_id=f.id,
                             probability=float(pp), label=None if np.isnan(yy) else int(yy)))
        m = EvaluationMetric(evaluation_id=ev.id, finding=f.canonical, auc=float(auc),
                             n_positive=int(np.nansum(y)), n_negative=int(keep.sum() - np.nansum(y)))
        if thresholds:
            pred = p[keep] >= 0.5
            yk = y[keep] == 1
            m.threshold = 0.5
            m.sensitivity = float(pred[yk].mean())
            m.specificity = float((~pred[~yk]).mean())
            m.accuracy = float((pred == yk).mean())
        s.add(m)
    ev.macro_auc = float(np.mean(aucs))
    s.flush()
    return ev


def _populate(registry) -> dict:
    """Two datasets: 'toyxr' with two runs, an older and a newer dinov2 evaluation, an import and
    a comparison; 'second' with one imported evaluation only."""
    rng = np.random.default_rng(7)
    ids: dict = {}
    with registry.session() as s:
        ds = Dataset(name="toyxr", format="csv", source_path="/data/toy", image_size=32)
        s.add(ds)
        s.flush()
        fnd = [Finding(dataset_id=ds.id, canonical=n, native=n.lower(), position=i)
               for i, n in enumerate(FINDINGS)]
        s.add_all(fnd)
        split = Split(dataset_id=ds.id, name="main-split", method="random", seed=42,
                      val_fraction=0.2, test_fraction=0.6)
        s.add(split)
        s.flush()
        n = 100
        images = [Image(dataset_id=ds.id, key=f"img{i:03d}", patient_id=f"p{i}", view="frontal",
                        source_path=f"/data/toy/{i}.png", cache_index=i, readable=True) for i in range(n)]
        s.add_all(images)
        s.flush()
        parts = ["train"] * 20 + ["val"] * 20 + ["test"] * 60
        s.add_all(SplitAssignment(split_id=split.id, image_id=im.id, part=pt) for im, pt in zip(images, parts))
        test = [im for im, pt in zip(images, parts) if pt == "test"]
        labels = (rng.random((len(test), 2)) < 0.4).astype(float)
        labels[:4, 1] = np.nan  # not labelled for the second finding: excluded there only
        for im, row in zip(test, labels):
            for f, v in zip(fnd, row):
                if not np.isnan(v):
                    s.add(Label(image_id=im.id, finding_id=f.id, value=int(v)))
        ck_in = Checkpoint(name="imagenet-21k", init="imagenet", arch="vit_tiny", sha256=SHA_IMAGENET,
                           source="file", role="init", path="/w/in21k.safetensors")
        ck_dn = Checkpoint(name="dinov2", init="dinov2", arch="vit_tiny", sha256=SHA_DINO,
                           source="file", role="init", path="/w/dinov2.safetensors")
        s.add_all([ck_in, ck_dn])
        s.flush()
        runs = {}
        for init, ck, curve in (("imagenet", ck_in, [0.55, 0.6, 0.62]), ("dinov2", ck_dn, [0.7, 0.8, 0.86])):
            run = Run(dataset_id=ds.id, split_id=split.id, init_checkpoint_id=ck.id, init_name=init,
                      init_sha256=ck.sha256, arch="vit_tiny", image_size=32, findings=FINDINGS, seed=1,
                      status="completed", epochs_planned=3, epochs_done=3, best_epoch=3,
                      best_val_macro_auc=curve[-1], code_version="0.1.0+g1234abc")
            s.add(run)
            s.flush()
            s.add_all(EpochMetric(run_id=run.id, epoch=e + 1, train_loss=1.0 - 0.1 * e,
                                  val_macro_auc=v) for e, v in enumerate(curve))
            runs[init] = run
        y0 = np.nan_to_num(labels)
        # dinov2 clearly better; finding 0 almost perfect, finding 1 moderate
        sc_dino = np.column_stack([_scores(rng, y0[:, 0], 3.0), _scores(rng, y0[:, 1], 0.8)])
        sc_in = np.column_stack([_scores(rng, y0[:, 0], 0.3), _scores(rng, y0[:, 1], 0.2)])
        old = _add_eval(s, ds=ds, split=split, findings=fnd, images=test, labels=labels,
                        scores=rng.random((len(test), 2)), name="dinov2-old", init="dinov2",
                        run=runs["dinov2"], created_at=T0 - dt.timedelta(days=2))
        ev_in = _add_eval(s, ds=ds, split=split, findings=fnd, images=test, labels=labels, scores=sc_in,
                          name="run1-test", init="imagenet", run=runs["imagenet"])
        ev_dn = _add_eval(s, ds=ds, split=split, findings=fnd, images=test, labels=labels, scores=sc_dino,
                          name="run2-test", init="dinov2", run=runs["dinov2"])
        ev_ext = _add_eval(s, ds=ds, split=split, findings=fnd, images=test, labels=labels,
                           scores=(sc_in + sc_dino) / 2, name="external-model", init="external-model",
                           source="import", thresholds=False)
        cmp = Comparison(dataset_id=ds.id, evaluation_a_id=ev_in.id, evaluation_b_id=ev_dn.id,
                         label_a="imagenet", label_b="dinov2", n_images=len(test), n_resamples=1000, seed=0)
        s.add(cmp)
        s.flush()
        p_rows = [(FINDINGS[0], 0.0004, 0.0002, 0.0008), (FINDINGS[1], 0.21, 0.25, 0.25),
                  (MACRO, 0.003, None, None)]
        for f, p, pd, pa in p_rows:
            # as compare stores them: diff = AUC A - AUC B
            s.add(ComparisonResult(comparison_id=cmp.id, finding=f, auc_a=0.55, auc_b=0.9, diff=-0.35,
                                   ci_low=-0.5, ci_high=-0.2, p_value=p, p_delong=pd, p_adjusted=pa))

        ds2 = Dataset(name="second", format="csv", source_path="/data/two", image_size=32)
        s.add(ds2)
        s.flush()
        f2 = Finding(dataset_id=ds2.id, canonical="Cardiomegaly", native="cm", position=0)
        s.add(f2)
        s.flush()
        im2 = [Image(dataset_id=ds2.id, key=f"b{i}", source_path=f"/b/{i}", view="unknown") for i in range(30)]
        s.add_all(im2)
        s.flush()
        y2 = (np.arange(30) % 3 == 0).astype(float)[:, None]
        _add_eval(s, ds=ds2, split=None, findings=[f2], images=im2, labels=y2,
                  scores=_scores(rng, y2[:, 0], 1.5)[:, None], name="imported-b", init="imported-b",
                  source="import", thresholds=False)
        ids.update(old=old.id, imagenet=ev_in.id, dinov2=ev_dn.id, external=ev_ext.id,
                   run_in=runs["imagenet"].id, run_dn=runs["dinov2"].id, cmp=cmp.id,
                   labels=labels, sc_dino=sc_dino, sc_in=sc_in)
    return ids


@pytest.fixture
def filled(make_registry, sqlite_url):
    reg = make_registry(sqlite_url)
    info = _populate(reg)
    info["url"] = sqlite_url
    return reg, info


def _independent_macro_bootstrap(y, s, n, seed=123):
    """Resampled macro-average AUC, written here without vitmed.stats."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        aucs = []
        for j in range(y.shape[1]):
            yy, ss = y[idx, j], s[idx, j]
            keep = ~np.isnan(yy)
            if len(np.unique(yy[keep])) == 2:
                aucs.append(roc_auc_score(yy[keep], ss[keep]))
        out.append(np.mean(aucs))
    return np.array(out)


def test_build_report_picks_latest_test_evaluation_and_bootstraps_macro_auc(filled):
    reg, info = filled
    rep = build_report(reg, n_resamples=N_RESAMPLES, seed=0, figures=False)
    assert [d.name for d in rep.datasets] == ["second", "toyxr"]
    toy = rep.datasets[1]
    rows = {r.init_name: r for r in toy.inits}
    assert list(rows) == ["imagenet", "dinov2", "external-model"]
    assert rows["dinov2"].evaluation_id == info["dinov2"]  # the newer one, not dinov2-old
    assert info["old"] not in [r.evaluation_id for r in toy.inits]

    y, sd_ = info["labels"], info["sc_dino"]
    expected_point = np.mean([roc_auc_score(y[~np.isnan(y[:, j]), j], sd_[~np.isnan(y[:, j]), j])
                              for j in range(2)])
    dino = rows["dinov2"]
    assert dino.auc == pytest.approx(expected_point, abs=1e-9)
    assert dino.ci_low < dino.auc_mean < dino.ci_high
    assert dino.auc_mean == pytest.approx(expected_point, abs=0.03)
    # SD of the resampled macro average, not of the two findings' AUCs pooled
    ref = _independent_macro_bootstrap(y, sd_, N_RESAMPLES)
    assert 0.6 * ref.std(ddof=1) < dino.auc_sd < 1.6 * ref.std(ddof=1)
    f_aucs = [r.auc for r in toy.per_finding if r.init_name == "dinov2"]
    assert abs(f_aucs[0] - f_aucs[1]) / 2 > 2 * dino.auc_sd
    assert rows["dinov2"].auc > rows["imagenet"].auc + 0.2

    with reg.session() as s:
        ms = s.query(EvaluationMetric).filter_by(evaluation_id=info["dinov2"]).all()
        assert dino.sensitivity == pytest.approx(np.mean([m.sensitivity for m in ms]))
        assert dino.accuracy == pytest.approx(np.mean([m.accuracy for m in ms]))
    assert rows["external-model"].sensitivity is None and rows["external-model"].run_id is None
    assert dino.init_sha256 == SHA_DINO and dino.split == "main-split" and dino.split_seed == 42
    assert dino.code_version == "0.1.0+g1234abc"
    assert [c.id for c in toy.comparisons] == [info["cmp"]]
    sig = {r.finding: r.significant for r in toy.comparisons[0].rows}
    assert sig == {FINDINGS[0]: True, FINDINGS[1]: False, MACRO: True}


def _data_png(src: str) -> PILImage.Image:
    assert src.startswith("data:image/png;base64,")
    raw = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    img = PILImage.open(io.BytesIO(raw))
    img.load()
    return img


def _cells(table):
    return [[td.get_text(strip=True) for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]


def test_html_report_has_tables_figures_and_provenance(filled, tmp_path):
    reg, info = filled
    out = write_report(reg, tmp_path / "r.html", fmt="html", n_resamples=N_RESAMPLES)
    text = out.read_text(encoding="utf-8")
    soup = BeautifulSoup(text, "html.parser")
    rep = build_report(reg, n_resamples=N_RESAMPLES, figures=False)
    toy = next(d for d in rep.datasets if d.name == "toyxr")

    auc = soup.select_one('table.auc-table[data-dataset="toyxr"]')
    rows = {r[0]: r for r in _cells(auc)}
    assert set(rows) == {"imagenet", "dinov2", "external-model"}
    dino = next(r for r in toy.inits if r.init_name == "dinov2")
    assert rows["dinov2"][1] == str(info["dinov2"])
    assert rows["dinov2"][2] == str(info["run_dn"])
    assert rows["dinov2"][5] == f"{dino.auc_mean:.3f} ± {dino.auc_sd:.3f}"
    assert rows["dinov2"][6] == f"[{dino.ci_low:.3f}, {dino.ci_high:.3f}]"
    assert rows["dinov2"][7] == f"{dino.sensitivity:.3f}"
    assert rows["external-model"][7:] == ["-", "-", "-", "-", "-"]  # no threshold, tuning, size
    assert rows["dinov2"][10] == "all" and rows["dinov2"][11] == str(dino.image_size)

    per = _cells(soup.select_one('table.finding-table[data-dataset="toyxr"]'))
    with reg.session() as s:
        m = s.query(EvaluationMetric).filter_by(evaluation_id=info["imagenet"], finding=FINDINGS[1]).one()
        row = next(r for r in per if r[0] == FINDINGS[1] and r[1] == "imagenet")
        assert row[2] == f"{m.auc:.3f}" and row[6] == f"{m.sensitivity:.3f}"
        assert row[9] == str(m.n_positive)

    pv = soup.select_one(f'table.pvalue-table[data-comparison="{info["cmp"]}"]')
    sig_rows = {tr.find("td").get_text(strip=True): [td.get_text(strip=True) for td in tr.select("td.significant")]
                for tr in pv.find("tbody").find_all("tr")}
    assert sig_rows[FINDINGS[0]] == ["<0.001", "<0.001", "<0.001"]
    assert sig_rows[FINDINGS[1]] == []
    assert sig_rows["macro average"] == ["0.003"]
    assert pv.select_one("td.significant strong") is not None

    # figures: a ROC per finding, validation curves, bars; all decodable PNG data
    figs = soup.select("figure.figure")
    kinds = [(f["data-kind"], f.get("data-dataset"), f.get("data-finding")) for f in figs]
    assert ("roc", "toyxr", FINDINGS[0]) in kinds and ("roc", "toyxr", FINDINGS[1]) in kinds
    assert ("epochs", "toyxr", None) in kinds and ("bars", None, None) in kinds
    for f in figs:
        img = _data_png(f.find("img")["src"])
        assert img.size[0] > 100 and img.size[1] > 100

    # provenance once per dataset; the other tables refer to it
    prov = soup.select('aside.provenance[data-dataset="toyxr"]')
    assert len(prov) == 1 and prov[0]["data-for"] == "dataset"
    refs = soup.select('section[data-dataset="toyxr"] p.provref a')
    assert len(refs) == 2 and {a["href"] for a in refs} == {"#" + prov[0]["id"]}
    assert len(soup.select("aside.provenance")) == 2  # one per dataset section
    first = prov[0]
    assert first.find("code", class_="sha256", title=SHA_DINO).get_text() == SHA_DINO[:12]
    ptext = first.get_text(" ")
    assert f"run {info['run_dn']}" in ptext and f"run {info['run_in']}" in ptext
    assert "split main-split (seed 42)" in ptext and "0.1.0+g1234abc" in ptext
    assert "toyxr: 100 images" in ptext

    # escaped names, self-contained page
    assert "<fluid>" not in text and "Effusion &amp; &lt;fluid&gt;" in text
    assert not soup.find_all("script") and not soup.find_all("link")
    for tag in soup.find_all(src=True):
        assert tag["src"].startswith("data:")
    for tag in soup.find_all(href=True):
        assert tag["href"].startswith("#")
    assert "http://" not in text and "https://" not in text
    assert "@import" not in text and "url(" not in text


def test_markdown_report_writes_tables_and_png_files(filled, tmp_path):
    reg, info = filled
    res = create_report(reg, tmp_path / "study.md", datasets=["toyxr"], n_resamples=N_RESAMPLES)
    assert res.format == "md" and res.datasets == ["toyxr"]
    md = res.path.read_text(encoding="utf-8")
    assert "| initialisation | evaluation | run |" in md
    assert "| finding | initialisation | AUC |" in md
    assert "| finding | AUC A | AUC B |" in md
    assert "**\\<0.001**" in md and SHA_DINO in md and "main-split" in md
    assert "Effusion & \\<fluid\\>" in md and "<fluid>" not in md
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) == res.n_figures == 4  # two ROC, epochs, bars
    for link in links:
        assert link.startswith("study_files/")
        path = tmp_path / link
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "study_files").iterdir()) == sorted(
        Path(link).name for link in links)
    assert "second" not in md


def test_cli_report_json_and_default_path(filled, tmp_path):
    reg, info = filled
    out = tmp_path / "cli.html"
    r = CliRunner().invoke(app, ["--db", info["url"], "--json", "report", "--out", str(out),
                                 "--resamples", "50"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["path"] == str(out) and doc["datasets"] == ["second", "toyxr"]
    assert doc["n_tables"] == 2 * 2 + 1 and doc["n_figures"] >= 5
    assert out.is_file()

    r = CliRunner().invoke(app, ["--db", info["url"], "report", "-d", "second", "--resamples", "20"])
    assert r.exit_code == 0, r.output
    default = Path(os.environ["VITMED_HOME"]) / "reports" / "report.html"
    assert default.is_file() and str(default) in r.stdout.replace("\n", "")


def test_cli_nothing_to_report(make_registry, sqlite_url, tmp_path):
    make_registry(sqlite_url)
    out = tmp_path / "empty.html"
    r = CliRunner().invoke(app, ["--db", sqlite_url, "report", "--out", str(out)])
    assert r.exit_code == 1
    url = sqlite_url
    assert r.stderr == (
        f"Error: nothing to report: no evaluations on the test part in the registry at {url} - "
        "run vitmed predict or vitmed evals import first\n"
    )
    assert "Traceback" not in r.output and not out.exists()


def test_cli_unknown_dataset_lists_known(filled, tmp_path):
    reg, info = filled
    out = tmp_path / "x.md"
    r = CliRunner().invoke(app, ["--db", info["url"], "report", "--dataset", "vindr", "--out", str(out)])
    assert r.exit_code == 1
    assert r.stderr == "Error: unknown dataset 'vindr' (known: second, toyxr)\n"
    assert not out.exists() and not (tmp_path / "x_files").exists()


def test_dataset_without_test_evaluations_is_nothing_to_report(registry):
    with registry.session() as s:
        s.add(Dataset(name="bare", format="csv", source_path="/x", image_size=32))
    with pytest.raises(NotFound, match=r"nothing to report: no evaluations on the test part for "
                                       r"dataset\(s\) bare in the registry"):
        build_report(registry, datasets=["bare"], n_resamples=10)


def test_cli_creates_a_missing_output_folder(filled, tmp_path):
    reg, info = filled
    out = tmp_path / "no" / "such" / "r.html"
    r = CliRunner().invoke(app, ["--db", info["url"], "report", "--out", str(out), "--resamples", "20"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and out.read_text().startswith("<!DOCTYPE html>")
    labels = tmp_path / "also" / "new" / "labels.csv"  # every command that writes a named file does so
    r = CliRunner().invoke(app, ["--db", info["url"], "datasets", "export", "toyxr", "--out", str(labels)])
    assert r.exit_code == 0, r.output
    assert labels.read_text().startswith("key,patient_id,view,")


def test_cli_refuses_a_format_its_file_name_contradicts(filled, tmp_path):
    reg, info = filled
    out = tmp_path / "r.html"
    r = CliRunner().invoke(app, ["--db", info["url"], "report", "--format", "md", "--out", str(out)])
    assert r.exit_code == 1 and not out.exists()
    assert r.stderr.strip() == (f"Error: --out {out} ends in .html but --format is md - name the file "
                                f"{tmp_path / 'r.md'} or leave out --format")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


def test_html_renders_in_headless_chromium(filled, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI - .ci/run installs it (apt-get install chromium)")
        pytest.skip("headless Chromium is not installed (apt-get install chromium); CI runs this test")
    reg, info = filled
    page = write_report(reg, tmp_path / "page.html", n_resamples=50)
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, check=True).stdout
    soup = BeautifulSoup(dom, "html.parser")
    assert soup.select_one('table.auc-table[data-dataset="toyxr"] tbody tr') is not None
    assert soup.select_one("table.pvalue-table td.significant") is not None
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                   capture_output=True, text=True, check=True)
    img = np.asarray(PILImage.open(shot).convert("L"))
    assert img.shape == (2000, 1200)
    assert img.std() > 10  # tables and figures drawn, not a blank page


def test_finding_without_positives_leaves_macro_over_scoreable_findings(registry):
    rng = np.random.default_rng(3)
    with registry.session() as s:
        ds = Dataset(name="onesided", format="csv", source_path="/x", image_size=32)
        s.add(ds)
        s.flush()
        fnd = [Finding(dataset_id=ds.id, canonical=n, native=n, position=i)
               for i, n in enumerate(["Mass", "Hernia"])]
        s.add_all(fnd)
        imgs = [Image(dataset_id=ds.id, key=f"k{i}", source_path=f"/x/{i}") for i in range(40)]
        s.add_all(imgs)
        s.flush()
        y = np.column_stack([(np.arange(40) % 2).astype(float), np.zeros(40)])  # no Hernia positives
        sc = np.column_stack([_scores(rng, y[:, 0], 1.0), rng.random(40)])
        ev = Evaluation(name="imp", source="import", dataset_id=ds.id, part="test", init_name="imp",
                        n_images=40, macro_auc=float(roc_auc_score(y[:, 0], sc[:, 0])))
        s.add(ev)
        s.flush()
        for j, f in enumerate(fnd):
            s.add_all(Prediction(evaluation_id=ev.id, image_id=im.id, finding_id=f.id,
                                 probability=float(sc[i, j]), label=int(y[i, j])) for i, im in enumerate(imgs))
    rep = build_report(registry, n_resamples=N_RESAMPLES, figures=True)
    row = rep.datasets[0].inits[0]
    assert row.auc == pytest.approx(roc_auc_score(y[:, 0], sc[:, 0]))
    assert row.auc_mean is not None and row.ci_low < row.auc_mean < row.ci_high
    assert [f.finding for f in rep.datasets[0].figures if f.kind == "roc"] == ["Mass"]


def test_build_report_on_each_backend(any_registry):
    info = _populate(any_registry)
    rep = build_report(any_registry, datasets=["toyxr"], n_resamples=50, figures=False)
    (toy,) = rep.datasets
    assert {r.init_name: r.evaluation_id for r in toy.inits} == {
        "imagenet": info["imagenet"], "dinov2": info["dinov2"], "external-model": info["external"]}
    assert [r.id for r in toy.runs] == [info["run_in"], info["run_dn"]]
    assert toy.runs[1].val_macro_auc == [0.7, 0.8, 0.86]


def test_pvalue_header_matches_sign_of_stored_difference(filled, tmp_path):
    reg, info = filled
    soup = BeautifulSoup(write_report(reg, tmp_path / "r.html", n_resamples=20).read_text("utf-8"),
                         "html.parser")
    pv = soup.select_one(f'table.pvalue-table[data-comparison="{info["cmp"]}"]')
    head = [th.get_text(strip=True) for th in pv.find("thead").find_all("th")]
    assert head[3] == "difference A − B" and "B − A" not in soup.get_text()
    with reg.session() as s:
        stored = {r.finding: r for r in s.get(Comparison, info["cmp"]).results}
    for row in _cells(pv):
        r = stored[MACRO if row[0] == "macro average" else row[0]]
        assert float(row[3]) == pytest.approx(r.auc_a - r.auc_b, abs=1e-3)
        assert float(row[3]) == pytest.approx(float(row[1]) - float(row[2]), abs=2e-3)
        assert row[4] == f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_follow_the_umask(filled, tmp_path, mask):
    reg, info = filled
    old = os.umask(mask)
    try:
        html_out = write_report(reg, tmp_path / "r.html", n_resamples=10)
        md = create_report(reg, tmp_path / "r.md", datasets=["toyxr"], n_resamples=10)
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    for path in [html_out, md.path, *md.figure_files]:
        assert (path.stat().st_mode & 0o777) == want, path
    assert md.figure_files


def _add_comparison(s, ds_id, a, b, group, when, diff):
    cmp = Comparison(dataset_id=ds_id, evaluation_a_id=a, evaluation_b_id=b, label_a=f"eval {a}",
                     label_b=f"eval {b}", n_images=60, n_resamples=100, seed=0, group_id=group,
                     created_at=when)
    s.add(cmp)
    s.flush()
    s.add(ComparisonResult(comparison_id=cmp.id, finding=MACRO, auc_a=0.6, auc_b=0.6 - diff, diff=diff,
                           ci_low=diff - 0.1, ci_high=diff + 0.1, p_value=0.5))
    return cmp.id


def test_repeated_comparisons_show_only_the_latest_per_set_of_evaluations(filled, tmp_path):
    reg, info = filled
    a, b, x = info["imagenet"], info["dinov2"], info["external"]
    t1 = dt.datetime.now(dt.timezone.utc)  # after the fixture's comparison
    with reg.session() as s:
        ds_id = s.query(Dataset).filter_by(name="toyxr").one().id
        later = [_add_comparison(s, ds_id, a, b, f"g{k}", t1 + dt.timedelta(hours=k), -0.1 * k)
                 for k in (1, 2, 3)]
        # one call with three models: its (a, b) pair is a different set of compared evaluations
        trio = [_add_comparison(s, ds_id, p, q, "trio", t1 + dt.timedelta(hours=4), -0.01)
                for p, q in ((a, b), (a, x), (b, x))]
        swapped = _add_comparison(s, ds_id, b, a, "g9", t1 + dt.timedelta(hours=5), 0.3)
    rep = build_report(reg, datasets=["toyxr"], n_resamples=10, figures=False)
    (toy,) = rep.datasets
    shown = {c.id: c for c in toy.comparisons}
    assert set(shown) == {later[-1], *trio, swapped}
    assert shown[later[-1]].n_stored == 4  # the fixture's comparison and three repeats
    assert shown[later[-1]].rows[0].diff == pytest.approx(-0.3)
    assert all(shown[i].n_stored == 1 for i in (*trio, swapped))
    assert rep.n_tables == 2 + 5

    soup = BeautifulSoup(render_html(rep), "html.parser")
    tables = soup.select("table.pvalue-table")
    assert [int(t["data-comparison"]) for t in tables] == sorted(shown)
    note = soup.select_one(f'p.provref[data-comparison="{later[-1]}"]').get_text(" ")
    assert "latest of 4 stored comparisons" in note
    cap = soup.select_one(f'table[data-comparison="{later[-1]}"] caption').get_text()
    assert cap == (f"comparison {later[-1]}: A = imagenet (evaluation {a}), "
                   f"B = dinov2 (evaluation {b})")


def test_provenance_traces_init_run_and_architecture(filled, tmp_path):
    reg, info = filled
    sha_src = "5e" * 32
    with reg.session() as s:
        assert s.query(Dataset).filter_by(name="toyxr").one()
        src = s.get(Run, info["run_in"])
        src.config = {"train": {"model_kwargs": {"patch_size": 8, "embed_dim": 96, "depth": 4,
                                                 "num_heads": 3}}}
        ck = Checkpoint(name="toy-supervised", init="run:1", arch="vit_tiny", sha256=sha_src, source="run",
                        role="best", run_id=src.id, path="/w/best.safetensors")
        s.add(ck)
        s.flush()
        dn = s.get(Run, info["run_dn"])
        dn.init_checkpoint_id, dn.init_sha256 = ck.id, sha_src
    rep = build_report(reg, datasets=["toyxr"], n_resamples=10, figures=False)
    runs = {r.id: r for r in rep.datasets[0].runs}
    assert runs[info["run_dn"]].init_run_id == info["run_in"]
    assert runs[info["run_in"]].init_run_id is None
    assert runs[info["run_in"]].arch_label == "vit_tiny (patch_size=8, depth=4, embed_dim=96, num_heads=3)"
    soup = BeautifulSoup(render_html(rep), "html.parser")
    prov = " ".join(soup.select_one("aside.provenance").get_text(" ").split())
    assert f"{sha_src[:12]} from run {info['run_in']} (dataset toyxr, split main-split)" in prov
    assert "run {} (vit_tiny (patch_size=8, depth=4, embed_dim=96, num_heads=3)".format(info["run_in"]) in prov

    runs_t = soup.select_one("table.runs-table")
    code = runs_t.select("code.sha256")
    assert [c.get_text() for c in code] == [SHA_IMAGENET[:12], sha_src[:12]]
    assert [c["title"] for c in code] == [SHA_IMAGENET, sha_src]
    assert SHA_IMAGENET not in runs_t.get_text()
    assert "break-all" in soup.find("style").get_text()
    row = _cells(runs_t)[1]
    assert row[3] == f"{sha_src[:12]}from run {info['run_in']} (dataset toyxr, split main-split)"
    assert "–" not in soup.select_one("table.auc-table").get_text()


def test_bar_chart_starts_at_chance_and_says_so(filled, tmp_path):
    reg, info = filled
    rep = build_report(reg, n_resamples=20)
    bars = next(f for f in rep.figures if f.kind == "bars")
    lows = [r.ci_low if r.ci_low is not None else r.auc for d in rep.datasets for r in d.inits]
    start = "0.5 (chance)" if min(lows) >= 0.5 else "0"
    assert bars.title.endswith(f"the y axis starts at {start}")
