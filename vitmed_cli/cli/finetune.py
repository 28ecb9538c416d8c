"""``vitmed finetune``: fine-tune a model from a registered initialisation, recorded in the registry."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from rich.text import Text

from .. import choices
from ..choices import Device, Normalise, Scheduler, UncertainPolicy
from ..datasets.derived import parse_merge
from ..errors import ConfigError
from ..models import parse_model_kwargs
from ._common import (
    EventPrinter, JsonOpt, console, err_console, fmt, print_json, print_table, refuse_given, state, want_json,
)


def _names(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    return [n.strip() for n in raw.split(",") if n.strip()]


def _rotation(rotation: float | None, max_rotation: float | None) -> float:
    """--rotation, or its old name --max-rotation; both at once only when they agree."""
    if rotation is not None and max_rotation is not None and rotation != max_rotation:
        raise ConfigError("--rotation and --max-rotation (its old name) differ - give --rotation only")
    if rotation is not None:
        return rotation
    return max_rotation if max_rotation is not None else choices.DEFAULT_ROTATION


def finetune(
    ctx: typer.Context,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset to train on (as ingested).")] = None,
    init: Annotated[str, typer.Option(
        help="Starting weights: random, dinov2, imagenet, run:<id>, ckpt:<id> or a registered name.")] = "random",
    split: Annotated[Optional[str], typer.Option(help="Split to use. Default: the dataset's newest split.")] = None,
    arch: Annotated[Optional[str], typer.Option(
        help="timm architecture. Default: the init's (random: vit_base_patch16_224).")] = None,
    image_size: Annotated[Optional[int], typer.Option(
        help="Training image size in pixels. Default: the image cache's size (224 as ingested).")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help=f"Epochs to train. Default: {choices.DEFAULT_EPOCHS}; with --resume, the run's planned epochs. "
        f"The study trained {choices.STUDY_EPOCHS} epochs.")] = None,
    batch_size: Annotated[int, typer.Option(
        help=f"Images per batch (per GPU under torchrun). Default {choices.DEFAULT_BATCH_SIZE}; the study "
        f"used {choices.STUDY_BATCH_SIZE}.", show_default=False)] = choices.DEFAULT_BATCH_SIZE,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the study's: 1e-5).")] = choices.DEFAULT_LR,
    weight_decay: Annotated[float, typer.Option(
        help=f"AdamW weight decay. Default {choices.DEFAULT_WEIGHT_DECAY:g}; the study used "
        f"{choices.STUDY_WEIGHT_DECAY:g}.", show_default=False)] = choices.DEFAULT_WEIGHT_DECAY,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, data order and augmentation.")] = 0,
    device: Annotated[Device, typer.Option(help="Where to train: a GPU when there is one (auto), or cpu/cuda.")] = Device.auto,
    uncertain: Annotated[UncertainPolicy, typer.Option(
        help="Uncertain labels (-1) become negatives (zeros), positives (ones) or are left out (ignore).")] = UncertainPolicy.zeros,
    early_stop: Annotated[Optional[int], typer.Option(
        help="Stop after this many epochs without a better validation macro AUC. Default: off.")] = None,
    num_workers: Annotated[int, typer.Option(help="Loader threads (0 = load in the main thread).")] = choices.DEFAULT_NUM_WORKERS,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model (GPU).")] = False,
    model_kwargs: Annotated[Optional[str], typer.Option(
        help='Extra timm model options as JSON, e.g. \'{"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8}\'.')] = None,
    scheduler: Annotated[Scheduler, typer.Option(help="Learning-rate schedule: constant (the study) or cosine (10% linear warm-up, then cosine decay).")] = Scheduler.constant,
    rotation: Annotated[Optional[float], typer.Option(
        "--rotation", metavar="DEG",
        help=f"Training augmentation: rotate each image by an angle drawn from +-DEG degrees; 0 = none. "
        f"Default {choices.DEFAULT_ROTATION:g}; the study used {choices.STUDY_ROTATION:g}.",
        show_default=False)] = None,
    max_rotation: Annotated[Optional[float], typer.Option(
        "--max-rotation", metavar="DEG", hidden=True,
        help="Old name of --rotation.")] = None,
    flip: Annotated[bool, typer.Option(
        "--flip/--no-flip",
        help="Training augmentation: flip each image horizontally with probability 0.5 (as the study "
        "did). --no-flip --rotation 0: no augmentation.")] = choices.DEFAULT_FLIP,
    normalise: Annotated[Normalise, typer.Option(
        help="Model input: normalised with the initialisation's mean/std (init), or the image in [0, 1] "
        "(none). Default init; the study fed [0, 1] (none). predict uses the run's choice.",
        show_default=False)] = Normalise.init,
    findings: Annotated[Optional[str], typer.Option(
        "--findings", metavar="A,B,C",
        help="Comma-separated findings to learn (canonical or the dataset's own names; a dataset's "
        "native 'No Finding' too). Default: all but the dataset's non-findings (e.g. PadChest "
        "'exclude', 'suboptimal study'); the study learned a fixed list per dataset (7-17 findings). "
        "Derived findings (--merge, --no-finding) are learned either way.")] = None,
    merge: Annotated[Optional[list[str]], typer.Option(
        "--merge", metavar="NAME=A,B",
        help="Learn a derived finding NAME: positive where any of A, B is, negative where all are "
        "negative (e.g. PadChest nodule_mass=Nodule,Mass, as the study did). Repeatable. Computed from "
        "the labels at training and predict; the dataset is not changed. Whether A and B are learned "
        "too is up to --findings.", show_default=False)] = None,
    no_finding: Annotated[Optional[str], typer.Option(
        "--no-finding", metavar="NAME",
        help="Learn a derived finding NAME: positive where every finding of the image is negative "
        "(non-findings and a native 'No Finding' aside), e.g. ChestX-ray14's 'No Finding', which the "
        "study learned. A dataset with its own 'No Finding' column: name it in --findings instead.",
        show_default=False)] = None,
    min_positives: Annotated[Optional[int], typer.Option(
        "--min-positives", metavar="N",
        help="Leave out (with a warning) findings with fewer than N positive training images. "
        "Default: refuse any finding without one.")] = None,
    keep_resume: Annotated[bool, typer.Option(
        "--keep-resume", help="Keep resume.pt (optimiser state, about 3x the weights: ~1 GB for a ViT-B) "
        "after the run completes, to train it further with --resume --epochs. Default: removed.")] = False,
    tune: Annotated[str, typer.Option(
        "--tune", metavar="all|head|last:N",
        help="What to train: all (the study), head (a linear probe on the frozen backbone: each image's "
        "features are computed once, stored beside the image cache and reused by later probes; no "
        "augmentation) or last:N (the last N blocks and the head).")] = choices.DEFAULT_TUNE,
    feature_cache: Annotated[bool, typer.Option(
        "--feature-cache/--no-feature-cache",
        help="With --tune head: train the head on stored features (default), or end to end through "
        "the frozen backbone.")] = True,
    resume: Annotated[Optional[int], typer.Option(
        "--resume", metavar="RUN_ID", help="Continue an interrupted or crashed run exactly where it stopped.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or epoch lines (warnings still show).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune a ViT on a dataset's training part; validation AUC every epoch, best epoch kept.

    Ctrl-C or SIGTERM stops at a safe point; continue with --resume RUN_ID.
    For several GPUs: torchrun --nproc_per_node 8 -m vitmed_cli finetune ...

    A linear probe: --tune head (features once, then seconds per probe and seed).

    Example: vitmed finetune --dataset vindr --init dinov2 --epochs 10 --batch-size 32
    """
    as_json = want_json(ctx, json_out)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    registry = state(ctx).registry()
    if resume is None and not dataset:
        raise ConfigError("--dataset is required (or --resume RUN_ID) - see vitmed datasets list")
    from .. import training

    if resume is not None:
        refuse_given(ctx, keep={"resume", "epochs", "device", "quiet", "json_out"},
                     why=f"--resume {resume} continues the run with the settings it was started with "
                     "(only --epochs and --device may change)")
    with EventPrinter(progress=main_rank, quiet=quiet) as on_event:
        if resume is not None:
            result = training.resume(registry, resume, epochs=epochs,
                                     device=None if device is Device.auto else device.value,
                                     on_event=on_event)
        else:
            result = training.finetune(
                registry, dataset=dataset, init=init, split=split, arch=arch, image_size=image_size,
                epochs=epochs if epochs is not None else choices.DEFAULT_EPOCHS, batch_size=batch_size,
                lr=lr, weight_decay=weight_decay, seed=seed, device=device.value,
                uncertain=uncertain.value, early_stop=early_stop, num_workers=num_workers,
                compile=compile_model, model_kwargs=parse_model_kwargs(model_kwargs),
                scheduler=scheduler.value, findings=_names(findings), min_positives=min_positives,
                keep_resume=keep_resume, tune=tune, feature_cache=feature_cache,
                rotation=_rotation(rotation, max_rotation), flip=flip, normalise=normalise.value,
                merge=parse_merge(merge), no_finding=no_finding, on_event=on_event,
            )
    if not main_rank:
        return
    out = {
        "run_id": result.run_id, "status": result.status, "best_epoch": result.best_epoch,
        "best_val_macro_auc": result.best_val_macro_auc, "epochs_done": result.epochs_done,
        "epochs_planned": result.epochs_planned, "checkpoints": result.checkpoints,
        "history": result.history, "left_out_findings": result.left_out_findings,
    }
    if as_json:
        print_json(out)
    else:
        if result.history:  # a run stopped in its first epoch has none to show
            print_table(result.history, ["epoch", "train_loss", "val_loss", "val_macro_auc", "seconds",
                                         ("images_per_second", "images/s")],
                        title=f"run {result.run_id}")
        console.print(Text(
            f"run {result.run_id} {result.status}: best epoch {fmt(result.best_epoch)}, "
            f"validation macro AUC {fmt(result.best_val_macro_auc, 4)}"
        ))
    if result.status == "interrupted":
        err_console.print(Text(result.message or f"continue with: vitmed finetune --resume {result.run_id}"),
                          highlight=False, soft_wrap=True)
        raise typer.Exit(130)
