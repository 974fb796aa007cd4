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
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .convert import strip_wrappers, convert_authors_state_dict
from .transfuse import POS_EMBED_KEY, TransFuse

__all__ = ["is_authors_state_dict", "load_transfuse_checkpoint", "resample_pos_embed_in_state_dict"]

# module names that exist only in the authors' TransFuse_S (ours: cnn., fusion*, decoder*, head_*); ``transformer.``
# is shared by both, so it does not tell the formats apart
_AUTHORS_MARKERS = ("resnet.", "up_c", "up1.", "up2.", "final_x.", "final_1.", "final_2.")


def is_authors_state_dict(state_dict: Mapping) -> bool:
    """Whether ``state_dict`` (wrappers ``{"state_dict": ...}``/``{"model": ...}`` and ``module.`` prefixes accepted)
    has the authors' ``TransFuse_S`` key names rather than this package's."""
    return any(str(k).startswith(_AUTHORS_MARKERS) for k in strip_wrappers(state_dict))


def _resample_state_pos_embed(
    state: dict[str, torch.Tensor], model: TransFuse, source_grid: Sequence[int] | None, source: str
) -> dict[str, torch.Tensor]:
    if POS_EMBED_KEY not in state:
        return state
    out = dict(state)
    out[POS_EMBED_KEY] = model.fit_pos_embed(state[POS_EMBED_KEY], source_grid, source)
    return out


def resample_pos_embed_in_state_dict(
    state_dict: Mapping, model: TransFuse, source_grid: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """A TransFuse state dict whose transformer position embedding is resampled to ``model``'s token grid.

    A checkpoint trained at one input size (e.g. 96x96: a 6x6 grid, ``pos_embed`` ``(1, 36, 384)``) then loads
    strictly into a network built for another (352x352: ``(1, 484, 384)``). The embedding is resampled as the network
    itself does for inputs of another size (:func:`~transfuse_monai.networks.blocks.backbones.resample_pos_embed`,
    timm's bicubic resampling), so the loaded network computes what the original one computes at the new size.
    Every other entry is returned as it is (the same tensors).

    Example::

        net = TransFuse(img_size=(352, 352))
        net.load_state_dict(resample_pos_embed_in_state_dict(torch.load("model_96.pt"), net))

    Args:
        state_dict: a state dict of :class:`TransFuse` (``{"model": ...}``/``{"state_dict": ...}`` wrappers and
            ``module.`` prefixes accepted).
        model: the network the state dict is meant for; its ``img_size`` gives the target grid.
        source_grid: token grid ``(h, w)`` of the checkpoint (its training ``img_size // 16``). Inferred when
            ``None``: a square token count is a square grid, otherwise the model's aspect ratio is assumed; a count
            that fits both (e.g. 576 tokens: 24x24 or 18x32 for a 9x16 model) or neither must be given.

    Returns:
        a new plain dict (unwrapped, without ``module.`` prefixes); unchanged entries when the grids already match,
        the embedding is absent, or its width differs from the model's (strict loading reports the latter).

    Raises:
        TypeError: ``model`` is not a :class:`TransFuse` or ``state_dict`` not a mapping.
        ValueError: ``source_grid`` does not hold the embedding's tokens, or the grid cannot be inferred.
    """
    if not isinstance(model, TransFuse):
        raise TypeError(f"model must be a transfuse_monai TransFuse network, got {type(model).__name__}.")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}.")
    return _resample_state_pos_embed(strip_wrappers(state_dict), model, source_grid, "the state dict")


def _read(path: Path, map_location) -> Mapping:
    if not path.is_file():
        raise FileNotFoundError(f"TransFuse checkpoint not found: '{path}'.")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():
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
    source_grid: Sequence[int] | None = None,
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
    * In both formats a checkpoint trained at another input size loads: its position embedding is resampled to the
      model's token grid (:meth:`TransFuse.fit_pos_embed`), every other key is checked strictly. A plain
      ``model.load_state_dict`` does the same (TransFuse resamples in a load-state-dict pre-hook); this function
      adds the authors' format, wrappers, an explicit ``source_grid`` and a check that leaves the model untouched
      when the checkpoint does not fit.

    Args:
        model: the network to load into (``TransFuse``; the authors' format needs ``variant="S"``).
        checkpoint: path of a ``.pt``/``.pth`` file (read with ``weights_only=True``), or an already loaded dict.
        authors_align_corners: ``align_corners`` given to ``model`` when the checkpoint is in the authors' format.
        map_location: where the tensors are loaded (``"cpu"``; ``load_state_dict`` copies them to the model's device).
        source_grid: token grid ``(h, w)`` of the checkpoint's position embedding (its training ``img_size // 16``),
            needed only when it cannot be inferred (see :func:`resample_pos_embed_in_state_dict`; the authors' 192
            and 768 tokens are known to be 12x16 and 24x32).

    Returns:
        ``model``, with the weights loaded (for chaining, e.g. in bundle configs).

    Raises:
        FileNotFoundError: ``checkpoint`` is a path that does not exist.
        ValueError: the file cannot be read as a state dict; the authors' checkpoint does not fit the model's
            variant or output channels; the position embedding's grid cannot be inferred; or the keys/shapes do not
            match the model (the message lists them).
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
        state = convert_authors_state_dict(content, img_size=model.img_size, source_grid=source_grid)
    else:
        state = _resample_state_pos_embed(strip_wrappers(content), model, source_grid, source)

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
        branches = {k.split(".")[0] for k in missing + unexpected} & {"cnn", "cnn2", "transformer", "fusion0"}
        hint = (
            f" Its branches differ from this network's ({', '.join(model.branches)}, {model.composition}): build "
            "the network with the checkpoint's ablation (the bundles' --ablation E.1 ... E.6)."
            if branches else ""
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
