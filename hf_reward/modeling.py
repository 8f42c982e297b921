"""Building and loading segmentation models (SegFormer, UperNet), and checking their label map against the data's.

SegFormer returns logits at a quarter of the input size; UperNet returns them at the input size
(its forward upsamples them) and trains an auxiliary FCN head on the third backbone stage
(1/16 of the input), which :class:`hf_reward.RewardSegTrainer` reads through
:func:`captured_outputs`.

Weights load from safetensors only (``use_safetensors=True``: a pickled ``pytorch_model.bin``
is refused, since unpickling runs code) and ``trust_remote_code`` is never turned on.

A model whose ``id2label`` is missing (the ``LABEL_0, LABEL_1, ...`` placeholders transformers
fills in), ambiguous (two classes with one name) or different from the dataset's is an error:
a silent default would train or score class 3 of the model against class 3 of the data, whatever
each means.

Example::

    model = build_segformer({0: "road", 1: "car"}, hidden_sizes=(16, 32, 64, 128))
    model.save_pretrained("out/model")
    model = load_segmentation_model("out/model", {0: "road", 1: "car"})  # or a Hub repo id
    upernet = build_model({0: "road", 1: "car"}, architecture="upernet", hidden_sizes=(16, 32, 64, 128))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    ConvNextConfig,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

ARCHITECTURES = {"segformer": SegformerForSemanticSegmentation, "upernet": UperNetForSemanticSegmentation}


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def check_id2label(model_id2label: Mapping, dataset_id2label: Mapping[int, str], source: str = "the model") -> None:
    """Raise ``ValueError`` unless the model's classes are the dataset's, index by index.

    Names compare case-insensitively, with ``_``, ``-`` and spaces alike ("traffic_light" ==
    "Traffic light").

    >>> check_id2label({0: "road", 1: "car"}, {0: "road", 1: "car"})      # passes
    >>> check_id2label({0: "LABEL_0", 1: "LABEL_1"}, {0: "road", 1: "car"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the model has no id2label (only placeholder names LABEL_0, LABEL_1): save it with ...
    """
    model_id2label = {int(k): v for k, v in (model_id2label or {}).items()}
    fix = (
        f"save it with config.id2label set to the dataset's classes {dict(dataset_id2label)}, or start from a "
        "model with a new head for this dataset (scripts/pretrain.py --new_head)"
    )
    if not model_id2label or all(v == f"LABEL_{k}" for k, v in model_id2label.items()):
        names = ", ".join(str(v) for v in list(model_id2label.values())[:3]) or "none"
        raise ValueError(f"{source} has no id2label (only placeholder names {names}): {fix}")
    if sorted(model_id2label) != list(range(len(model_id2label))):
        raise ValueError(f"{source} has id2label keys {sorted(model_id2label)}; expected 0..{len(model_id2label) - 1}")
    seen: dict[str, int] = {}
    for i, name in sorted(model_id2label.items()):
        if _norm(name) in seen:
            raise ValueError(
                f"{source}'s id2label is ambiguous: classes {seen[_norm(name)]} and {i} are both {name!r}: {fix}"
            )
        seen[_norm(name)] = i
    if len(model_id2label) != len(dataset_id2label):
        raise ValueError(
            f"{source} has {len(model_id2label)} classes but the dataset has {len(dataset_id2label)}: {fix}"
        )
    differ = [
        (i, model_id2label[i], dataset_id2label[i])
        for i in sorted(dataset_id2label)
        if _norm(model_id2label[i]) != _norm(dataset_id2label[i])
    ]
    if differ:
        pairs = "; ".join(f"{i}: model {m!r} vs dataset {d!r}" for i, m, d in differ)
        raise ValueError(f"{source}'s classes differ from the dataset's at {pairs}: {fix}")


def label_maps(id2label: Mapping[int, str]) -> dict:
    """A config's ``id2label`` and ``label2id`` for the classes ``id2label``."""
    return {
        "id2label": {int(k): str(v) for k, v in id2label.items()},
        "label2id": {str(v): int(k) for k, v in id2label.items()},
    }


def build_segformer(
    id2label: Mapping[int, str],
    hidden_sizes: Sequence[int] = (32, 64, 160, 256),
    depths: Sequence[int] = (2, 2, 2, 2),
    decoder_hidden_size: int = 256,
    seed: int = 0,
) -> SegformerForSemanticSegmentation:
    """A randomly initialised SegFormer (MiT encoder, 4 stages) for the classes ``id2label``.

    Defaults are MiT-b0's sizes; the heads per stage are 1, 2, 5, 8 as in MiT, capped so each
    divides its stage's width.

    >>> model = build_segformer({0: "bg", 1: "fg"}, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    >>> model.config.num_labels
    2
    """
    heads = [
        max(h for h in range(1, min(cap, size) + 1) if size % h == 0) for cap, size in zip((1, 2, 5, 8), hidden_sizes)
    ]
    config = SegformerConfig(
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        num_attention_heads=heads,
        decoder_hidden_size=decoder_hidden_size,
        **label_maps(id2label),
    )
    torch.manual_seed(seed)
    return SegformerForSemanticSegmentation(config)


def build_upernet(
    id2label: Mapping[int, str],
    hidden_sizes: Sequence[int] = (96, 192, 384, 768),
    depths: Sequence[int] = (3, 3, 9, 3),
    decoder_hidden_size: int = 512,
    seed: int = 0,
) -> UperNetForSemanticSegmentation:
    """A randomly initialised UperNet on a ConvNeXt backbone (4 stages) for the classes ``id2label``.

    Defaults are UperNet-ConvNeXt-tiny's sizes. ``decoder_hidden_size`` is the UperNet head's
    width; the auxiliary FCN head has half of it, as in that model (512 and 256). The auxiliary
    head is on, with UperNet's loss weight 0.4 (``config.auxiliary_loss_weight``).

    >>> model = build_upernet({0: "bg", 1: "fg"}, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    >>> model.auxiliary_head is not None, model.config.auxiliary_loss_weight
    (True, 0.4)
    """
    backbone = ConvNextConfig(
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        out_features=[f"stage{i}" for i in range(1, len(hidden_sizes) + 1)],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=decoder_hidden_size,
        auxiliary_channels=decoder_hidden_size // 2,
        **label_maps(id2label),
    )
    torch.manual_seed(seed)
    return UperNetForSemanticSegmentation(config)


def build_model(id2label: Mapping[int, str], architecture: str = "segformer", **sizes) -> torch.nn.Module:
    """:func:`build_segformer` or :func:`build_upernet` (``architecture``), with their ``sizes`` and ``seed``."""
    if architecture == "segformer":
        return build_segformer(id2label, **sizes)
    if architecture == "upernet":
        return build_upernet(id2label, **sizes)
    raise ValueError(f"architecture must be one of {tuple(ARCHITECTURES)}, got {architecture!r}")


def load_segmentation_model(
    name_or_path: str,
    id2label: Mapping[int, str],
    *,
    new_head: bool = False,
    revision: str | None = None,
) -> SegformerForSemanticSegmentation | UperNetForSemanticSegmentation:
    """Load a SegFormer or a UperNet from a local directory or a Hub repo id, safetensors only.

    ``new_head=False`` (tuning, evaluation): the model's ``id2label`` must be the dataset's (see
    :func:`check_id2label`). ``new_head=True`` (pretraining on a new label set, e.g. from an
    encoder like ``nvidia/mit-b0``): the classifiers (UperNet: both heads') are re-initialised
    for ``id2label``. Another architecture is an error naming it: the trainer and calibration are
    tested on these two.

    model = load_segmentation_model("nvidia/segformer-b0-finetuned-cityscapes-1024-1024", cityscapes_id2label())
    model = load_segmentation_model("runs/study_camvid_upernet/pretrain", camvid_id2label)  # a UperNet
    """
    model_type = AutoConfig.from_pretrained(name_or_path, revision=revision).model_type
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"model {name_or_path!r} is a {model_type!r} model; hf-reward trains and calibrates {tuple(ARCHITECTURES)}"
        )
    kwargs = dict(use_safetensors=True, revision=revision)
    if new_head:
        kwargs.update(
            **label_maps(id2label),
            ignore_mismatched_sizes=True,
        )
    model = ARCHITECTURES[model_type].from_pretrained(name_or_path, **kwargs)
    if new_head:
        # ignore_mismatched_sizes re-initialises the classifier only when the class count differs.
        model.decode_head.classifier.reset_parameters()
        if getattr(model, "auxiliary_head", None) is not None:
            model.auxiliary_head.classifier.reset_parameters()
    check_id2label(model.config.id2label, id2label, source=f"model {name_or_path!r}")
    return model


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Copy the weights of a Trainer checkpoint directory into ``model`` (every key, or an error).

    Trainer's own resume reads ``model.safetensors`` raw into ``load_state_dict(strict=False)``.
    transformers 5 saves SegFormer under its legacy key names, which only ``from_pretrained``
    converts back; the raw load then matches no key and resumes, with a mere warning, from the
    weights the model already had. Loading through ``from_pretrained`` converts them.
    """
    saved = type(model).from_pretrained(checkpoint, use_safetensors=True)
    model.load_state_dict(saved.state_dict())


@contextlib.contextmanager
def captured_outputs(module: torch.nn.Module) -> Iterator[list]:
    """The outputs of ``module``'s forward calls inside the block, in a list (the hook is gone after it).

    UperNet computes its auxiliary head's logits in its forward but does not return them::

        with captured_outputs(model.auxiliary_head) as auxiliary:
            logits = model(pixel_values=pixel_values).logits
        auxiliary_logits = auxiliary[0]  # (B, C, H/16, W/16), with gradient
    """
    outputs: list = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block, back in the mode it had after it (also on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module, batches, *, desc: str = "logits", progress: bool = True, total: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The model over a loader, the one loop every pass shares: ``(logits (B, C, h, w), labels (B, H, W))`` of
    ``model`` in eval mode on its own device, batch by batch, with a progress bar.

    ``batches`` yields ``{"pixel_values": (B, 3, H', W'), "labels": (B, H, W)}`` (a DataLoader with
    :func:`hf_reward.data.collate_segmentation`) or single examples without the B axis; the labels come back
    as they came. ``total``: the batches, for the bar of a stream that does not know its length.
    """
    device = next(model.parameters()).device
    with eval_mode(model):
        for batch in tqdm(batches, desc=desc, unit="batch", total=total, disable=not progress):
            pixels, labels = torch.as_tensor(batch["pixel_values"]), torch.as_tensor(batch["labels"])
            if pixels.dim() == 3:
                pixels, labels = pixels[None], labels[None]
            yield model(pixel_values=pixels.to(device)).logits, labels


def share_files(directory: str | Path) -> None:
    """Give the files in ``directory`` the permissions new files get here (the umask's; 0644 usually).

    transformers writes ``model.safetensors`` through a private temporary file, so it lands as 0600:
    unreadable to the other users of a shared machine or a shared results directory.
    """
    for path in Path(directory).iterdir():
        if path.is_file():
            share_file(path)


def share_file(path: str | Path) -> None:
    """Give one file the permissions new files get here (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    Path(path).chmod(0o666 & ~mask)
