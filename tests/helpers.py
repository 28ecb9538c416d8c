"""Builders shared by the test modules (no test module imports another).

* :func:`build_dataset` writes a small learnable dataset straight into the registry
  and an ingest-style cache: finding k is a bright blob in band k of the image, so a
  tiny ViT can learn it in seconds (training, prediction, DDP tests);
* :func:`add_dataset` writes patients with 1-4 images and patient-level findings
  through the ORM (split tests);
* :func:`populate_registry` writes one of everything (registry and CLI tests);
* :func:`add_seeded_evaluations` writes a test part and, per initialisation and seed, a
  completed run with an evaluation of synthetic scores (multi-seed comparisons).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from vitmed_cli.registry.owner import current_owner
from vitmed_cli.registry.models import (
    Checkpoint,
    Comparison,
    ComparisonResult,
    Dataset,
    EpochMetric,
    Evaluation,
    Finding,
    Image,
    Label,
    Prediction,
    Run,
    Split,
    SplitAssignment,
)

TOY_FINDINGS = ("Effusion", "Nodule")


def write_csv_dataset(folder: Path) -> Path:
    """A csv-format download: six 40 x 30 PNGs (005 broken, 005 lateral), three patients, two
    findings and a free-text column; returns the CSV's path."""
    import pandas as pd
    from PIL import Image as PILImage

    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(6):
        name = f"img/{i:03d}.png"
        PILImage.fromarray(np.full((40, 30), 20 * i, dtype=np.uint8)).save(folder / name)
        rows.append({"path": name, "patient_id": f"P{i // 2}", "view": "PA" if i != 5 else "LATERAL",
                     "sex": "F", "age": 50 + i, "Cardiomegaly": i % 2,
                     "Effusion": "" if i == 0 else (-1 if i == 3 else 0), "comment": "free text"})
    (folder / "img" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder / "labels.csv"


def build_dataset(
    registry,
    folder: Path,
    *,
    name: str = "toy",
    n: int = 240,
    size: int = 32,
    findings: tuple[str, ...] = TOY_FINDINGS,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    split: str = "default",
    n_lateral: int = 6,
    all_unknown: bool = False,
    n_unreadable: int = 4,
    uncertain_rate: float = 0.05,
    missing_rate: float = 0.05,
    no_positive: str | None = None,
) -> dict:
    """A dataset whose finding k is a bright blob in horizontal band k; returns what was written."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cache_path = folder / f"{name}-{size}.npy"
    k = len(findings)
    y = (rng.random((n, k)) < 0.4).astype(np.int64)
    if no_positive is not None:
        y[: int(n * fractions[0]), findings.index(no_positive)] = 0
    imgs = (rng.normal(70, 12, (n, size, size))).clip(0, 255)
    band = size // k
    for j in range(k):
        for i in np.flatnonzero(y[:, j]):
            cy = j * band + band // 2 + rng.integers(-2, 3)
            cx = size // 2 + rng.integers(-size // 4, size // 4 + 1)
            r = max(2, size // 10)
            yy, xx = np.ogrid[:size, :size]
            imgs[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 230
    mm = open_memmap(cache_path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    mm[:] = imgs.astype(np.uint8)
    mm.flush()
    del mm
    label = y.copy()
    status = rng.random((n, k))
    label[status < uncertain_rate] = -1
    mentioned = status >= uncertain_rate + missing_rate
    mentioned |= status < uncertain_rate
    parts = np.array(["train"] * n, dtype=object)
    n_tr, n_va = int(n * fractions[0]), int(n * fractions[1])
    parts[n_tr : n_tr + n_va] = "val"
    parts[n_tr + n_va :] = "test"
    views = np.array(["frontal"] * n, dtype=object)
    views[rng.choice(n, n_lateral, replace=False)] = "lateral"
    views[::7] = np.where(views[::7] == "lateral", "lateral", "unknown")
    if all_unknown:  # a dataset without any view information (e.g. a CSV without a view column)
        views[:] = "unknown"
    unreadable = set(rng.choice(n, n_unreadable, replace=False).tolist())
    with registry.session() as s:
        ds = Dataset(name=name, format="synthetic", source_path=str(folder), image_size=size,
                     cache_path=str(cache_path), has_patient_ids=True)
        s.add(ds)
        s.flush()
        f_rows = [Finding(dataset_id=ds.id, canonical=f, native=f.lower(), position=i)
                  for i, f in enumerate(findings)]
        s.add_all(f_rows)
        sp = Split(dataset_id=ds.id, name=split, method="random", seed=seed)
        s.add(sp)
        s.flush()
        images = []
        for i in range(n):
            bad = i in unreadable
            images.append(Image(
                dataset_id=ds.id, key=f"img{i:05d}", patient_id=f"p{i:05d}", view=views[i],
                source_path=f"{folder}/img{i:05d}.png", cache_index=None if bad else i,
                readable=not bad, error="cannot decode" if bad else None,
            ))
        s.add_all(images)
        s.flush()
        s.add_all([Label(image_id=images[i].id, finding_id=f_rows[j].id, value=int(label[i, j]))
                   for i in range(n) for j in range(k) if mentioned[i, j]])
        s.add_all([SplitAssignment(split_id=sp.id, image_id=images[i].id, part=str(parts[i]))
                   for i in range(n)])
        image_ids = np.array([im.id for im in images])
    # a dataset with known views trains on frontal images only; without any, on all of them
    usable = np.array([(all_unknown or views[i] == "frontal") and (i not in unreadable)
                       for i in range(n)])
    full = np.where(mentioned, label, np.nan).astype(np.float32)
    return {"name": name, "split": split, "cache_path": str(cache_path), "y": y, "labels": full,
            "parts": parts, "usable": usable, "image_ids": image_ids, "findings": list(findings),
            "size": size}


SPLIT_FINDINGS = ("Cardiomegaly", "Pleural Effusion", "Nodule", "Rare Thing")
SPLIT_PREVALENCE = (0.3, 0.25, 0.15, 0.04)


def add_dataset(registry, name="toy", *, n_patients=120, seed=0, has_patient_ids=True,
                official=None, findings=SPLIT_FINDINGS, prevalence=SPLIT_PREVALENCE):
    """A dataset straight through the ORM: 1-4 images per patient, patient-level findings.

    ``official`` maps a patient index to its official part (or a callable doing so).
    """
    rng = np.random.default_rng(seed)
    with registry.session() as s:
        ds = Dataset(name=name, format="csv", source_path="/nowhere", image_size=64,
                     has_patient_ids=has_patient_ids)
        s.add(ds)
        s.flush()
        fnd = [Finding(dataset_id=ds.id, canonical=f, native=f.lower(), position=i)
               for i, f in enumerate(findings)]
        s.add_all(fnd)
        s.flush()
        images, flags = [], []
        for p in range(n_patients):
            has = rng.random(len(findings)) < np.array(prevalence)
            part = official(p) if callable(official) else None
            for k in range(int(rng.integers(1, 5))):
                images.append(Image(dataset_id=ds.id, key=f"p{p:04d}/img{k}.png",
                                    patient_id=f"P{p:04d}" if has_patient_ids else None,
                                    view="lateral" if k == 3 else "frontal", source_path="x",
                                    official_part=part, readable=k != 2 or p % 7 != 0))
                flags.append(has)
        s.add_all(images)
        s.flush()
        s.add_all([
            Label(image_id=img.id, finding_id=f.id, value=int(h if rng.random() < 0.9 else not h))
            for img, has in zip(images, flags) for f, h in zip(fnd, has)
        ])
    return name


def populate_registry(reg) -> dict[str, int]:
    """One dataset with two images, a split, a run, an evaluation and a comparison."""
    with reg.session() as s:
        ds = Dataset(name="toy", format="csv", source_path="/data/toy", image_size=32)
        s.add(ds)
        s.flush()
        f1 = Finding(dataset_id=ds.id, canonical="Cardiomegaly", native="cardiomegaly", position=0)
        f2 = Finding(dataset_id=ds.id, canonical="Pleural Effusion", native="Effusion", position=1)
        imgs = [
            Image(dataset_id=ds.id, key=f"img{i}", patient_id=f"p{i}", view="frontal",
                  source_path=f"/data/toy/img{i}.png", readable=True, cache_index=i)
            for i in range(2)
        ]
        s.add_all([f1, f2, *imgs])
        s.flush()
        s.add_all([
            Label(image_id=imgs[0].id, finding_id=f1.id, value=1),
            Label(image_id=imgs[1].id, finding_id=f1.id, value=0),
            Label(image_id=imgs[1].id, finding_id=f2.id, value=-1),
        ])
        sp = Split(dataset_id=ds.id, name="s0", method="patient", seed=0)
        s.add(sp)
        s.flush()
        s.add_all([
            SplitAssignment(split_id=sp.id, image_id=imgs[0].id, part="train"),
            SplitAssignment(split_id=sp.id, image_id=imgs[1].id, part="test"),
        ])
        init = Checkpoint(name="dino", init="dinov2", arch="vit_small_patch14_dinov2",
                          sha256="a" * 64, source="file", path="/w/dino.pth")
        s.add(init)
        s.flush()
        me = current_owner()  # a running run has a live owner: this test process
        run = Run(dataset_id=ds.id, split_id=sp.id, init_checkpoint_id=init.id, init_name="dinov2",
                  init_sha256=init.sha256, arch=init.arch, image_size=32, seed=0, epochs_planned=2,
                  config={"lr": 1e-5}, findings=["Cardiomegaly", "Pleural Effusion"],
                  owner_host=me.host, owner_pid=me.pid, owner_token=me.token)
        s.add(run)
        s.flush()
        s.add(EpochMetric(run_id=run.id, epoch=1, train_loss=0.5, val_macro_auc=0.7,
                          val_auc={"Cardiomegaly": 0.7}))
        best = Checkpoint(name="run-best", init="run", arch=init.arch, sha256="b" * 64,
                          source="run", role="best", run_id=run.id, epoch=1)
        s.add(best)
        ev_a = Evaluation(name="a", source="predict", run_id=run.id, dataset_id=ds.id,
                          split_id=sp.id, part="test", init_name="dinov2", n_images=1)
        ev_b = Evaluation(name="b", source="import", dataset_id=ds.id, split_id=sp.id,
                          part="test", init_name="other", n_images=1)
        s.add_all([ev_a, ev_b])
        s.flush()
        s.add_all([
            Prediction(evaluation_id=ev_a.id, image_id=imgs[1].id, finding_id=f1.id,
                       probability=0.25, label=0),
            Prediction(evaluation_id=ev_b.id, image_id=imgs[1].id, finding_id=f1.id,
                       probability=0.75, label=0),
        ])
        cmp = Comparison(dataset_id=ds.id, evaluation_a_id=ev_a.id, evaluation_b_id=ev_b.id,
                         label_a="dinov2", label_b="other", n_images=1, n_resamples=10, seed=0)
        s.add(cmp)
        s.flush()
        s.add(ComparisonResult(comparison_id=cmp.id, finding="__macro__", diff=0.1, p_value=0.5))
        return {"dataset": ds.id, "run": run.id, "eval_a": ev_a.id, "eval_b": ev_b.id,
                "comparison": cmp.id, "init": init.id}


SEED_FINDINGS = ("Cardiomegaly", "Effusion", "Nodule")


def add_seeded_evaluations(registry, *, inits: dict[str, float], seeds=(0, 1, 2), name: str = "toy",
                           n: int = 120, findings: tuple[str, ...] = SEED_FINDINGS, seed: int = 0,
                           tune: str | dict[str, str] = "all", images: dict[tuple[str, int], int] | None = None) -> dict:
    """A dataset whose test part is ``n`` images, and for each init (name -> signal strength) and
    seed a completed run (trained as ``tune``, one for all or per init) with an evaluation: scores = strength * label + noise shared by the init
    + seed noise, rounded to 0.01 (ties).  ``images`` maps (init, seed) to how many of the test
    images that evaluation scores (the first ones).  Returns the labels (NaN = not labelled),
    scores and evaluation ids by (init, seed)."""
    from vitmed_cli.evaluations.store import store_evaluation

    rng = np.random.default_rng(seed)
    k = len(findings)
    y = (rng.random((n, k)) < np.linspace(0.2, 0.45, k)).astype(float)
    y[rng.random((n, k)) < 0.08] = np.nan  # not labelled: left out of that finding
    out = {"y": y, "scores": {}, "evaluations": {}, "findings": list(findings)}
    with registry.session() as s:
        ds = Dataset(name=name, format="csv", source_path="/nowhere", image_size=32)
        ds.findings = [Finding(canonical=f, native=f.lower(), position=i) for i, f in enumerate(findings)]
        s.add(ds)
        s.flush()
        sp = Split(dataset_id=ds.id, name="default", method="random", seed=0)
        imgs = [Image(dataset_id=ds.id, key=f"img{i:04d}", patient_id=f"p{i}", view="frontal",
                      source_path=f"/nowhere/{i}.png") for i in range(n)]
        s.add_all([sp, *imgs])
        s.flush()
        s.add_all([SplitAssignment(split_id=sp.id, image_id=im.id, part="test") for im in imgs])
        image_ids = np.array([im.id for im in imgs])
        finding_ids = [f.id for f in ds.findings]
        for init, strength in inits.items():
            shared = rng.normal(size=(n, k))
            for sd in seeds:
                p = 1 / (1 + np.exp(-(strength * np.nan_to_num(y) + shared + 0.6 * rng.normal(size=(n, k)))))
                p = np.round(p, 2)
                m = (images or {}).get((init, sd), n)
                run = Run(dataset_id=ds.id, split_id=sp.id, init_name=init, arch="x", image_size=32,
                          seed=sd, epochs_planned=1, status="completed", config={"train": {"tune": tune if isinstance(tune, str) else tune[init]}})
                s.add(run)
                s.flush()
                ev = Evaluation(name=f"{init}-{sd}", source="predict", run_id=run.id, dataset_id=ds.id,
                                split_id=sp.id, part="test", init_name=init, n_images=m)
                out["evaluations"][(init, sd)] = store_evaluation(
                    s, ev, metrics=[], image_ids=image_ids[:m], finding_ids=finding_ids,
                    probabilities=p[:m], labels=y[:m])
                out["scores"][(init, sd)] = p
    return out


# --------------------------------------------------------------------------- weights in release layouts

DINOV3_VIT = "vit_small_patch16_dinov3"
DINOV3_VIT_KW = {"embed_dim": 32, "depth": 2, "num_heads": 2}
DINOV3_CONVNEXT = "convnext_tiny.dinov3_lvd1689m"
DINOV3_CONVNEXT_KW = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}


def write_dinov3_vit(folder: Path, *, seed: int = 0, arch: str = DINOV3_VIT,
                     kwargs: dict | None = None) -> tuple[Path, dict]:
    """A tiny DINOv3 ViT saved as Meta's release saves it (dinov3_vit*16_pretrain_*.pth):
    ``storage_tokens``, ``blocks.N.ls1.gamma``, a fused ``qkv.bias`` (zero where timm has none)
    with its ``bias_mask``, ``rope_embed.periods`` and the pretraining ``mask_token``.
    Returns the file and timm's own state dict of the same weights."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **(kwargs or DINOV3_VIT_KW))
    timm_sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k in timm_sd:  # timm starts q/v biases at zero; a release's are not
        if k.endswith((".q_bias", ".v_bias")):
            timm_sd[k] = torch.randn_like(timm_sd[k])
    dim = timm_sd["cls_token"].shape[-1]
    out: dict = {}
    for k, v in timm_sd.items():
        if k.endswith(".attn.q_bias"):
            out[k.replace("q_bias", "qkv.bias")] = torch.cat(
                [v, torch.zeros_like(v), timm_sd[k.replace("q_bias", "v_bias")]])
            continue
        if k.endswith(".attn.v_bias"):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        out[k.replace("gamma_2", "ls2.gamma")] = v
    for i in range(sum(1 for k in timm_sd if k.endswith(".norm1.weight"))):
        out.setdefault(f"blocks.{i}.attn.qkv.bias", torch.zeros(3 * dim))
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    out["mask_token"] = torch.randn(1, dim)
    out["rope_embed.periods"] = torch.arange(1, dim // 8 + 1, dtype=torch.float32)
    path = Path(folder) / "dinov3_vits16_tiny_pretrain_lvd1689m-00000000.pth"
    torch.save(out, path)
    return path, timm_sd


def write_dinov3_convnext(folder: Path, *, seed: int = 0) -> tuple[Path, dict]:
    """A tiny ConvNeXt saved in Meta's DINOv3 release layout (``downsample_layers.I.J``,
    ``stages.I.J.dwconv/pwconv1/pwconv2``, a final ``norm``); returns the file and timm's state."""
    import re

    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(DINOV3_CONVNEXT, pretrained=False, num_classes=0, **DINOV3_CONVNEXT_KW)
    timm_sd = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    for k, v in timm_sd.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2")
        out[k.replace("head.norm.", "norm.")] = v
    path = Path(folder) / "dinov3_convnext_tiny_pretrain_lvd1689m-00000000.pth"
    torch.save(out, path)
    return path, timm_sd


HF_DINOV2_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "image_size": 32, "patch_size": 8, "layerscale_value": 0.5}
HF_MEAN, HF_STD = [0.53, 0.53, 0.53], [0.26, 0.26, 0.26]


def write_hf_dinov2(folder: Path, *, seed: int = 0):
    """A tiny random ``transformers`` Dinov2Model saved with ``save_pretrained``, with a
    preprocessor config (its mean/std) and a model card naming a licence; returns (folder, model)."""
    import json

    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**HF_DINOV2_CONFIG)).eval()
    with torch.no_grad():  # LayerScale and norms away from their initial values
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "BitImageProcessor", "image_mean": HF_MEAN, "image_std": HF_STD}))
    (folder / "README.md").write_text("---\nlicense: msrla\nlicense_link: https://example.org/msrla\n---\n# tiny\n")
    return folder, model


