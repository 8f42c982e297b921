"""The model a command starts from: a SegFormer or UperNet from a directory or the Hub (safetensors only), or
built; its source checked before anything slow; its image processor; the device it runs on.

Example::

    model = load_model(ModelArguments(model_name_or_path="outputs/camvid_quick"), id2label)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..modeling import build_model, load_segmentation_model
from .arguments import DataArguments, ModelArguments, UsageError, looks_local, no_such_directory


def load_model(model_args: ModelArguments, id2label: dict[int, str] | None, seed: int = 0, new_head: bool = False):
    """The starting model: ``model_name_or_path`` loaded (safetensors only, label map checked), or built."""
    name = model_args.model_name_or_path
    if not name:
        return build_model(id2label, model_args.architecture, **model_args.sizes(), seed=seed)
    check_model_source(name, model_args.revision)
    try:
        return load_segmentation_model(name, id2label, new_head=new_head, revision=model_args.revision)
    except ValueError as err:  # the model's classes are not the dataset's
        raise UsageError(str(err)) from err
    except OSError as err:
        raise _unloadable(name, err) from err


def check_model_source(name: str, revision: str | None = None) -> None:
    """Raise :class:`UsageError` at once, before transformers retries the Hub for tens of seconds, when ``name``
    is neither a local directory nor a model the Hub cache or the Hub has (``HF_HUB_OFFLINE``: the cache only)."""
    if Path(name).is_dir():
        return
    made_by = (
        "If another command makes this model (the --config file's header names it, e.g. scripts/pretrain.py), "
        "run that first."
    )
    if Path(name).exists() or looks_local(name):
        raise UsageError(f"model {name!r}: there is {no_such_directory(name)}. {made_by}")
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json", revision=revision), str):
        return
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UsageError(
            f"model {name!r}: {no_such_directory(name)}, and HF_HUB_OFFLINE is set and the Hub cache "
            f"does not hold it. {made_by}"
        )
    try:
        huggingface_hub.model_info(name, revision=revision, timeout=10)
    except huggingface_hub.errors.RepositoryNotFoundError as err:
        raise UsageError(f"model {name!r}: {no_such_directory(name)} nor repo on the Hub. {made_by}") from err
    except huggingface_hub.errors.HfHubHTTPError as err:
        raise UsageError(f"model {name!r}: the Hub refused it ({str(err).splitlines()[0]})") from err
    except Exception as err:  # the network: DNS, connection, timeout
        raise UsageError(
            f"model {name!r}: {no_such_directory(name)}, and the Hub cannot be reached "
            f"({type(err).__name__}: {err}). {made_by}"
        ) from err


def _unloadable(name: str, err: OSError) -> UsageError:
    if Path(name).exists():
        return UsageError(f"model {name!r}: {err}")
    return UsageError(
        f"model {name!r}: there is {no_such_directory(name)}, and as a Hub repo id it could not be loaded "
        f"({str(err).splitlines()[0]}). If another command makes this model (the --config file's header names it, "
        "e.g. scripts/pretrain.py), run that first."
    )


def model_config(model_args: ModelArguments):
    """The ``PretrainedConfig`` of ``model_name_or_path`` without loading weights; ``None`` without one."""
    if not model_args.model_name_or_path:
        return None
    from transformers import AutoConfig

    check_model_source(model_args.model_name_or_path, model_args.revision)
    try:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.revision)
    except OSError as err:
        raise _unloadable(model_args.model_name_or_path, err) from err


def model_classes(model_args: ModelArguments) -> dict[int, str] | None:
    """The ``id2label`` of ``model_name_or_path`` (for datasets that bring no class names); ``None`` without one."""
    config = model_config(model_args)
    return None if config is None else {int(k): v for k, v in config.id2label.items()}


def image_processor(data_args: DataArguments):
    """The preprocessing of evaluation, saved with the model so that users of the repo get it too."""
    # The PIL implementation: the default one needs torchvision, which this project does not.
    from transformers import SegformerImageProcessorPil

    size = data_args.eval_size
    return SegformerImageProcessorPil(
        do_resize=size is not None,
        size={"height": size[0], "width": size[1]} if size else None,
        do_reduce_labels=False,
    )


def pick_device(name: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; any other name as torch reads it."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
