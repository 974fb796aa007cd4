# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Load TransFuse weights from a file in either format: this package's or the authors' release.

The authors' reference implementation (github.com/Rayicer/TransFuse) saves ``model.state_dict()`` of its
``TransFuse_S`` with its own key names (``resnet.*``, ``transformer.*``, ``up_c*``, ``final_*``); their released ISIC
2017 checkpoint ``TransFuse-19_best.pth`` is such a file. :func:`load_transfuse_checkpoint` recognises that format
and converts it with :func:`~transfuse_monai.networks.nets.convert_authors_state_dict`; anything else must be a state
dict of :class:`~transfuse_monai.networks.nets.TransFuse` (what the bundles save as ``model.pt``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from .convert import _strip_wrappers, convert_authors_state_dict
from .transfuse import TransFuse

__all__ = ["is_authors_state_dict", "load_transfuse_checkpoint"]

# module names that exist only in the authors' TransFuse_S (ours: cnn., fusion*, decoder*, head_*); ``transformer.``
# is shared by both, so it does not tell the formats apart
_AUTHORS_MARKERS = ("resnet.", "up_c", "up1.", "up2.", "final_x.", "final_1.", "final_2.")


def is_authors_state_dict(state_dict: Mapping) -> bool:
    """Whether ``state_dict`` (wrappers ``{"state_dict": ...}``/``{"model": ...}`` and ``module.`` prefixes accepted)
    has the authors' ``TransFuse_S`` key names rather than this package's."""
    return any(str(k).startswith(_AUTHORS_MARKERS) for k in _strip_wrappers(state_dict))


def _read(path: Path, map_location) -> Mapping:
    if not path.is_file():
        raise FileNotFoundError(f"TransFuse checkpoint not found: '{path}'.")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise ValueError(
                f"'{path}' holds Python objects besides tensors, so it is not loaded (torch.load(weights_only=True) "
                "refused it). Save the network's state_dict (torch.save(model.state_dict(), path)) and load that."
            ) from err
        raise ValueError(f"'{path}' could not be read as a PyTorch checkpoint: {err}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"'{path}' could not be read as a PyTorch checkpoint: {err}") from err
    if not isinstance(content, Mapping):
        raise ValueError(f"'{path}' holds a {type(content).__name__}, not a state dict.")
    return content


def load_transfuse_checkpoint(
    model: TransFuse,
    checkpoint: str | os.PathLike | Mapping,
    authors_align_corners: bool = False,
    map_location: str | torch.device | None = "cpu",
) -> TransFuse:
    """Load weights into ``model`` from a checkpoint of this package or of the authors, strictly.

    Example (the authors' released ISIC 2017 TransFuse-S)::

        net = TransFuse(img_size=(192, 256), out_channels=1, variant="S")
        load_transfuse_checkpoint(net, "TransFuse-19_best.pth")   # net.align_corners is now False

    * The authors' format (keys ``resnet.*``, ``up_c*``, ``final_*``...) is converted with
      :func:`~transfuse_monai.networks.nets.convert_authors_state_dict` at ``model.img_size`` (the position embedding
      is resampled when the model's token grid differs from the checkpoint's, e.g. 192x256 -> 352x352), and
      ``model.align_corners`` is set to ``authors_align_corners``: the released ISIC checkpoint was trained with
      ``align_corners=False`` in the heads' final upsampling (the authors' current code uses ``True``), so ``False``
      reproduces it.
    * Otherwise the file must hold a state dict of :class:`TransFuse`, possibly wrapped as ``{"model": ...}`` or
      ``{"state_dict": ...}`` (a bundle's ``checkpoint_last.pt`` included) and with ``DataParallel``'s ``module.``
      prefixes; ``model.align_corners`` is left as it is.

    Args:
        model: the network to load into (``TransFuse``; the authors' format needs ``variant="S"``).
        checkpoint: path of a ``.pt``/``.pth`` file (read with ``weights_only=True``), or an already loaded dict.
        authors_align_corners: ``align_corners`` given to ``model`` when the checkpoint is in the authors' format.
        map_location: where the tensors are loaded (``"cpu"``; ``load_state_dict`` copies them to the model's device).

    Returns:
        ``model``, with the weights loaded (for chaining, e.g. in bundle configs).

    Raises:
        FileNotFoundError: ``checkpoint`` is a path that does not exist.
        ValueError: the file cannot be read as a state dict; the authors' checkpoint does not fit the model's
            variant or output channels; or the keys/shapes do not match the model (the message lists them).
    """
    if not isinstance(model, TransFuse):
        raise TypeError(f"model must be a transfuse_monai TransFuse network, got {type(model).__name__}.")
    source = "the given state dict"
    if isinstance(checkpoint, Mapping):
        content = checkpoint
    elif isinstance(checkpoint, (str, os.PathLike)):
        source = f"'{checkpoint}'"
        content = _read(Path(checkpoint), map_location)
    else:
        raise TypeError(f"checkpoint must be a path or a state dict, got {type(checkpoint).__name__}.")

    authors = is_authors_state_dict(content)
    if authors:
        if model.variant != "S" or model.cnn_name != "resnet34":
            raise ValueError(
                f"{source} is an authors' TransFuse_S checkpoint (ResNet-34 + DeiT-S); the model is variant "
                f"'{model.variant}' with CNN '{model.cnn_name}'. Build TransFuse(variant='S') to load it."
            )
        state = convert_authors_state_dict(content, img_size=model.img_size)
    else:
        state = _strip_wrappers(content)

    own = model.state_dict()
    head_key = [k for k in own if k.startswith("head_final.") and k.endswith("conv.weight")][-1]  # output conv
    head = state.get(head_key)
    if head is not None and hasattr(head, "shape") and head.shape[0] != model.out_channels:
        raise ValueError(
            f"{source} predicts {head.shape[0]} channel(s) but the model has out_channels={model.out_channels}."
        )
    # check everything first, so that a checkpoint that does not fit leaves the model untouched (load_state_dict
    # copies the matching tensors before it reports the others)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        details = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                details.append(f"{len(items)} {label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        hint = ""
        if any(k.startswith("transformer.pos_embed") for k in mismatched):
            hint = (
                " The position embedding was trained at another input size; build the network with that img_size "
                f"(the model has img_size={model.img_size})."
            )
        raise ValueError(
            f"{source} does not fit this TransFuse ({'authors' if authors else 'transfuse_monai'} format): "
            + "; ".join(details)
            + "."
            + hint
        )
    model.load_state_dict(state, strict=True)
    if authors:
        model.align_corners = bool(authors_align_corners)
    return model
