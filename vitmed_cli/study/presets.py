"""Study files to start from: the paper (``tayebi2024``) and the miniature (``demo``).

``tayebi2024`` follows the study's protocol as published with its code
(``shared/study/tayebi2024.md``): the five public datasets in the layouts they are
downloaded in, plus a generic CSV entry for UKA-CXR-style data; DINOv2, ImageNet-21k and a
MIMIC-CXR supervised init trained as a stage of the study; the per-dataset finding lists
(shrunk to MIMIC-CXR's where the paper did); AdamW 1e-5, weight decay 0, batch 30,
224 px, flip and +-7 degrees, raw [0, 1] input, 100 epochs, uncertain as negative.
Native finding names are written as vitmed's canonical ones (``vitmed_cli.datasets.findings``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import DEFAULT_RESAMPLES
from ..errors import ConfigError

PRESETS = ("tayebi2024", "demo")

# the seven findings MIMIC-CXR's supervised init learned (data_provider.py, mimic, "for cxr14 &
# padchest pretraining"), in canonical names
MIMIC_SEVEN = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding",
               "Consolidation", "Pneumothorax"]

TAYEBI2024 = '''\
# The study of Tayebi Arasteh et al., Eur Radiol Exp 8:10 (2024), as a vitmed study file.
# Edit the paths (relative paths are read from this file's folder), then:
#   vitmed study plan THIS_FILE     # the whole matrix, and what the registry already holds
#   vitmed study run THIS_FILE      # runs what is missing; run it again after an interruption

[study]
name = "tayebi2024"
description = "DINOv2 vs ImageNet-21k vs MIMIC-CXR supervised initialisation of a ViT-B, six chest X-ray datasets"
# the paper trained each cell once; vitmed reports mean +- SD over these seeds
seeds = [0, 1, 2]

# Training (config/config.yaml, main_vitmed.py): every key is a vitmed finetune option.
[protocol]
epochs = 100               # the paper tested a fixed epoch (100); vitmed keeps the best on validation
batch_size = 30
lr = 1e-5                  # AdamW
weight_decay = 0.0
image_size = 224           # the code also has 336 and 512 px variants
flip = true                # horizontal flip, p = 0.5
rotation = 7.0             # random rotation +-7 degrees
normalise = "none"         # images fed as [0, 1] (ToTensor only), no mean/std
uncertain = "zeros"        # uncertain (-1) and blank labels count as negative
frontal_only = true
scheduler = "constant"
tune = "all"               # every parameter trained
# the loss is BCE with pos_weight = negatives / positives over the training part (vitmed's only loss)

[statistics]
# 1,000 resamples as the paper; its smallest two-sided p-value is 2/1001 = 0.002, so the paper's
# "P < 0.001" needs at least 2,000 (10,000 recommended)
resamples = 1000
alpha = 0.05
fdr_family = "study"       # Benjamini-Hochberg over all datasets x comparisons x findings; or "dataset"

[report]
out = "tayebi2024-report.html"
format = "html"

# ---------------------------------------------------------------- initialisations (main_vitmed.py)
[inits.dinov2]             # dinov2_vitb14 (ViT-B/14), new linear head on the class token
pretrain = "dinov2"
file = "weights/dinov2_vitb14_pretrain.pth"

[inits.imagenet]           # timm vit_base_patch16_224.augreg_in21k (model.safetensors of that HF repository)
pretrain = "imagenet"
file = "weights/vit_base_patch16_224.augreg_in21k.safetensors"

[inits.mimic-supervised]   # the same ViT-B/16 fine-tuned on MIMIC-CXR first, then the starting point
stage = { dataset = "mimic", from = "imagenet", seed = 0 }

[[comparisons]]            # is self-supervised DINOv2 better than each supervised init?
reference = "dinov2"
inits = ["imagenet", "mimic-supervised"]

# ---------------------------------------------------------------- datasets (data/data_provider.py)
[datasets.vindr]
format = "vindr"
path = "data/vindr-cxr/1.0.0"
image_size = 224
ingest = { label_policy = "majority" }
split = { policy = "official", val = 0.1 }     # VinDr-CXR's own test set
findings = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding", "Consolidation",
            "Pneumothorax", "Pleural Thickening", "Lung Opacity", "Fibrosis", "Nodule/Mass"]
[datasets.vindr.findings_by_init]
mimic-supervised = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding",
                    "Consolidation", "Pneumothorax", "Lung Opacity"]

[datasets.chexpert]
format = "chexpert"
path = "data/CheXpert-v1.0"
image_size = 224
split = { policy = "random", val = 0.1, test = 0.2 }
findings = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding", "Consolidation",
            "Pneumothorax", "Lung Opacity", "Lung Lesion", "Fracture"]

[datasets.mimic]
format = "mimic"
path = "data/mimic-cxr-jpg/2.0.0"
image_size = 224
split = { policy = "random", val = 0.1, test = 0.2 }
findings = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding", "Consolidation",
            "Pneumothorax"]

[datasets.cxr14]
format = "cxr14"
path = "data/chestxray14"
image_size = 224
split = { policy = "random", val = 0.1, test = 0.2 }
findings = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding", "Consolidation",
            "Pneumothorax", "Fibrosis", "Emphysema", "Hernia", "Pleural Thickening", "Edema", "Nodule", "Mass"]
protocol = { no_finding = "No Finding" }       # ChestX-ray14's "No Finding": no other finding positive
[datasets.cxr14.findings_by_init]
mimic-supervised = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding",
                    "Consolidation", "Pneumothorax"]

[datasets.padchest]
format = "padchest"
path = "data/padchest"
image_size = 224
split = { policy = "random", val = 0.1, test = 0.2 }
# PadChest's own labels: "hiatal hernia" is Hernia, "COPD signs" COPD, "infiltrates" Infiltration,
# "normal" No Finding; the code's "congestion" is PadChest's "hilar congestion"
findings = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding", "Consolidation",
            "Pneumothorax", "Emphysema", "Hernia", "scoliosis", "hilar congestion", "aortic elongation",
            "kyphosis", "COPD", "Pleural Thickening", "nodule_mass", "Infiltration"]
protocol = { merge = { nodule_mass = ["Nodule", "Mass"] } }   # positive where nodule or mass is
[datasets.padchest.findings_by_init]
mimic-supervised = ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Atelectasis", "No Finding",
                    "Consolidation", "Pneumothorax"]

[datasets.uka]
# UKA-CXR is private: bring data like it as one CSV (a path column, a patient column, a part column
# train/val/test and one 1/0/-1 column per finding) and point `path` at it
format = "csv"
path = "data/uka-cxr/labels.csv"
image_size = 224
ingest = { path_col = "path", patient_col = "patient_id" }
split = { policy = "official", val = 0.1 }     # the CSV's own part column
'''


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; the defaults finish in about a minute and a half on 2 CPU cores."""

    n_source: int = 800
    n_target: int = 640
    # 48 px (6 x 6 patches of 8 px): the synthetic findings stay visible, and the source init's
    # lead over random was larger at 48 px than at 64 px over seeds 0-2 (macro AUC +0.08, +0.10,
    # +0.19 against +0.06, +0.14, +0.16), for two thirds of the compute.
    image_size: int = 48
    source_epochs: int = 30
    target_epochs: int = 30
    # The target training part is kept small on purpose: with few labelled images
    # a good initialisation matters most, as in the study's smaller datasets.
    target_val: float = 0.15
    target_test: float = 0.55
    batch_size: int = 32
    source_lr: float = 1e-3
    # Fine-tuning keeps a lower rate, the same for every initialisation (as in the study),
    # so that pretrained features are adapted rather than overwritten.
    lr: float = 3e-4
    # A ViT trained from scratch needs warm-up; the study's constant rate assumed pretrained weights.
    scheduler: str = "cosine"
    # Flips as in the study, but no rotation: the synthetic images have no pose variation to
    # learn invariance to, and at 64 px a rotation cost the tiny ViT most of its signal.
    rotation: float = 0.0
    seed: int = 0
    n_resamples: int = DEFAULT_RESAMPLES
    arch: str = "vit_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
    )

    @classmethod
    def smallest(cls) -> "DemoSettings":
        """Seconds, not minutes: for tests; too small for the p-value to mean much."""
        return cls(n_source=160, n_target=160, image_size=32, source_epochs=2, target_epochs=2,
                   n_resamples=200, model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1,
                                                  "num_heads": 2})