def write_hub_entry(hub: Path, name: str, *, seed: int = 0) -> tuple[Path, dict]:
    """timm's weights for ``name`` as the Hugging Face cache holds them after a download
    (models--timm--NAME/snapshots/<commit>/model.safetensors and refs/main)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    repo = Path(hub) / f"models--timm--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(sd, str(snap / "model.safetensors"))
    return snap / "model.safetensors", sd


def write_study_layouts(root: Path) -> dict[str, Path]:
    """The six datasets of the tayebi2024 preset in their download layouts, one or two images each
    (labels files with their real names and columns, image files where the readers look)."""
    import gzip

    from PIL import Image as PILImage

    root = Path(root)

    def img(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((40, 40), 90, dtype=np.uint8)).save(path)

    def gz(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt") as fh:
            fh.write(text)

    out = {}
    vindr = root / "data" / "vindr-cxr" / "1.0.0"
    (vindr / "annotations").mkdir(parents=True)
    (vindr / "annotations" / "image_labels_train.csv").write_text("image_id,rad_id,Cardiomegaly,No finding\na1,R8,1,0\n")
    (vindr / "annotations" / "image_labels_test.csv").write_text("image_id,Cardiomegaly,No finding\nb1,0,1\n")
    for part, name in (("train", "a1"), ("test", "b1")):
        (vindr / part).mkdir()
        (vindr / part / f"{name}.dicom").write_bytes(b"")
    out["vindr"] = vindr
    chex = root / "data" / "CheXpert-v1.0"
    img(chex / "train" / "patient00001" / "study1" / "view1_frontal.jpg")
    (chex / "train.csv").write_text("Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly\n"
                                    "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg,Female,60,Frontal,AP,1.0\n")
    out["chexpert"] = chex
    mimic = root / "data" / "mimic-cxr-jpg" / "2.0.0"
    gz(mimic / "mimic-cxr-2.0.0-metadata.csv.gz", "dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50414267,PA\n")
    gz(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", "subject_id,study_id,Cardiomegaly\n10000032,50414267,1.0\n")
    gz(mimic / "mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split\nd1,50414267,10000032,train\n")
    img(mimic / "files" / "p10" / "p10000032" / "s50414267" / "d1.jpg")
    out["mimic"] = mimic
    nih = root / "data" / "chestxray14"
    img(nih / "images_001" / "images" / "00000001_000.png")
    nih.joinpath("Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA\n")
    (nih / "test_list.txt").write_text("00000001_000.png\n")
    out["cxr14"] = nih
    pad = root / "data" / "padchest"
    img(pad / "0" / "i1.png")
    gz(pad / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
       "ImageID,ImageDir,StudyID,PatientID,Projection,Labels\ni1.png,0,s1,p1,PA,\"['cardiomegaly', 'nodule']\"\n")
    out["padchest"] = pad
    uka = root / "data" / "uka-cxr"
    img(uka / "images" / "u1.png")
    (uka / "labels.csv").write_text("path,patient_id,part,cardiomegaly\nimages/u1.png,q1,train,1\n")
    out["uka"] = uka / "labels.csv"
    return out
