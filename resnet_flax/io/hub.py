"""Weights by name: find a published entry (:mod:`resnet_flax.io.weights`), fetch its file once
and load it.

``load_pretrained("resnet50.tv2_in1k")``, or a model name and the weights
(``load_pretrained("resnet50", "IMAGENET1K_V2")``: a tag's suffix, torchvision's enum name,
``"ResNet50_Weights.IMAGENET1K_V2"`` or ``"DEFAULT"``), returns ``(model, variables)``.

torchvision's files go to ``$TORCH_HOME/hub/checkpoints`` (default
``~/.cache/torch/hub/checkpoints``), where torch keeps them, so a file torch downloaded is
reused; a download is checked against the sha256 prefix in its file name, as torchvision
checks (:func:`resnet_flax.io.download.download`). ``RESNET_FLAX_WEIGHTS_URL`` replaces the
base address ``https://download.pytorch.org/models/`` (mirrors, tests). timm's are fetched as
``timm/TAG/model.safetensors`` with ``huggingface_hub``, as timm fetches them: its cache,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT``.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import warnings
from pathlib import Path
from typing import Any

import flax.linen as nn

from resnet_flax.io import transformers_resnet
from resnet_flax.io.convert import load_torchvision
from resnet_flax.io.download import ChecksumError, WeightsError, download, hub_file
from resnet_flax.io.pth import CheckpointError
from resnet_flax.io.weights import BASE_URL_ENV, WEIGHTS, Weights, by_tag, weights_for
from resnet_flax.models import registry
from resnet_flax.models.checks import did_you_mean

_HASH = re.compile(r"-([a-f0-9]+)\.")  # torchvision's: the sha256 prefix in a file name


def list_pretrained() -> list[str]:
    """Every weights tag, torchvision's then timm's, in the table's order."""
    return [w.tag for w in WEIGHTS]


def resolve(weights: str, model: str | None = None) -> Weights:
    """The entry a tag names: ``resnet50.tv2_in1k``, ``resnet50.a1_in1k``; with ``model``,
    a tag's suffix too (``tv2_in1k``, ``a1_in1k``) or torchvision's enum name
    (``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``). ``DEFAULT`` is torchvision's
    newest for its models (as ``weights="DEFAULT"`` in torchvision), else timm's first."""
    found = by_tag(weights) or (by_tag(f"{model}.{weights}") if model else None)
    if found is not None:
        if model is not None and found.model != model:
            raise WeightsError(f"weights {weights!r} are {found.model}'s, not {model}'s.")
        return found
    if model is None:
        raise WeightsError(
            f"unknown weights tag {weights!r}.{did_you_mean(weights, list_pretrained())} Tags "
            f"look like 'resnet50.tv2_in1k' or 'resnet50.a1_in1k' (resnet_flax.list_pretrained())."
        )
    enum = weights.rsplit(".", 1)[-1]
    entries = weights_for(model)
    if not entries:
        raise WeightsError(f"neither torchvision nor timm publishes weights for {model!r}.")
    if enum == "DEFAULT":
        newest = [w for w in entries if w.source == "torchvision" and not w.features_only]
        return newest[-1] if newest else entries[0]
    for entry in entries:
        if entry.enum == enum:
            return entry
    valid = [w.enum for w in entries if w.enum] + [w.suffix for w in entries]
    raise WeightsError(
        f"unknown weights {weights!r} for {model}.{did_you_mean(enum, valid)} "
        f"Valid: {', '.join(valid)}, DEFAULT."
    )


def cache_dir() -> Path:
    """torch hub's checkpoint folder: ``$TORCH_HOME/hub/checkpoints``, where ``TORCH_HOME``
    defaults to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``, as torch decides."""
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    home = os.environ.get("TORCH_HOME", os.path.join(xdg, "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def fetch(
    entry: Weights, *, progress: bool = True, timeout: float = 60.0, refresh: bool = False
) -> Path:
    """The local file of ``entry``: the cached one, else (or with ``refresh``) downloaded,
    verified and cached."""
    if entry.source == "timm":
        return _from_hugging_face(entry, refresh)
    path = cache_dir() / entry.file
    if path.is_file() and not refresh:
        return path
    try:
        url = entry.url
    except ValueError as error:  # a malformed mirror address
        raise WeightsError(str(error)) from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as error:
        raise WeightsError(
            f"cannot write to the weights cache {path.parent} ({error.strerror or error}): set "
            f"TORCH_HOME to a writable folder."
        ) from None
    expected = _HASH.search(entry.file)
    try:
        download(
            url,
            path,
            algorithm="sha256",
            expected=expected.group(1) if expected else "",
            progress=progress,
            timeout=timeout,
        )
    except ChecksumError as error:
        raise WeightsError(
            f"{url}: the download's sha256 is {(error.actual or '')[:16]}..., but its file name "
            f"says it starts with {expected.group(1)}: refused, nothing kept. Try again, or check "
            f"{BASE_URL_ENV} if a mirror served it."
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise WeightsError(
            f"cannot download {url} ({reason}). Offline, put the file at {path} (for example "
            f"fetched on another machine from {url}), or set {BASE_URL_ENV} to a mirror."
        ) from None
    return path


def _from_hugging_face(entry: Weights, refresh: bool = False) -> Path:
    """``timm/TAG/model.safetensors`` through huggingface_hub (its cache, offline mode and
    endpoint, as timm)."""
    return hub_file(entry.repository, entry.file, refresh=refresh, what=f"{entry.tag} is timm's")


def load_pretrained(
    name_or_tag: str, weights: str | None = None, *, use_ema: bool = True, **options: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, variables)`` with published weights, fetched if need be: a tag
    (``"resnet50.a1_in1k"``), or a model name and ``weights`` (a tag's suffix, torchvision's
    enum name such as ``"IMAGENET1K_V2"``, or ``"DEFAULT"``, the default). ``options`` go to
    the model (``num_classes=10`` re-initialises the head, as ``load_torchvision``;
    ``impl="cpu"`` for the CPU kernels). A cached file that cannot be read (a download cut
    short before the cache was checked, a damaged disk) is downloaded again, once.

    transformers' ResNets load too: a Hugging Face hub repository id
    (``"microsoft/resnet-50"``) or a folder written by ``save_pretrained``; their labels come
    with :func:`resnet_flax.io.transformers_resnet.read_labels`."""
    if weights is None and transformers_resnet.is_transformers_source(name_or_tag):
        return transformers_resnet.load_transformers(name_or_tag, **options)
    if weights is None and "." in name_or_tag:
        entry = resolve(name_or_tag)
    else:
        registry.model_options(name_or_tag)  # an unknown name fails here, suggesting close ones
        entry = resolve(weights or "DEFAULT", name_or_tag)
    # bad options fail before a download
    registry.create_model(entry.model, **{k: v for k, v in options.items() if k != "seed"})
    path = fetch(entry)
    try:
        return load_torchvision(entry.model, path, use_ema=use_ema, **options)
    except CheckpointError as error:
        warnings.warn(f"{error}: downloading {entry.tag} again.", stacklevel=2)
    path = fetch(entry, refresh=True)
    return load_torchvision(entry.model, path, use_ema=use_ema, **options)