SOURCE, TARGET = "demo-source", "demo-target"
SOURCE_INIT = "demo-source-supervised"


def _toml(value: Any) -> str:
    """A TOML value for the few kinds a study file holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))  # pragma: no cover


def demo_study_text(settings: DemoSettings | None = None, *, seeds: list[int] | None = None,
                    dinov2_file: str | Path | None = None, name: str = "demo",
                    report_out: str = "report.html") -> str:
    """The demo as a study file: a synthetic source and target, random and a source-trained init."""
    s = settings or DemoSettings()
    seeds = list(seeds) if seeds is not None else [s.seed, s.seed + 1]
    model = {"arch": s.arch, "model_kwargs": dict(s.model_kwargs)}
    inits = ["random", SOURCE_INIT] + (["dinov2"] if dinov2_file is not None else [])
    lines = [
        "# The study in miniature on synthetic data (vitmed demo runs the same): a source dataset",
        "# standing in for MIMIC-CXR, a target standing in for VinDr-CXR, a small ViT fine-tuned on the",
        "# target from random and from a model trained on the source, over seeds.",
        "",
        "[study]",
        f"name = {_toml(name)}",
        f"seeds = {_toml(seeds)}",
        "",
        "[protocol]",
        f"image_size = {s.image_size}",
        f"epochs = {s.target_epochs}",
        f"batch_size = {s.batch_size}",
        f"lr = {_toml(float(s.lr))}",
        f"scheduler = {_toml(s.scheduler)}",
        f"rotation = {_toml(float(s.rotation))}",
        "",
        "[statistics]",
        f"resamples = {s.n_resamples}",
        f"seed = {s.seed}",
        "",
        "[report]",
        f"out = {_toml(report_out)}",
        f"format = {_toml('md' if report_out.endswith('.md') else 'html')}",
        "",
        f"[datasets.{SOURCE}]",
        'format = "synthetic"',
        f"path = {_toml('data/' + SOURCE)}",
        f"image_size = {s.image_size}",
        f"ingest = {_toml({'n_images': s.n_source, 'seed': s.seed, 'flavour': 'source'})}",
        f"split = {_toml({'policy': 'random', 'name': 'demo', 'val': 0.15, 'test': 0.15, 'seed': s.seed})}",
        "target = false             # only the source of the in-domain init",
        "",
        f"[datasets.{TARGET}]",
        'format = "synthetic"',
        f"path = {_toml('data/' + TARGET)}",
        f"image_size = {s.image_size}",
        f"ingest = {_toml({'n_images': s.n_target, 'seed': s.seed + 1, 'flavour': 'target'})}",
        f"split = {_toml({'policy': 'random', 'name': 'demo', 'val': s.target_val, 'test': s.target_test, 'seed': s.seed})}",
        "",
        "[inits.random]",
        f"protocol = {_toml(model)}",
        "",
        f"[inits.{SOURCE_INIT}]",
        f"stage = {_toml({'dataset': SOURCE, 'from': 'random', 'seed': s.seed, 'protocol': {'lr': float(s.source_lr), 'epochs': s.source_epochs}})}",
        f"protocol = {_toml(model)}",
        "",
    ]
    if dinov2_file is not None:
        # a real DINOv2 file brings its own architecture (ViT-B/14: slow on a CPU)
        lines += ["[inits.dinov2]", 'pretrain = "dinov2"', f"file = {_toml(str(dinov2_file))}", ""]
    lines += ["[[comparisons]]", 'reference = "random"', f"inits = {_toml(inits[1:])}", ""]
    return "\n".join(lines)


def preset_text(name: str) -> str:
    """The text of preset ``name``."""
    if name == "tayebi2024":
        return TAYEBI2024
    if name == "demo":
        return demo_study_text()
    raise ConfigError(f"unknown preset {name!r} - use one of: {', '.join(PRESETS)}")


__all__ = ["DemoSettings", "MIMIC_SEVEN", "PRESETS", "SOURCE", "SOURCE_INIT", "TARGET", "demo_study_text",
           "preset_text"]
