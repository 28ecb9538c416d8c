"""``vitmed pretrain-load``: register the study's starting weights from real files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.text import Text

from .. import weights
from ._common import JsonOpt, cli_message, err_console, print_json, print_record, state, want_json


def pretrain_load(
    ctx: typer.Context,
    init: Annotated[
        str,
        typer.Argument(
            help="dinov2, imagenet, dinov3 (an official DINOv3 ViT or ConvNeXt file), hf (a transformers "
            "save_pretrained folder, --dir), timm:NAME (timm's weights for NAME), file (any timm --arch) "
            "or run:<id> (that run's best checkpoint).",
            show_default=False,
        ),
    ],
    file: Annotated[
        Optional[Path],
        typer.Option(
            "--file",
            help="Weights file: the official dinov2_vitb14_pretrain.pth or dinov3_vitb16_pretrain_*.pth, "
            "a timm .pth/.bin state dict or .safetensors. Default (dinov2, imagenet, timm:NAME): the "
            "local Hugging Face cache.",
            show_default=False,
        ),
    ] = None,
    arch: Annotated[
        Optional[str],
        typer.Option(
            "--arch",
            help="timm architecture, e.g. vit_small_patch14_dinov2 or resnet50d (default: "
            "vit_base_patch14_dinov2.lvd142m / vit_base_patch16_224.augreg_in21k; dinov3: read from the file).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option("--name", help="Label for the checkpoint, usable as --init LABEL.", show_default=False),
    ] = None,
    model_kwargs: Annotated[
        Optional[str],
        typer.Option(
            "--model-kwargs",
            help='JSON overrides for a resized architecture, e.g. \'{"depth": 2, "embed_dim": 48}\'; '
            "kept with the checkpoint and applied when fine-tuning.",
            show_default=False,
        ),
    ] = None,
    dir: Annotated[  # noqa: A002 - the option is --dir
        Optional[Path],
        typer.Option(
            "--dir",
            help="With hf: the save_pretrained folder (config.json + model.safetensors) of a "
            "transformers DINOv2-family encoder such as RAD-DINO.",
            show_default=False,
        ),
    ] = None,
    allow_network: Annotated[
        bool,
        typer.Option("--allow-network", help="Download timm's weights from Hugging Face when not cached."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check a weights file against its architecture and register it as a starting point.

    The file is read without running code (torch weights_only or safetensors),
    loaded with strict key checks (only the classifier head may differ), hashed
    and registered; registering the same file again returns the existing id.

    DINOv3 files are converted by timm's own checkpoint filter (RoPE: no position
    embeddings to interpolate); an hf snapshot becomes the equivalent timm ViT, normalised
    with the snapshot's own mean/std. `vitmed checkpoints list` shows each file's family
    and licence note.

    Example: vitmed pretrain-load dinov2 --file dinov2_vitb14_pretrain.pth
    """
    as_json = want_json(ctx, json_out)
    registry = state(ctx).registry()
    if as_json:
        result = weights.pretrain_load(
            registry, init, file=file, arch=arch, name=name, model_kwargs=model_kwargs,
            allow_network=allow_network, dir=dir,
        )
        print_json(result.to_dict())
        return
    with err_console.status("reading weights") as status:
        result = weights.pretrain_load(
            registry, init, file=file, arch=arch, name=name, model_kwargs=model_kwargs,
            allow_network=allow_network, dir=dir,
            on_event=lambda event: status.update(escape(getattr(event, "text", ""))),
        )
    title = (
        f"already registered as checkpoint {result.checkpoint_id}"
        if result.existing
        else f"registered checkpoint {result.checkpoint_id}"
    )
    print_record(result.to_dict(), title=title)
    if result.note():
        err_console.print(Text("note: " + cli_message(result.note())), soft_wrap=True)
