"""Weights by name: torchvision's published files, fetched once into torch hub's cache, and
timm's, from the Hugging Face hub into its cache.

A tag is timm's name for the weights, ``MODEL.tv_in1k`` (torchvision's ``IMAGENET1K_V1``),
``MODEL.tv2_in1k`` (``IMAGENET1K_V2``) or ``vgg16.tv_features``; torchvision's enum names are
accepted too (``weights="IMAGENET1K_V2"`` next to a model name, ``"ResNet50_Weights.
IMAGENET1K_V2"``, ``"DEFAULT"``). Files go to ``$TORCH_HOME/hub/checkpoints`` (default
``~/.cache/torch/hub/checkpoints``), where torch keeps them, so a file torch downloaded is
reused. A download goes to ``FILE.part``, is checked against the sha256 prefix in its file name
(as torchvision checks), and only then renamed. ``RESNET_FLAX_WEIGHTS_URL`` replaces the base
address ``https://download.pytorch.org/models/`` (mirrors, tests).

timm's tags (``resnet50d.a1_in1k``; with a timm model name, its suffix ``a1_in1k`` or
``DEFAULT``, timm's first) are fetched as ``timm/TAG/model.safetensors`` with
``huggingface_hub``, as timm fetches them: its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import flax.linen as nn
from tqdm import tqdm

from resnet_flax.io.convert import load_torchvision
from resnet_flax.io.weights import TIMM_WEIGHTS, URL_BASE, WEIGHTS, TimmWeights, WeightsInfo
from resnet_flax.models import registry
from resnet_flax.models.checks import did_you_mean

BASE_URL_ENV = "RESNET_FLAX_WEIGHTS_URL"
_SUFFIXES = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}
_SUFFIXES["IMAGENET1K_FEATURES"] = "tv_features"
_HASH = re.compile(r"-([a-f0-9]+)\.")  # torchvision's: the sha256 prefix in a file name
_CHUNK = 1 << 20


class WeightsError(ValueError):
    """Unknown weights, or weights that cannot be fetched or verified; says what to do."""


def tag_of(info: WeightsInfo) -> str:
    """The tag of a weights entry: ``resnet50.tv2_in1k``."""
    return f"{info.model}.{_SUFFIXES[info.tag]}"


_BY_TAG = {tag_of(w): w for w in WEIGHTS}
_TIMM_BY_TAG = {w.tag: w for w in TIMM_WEIGHTS}
Entry = WeightsInfo | TimmWeights


def list_pretrained() -> list[str]:
    """Every weights tag, torchvision's then timm's, in the tables' order."""
    return [*_BY_TAG, *_TIMM_BY_TAG]


def resolve(weights: str, model: str | None = None) -> Entry:
    """The entry a tag names: ``resnet50.tv2_in1k``, ``resnet50.a1_in1k``; with ``model``,
    a tag's suffix too (``tv2_in1k``, ``a1_in1k``) or torchvision's enum name
    (``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``). ``DEFAULT`` is torchvision's
    newest for its models (as ``weights="DEFAULT"`` in torchvision), else timm's first."""
    found = _BY_TAG.get(weights) or _TIMM_BY_TAG.get(weights)
    if found is None and model is not None:
        found = _BY_TAG.get(f"{model}.{weights}") or _TIMM_BY_TAG.get(f"{model}.{weights}")
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
    torchvision = [w for w in WEIGHTS if w.model == model]
    timm = [w for w in TIMM_WEIGHTS if w.model == model]
    if not torchvision and not timm:
        raise WeightsError(f"neither torchvision nor timm publishes weights for {model!r}.")
    if enum == "DEFAULT":
        newest = [w for w in torchvision if not w.features_only]
        return newest[-1] if newest else timm[0]
    for entry in torchvision:
        if entry.tag == enum:
            return entry
    suffixes = [tag_of(w) for w in torchvision] + [w.tag for w in timm]
    valid = [w.tag for w in torchvision] + [tag.split(".", 1)[1] for tag in suffixes]
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


def url_of(info: WeightsInfo) -> str:
    base = os.environ.get(BASE_URL_ENV) or URL_BASE
    return base.rstrip("/") + "/" + info.file_name


def fetch(info: Entry, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """The local file of ``info``: the cached one, else downloaded, verified and cached."""
    if isinstance(info, TimmWeights):
        return _from_hugging_face(info)
    path = cache_dir() / info.file_name
    if path.is_file():
        return path
    url = url_of(info)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.touch()  # a cache that cannot be written fails here, before the download
    except OSError as error:
        raise WeightsError(
            f"cannot write to the weights cache {path.parent} ({error.strerror or error}): set "
            f"TORCH_HOME to a writable folder."
        ) from None
    try:
        digest = _download(url, partial, progress, timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise WeightsError(
            f"cannot download {url} ({reason}). Offline, put the file at {path} (for example "
            f"fetched on another machine from {url}), or set {BASE_URL_ENV} to a mirror."
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    expected = _HASH.search(info.file_name)
    if expected and not digest.startswith(expected.group(1)):
        partial.unlink(missing_ok=True)
        raise WeightsError(
            f"{url}: the download's sha256 is {digest[:16]}..., but its file name says it "
            f"starts with {expected.group(1)}: refused, nothing kept. Try again, or check "
            f"{BASE_URL_ENV} if a mirror served it."
        )
    partial.replace(path)
    return path


def _from_hugging_face(entry: TimmWeights) -> Path:
    """``timm/TAG/model.safetensors`` through huggingface_hub (its cache, offline mode and
    endpoint, as timm)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(
            f"{entry.tag} is timm's, on the Hugging Face hub: pip install huggingface_hub."
        ) from None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        return Path(hf_hub_download(entry.hf_hub_id, "model.safetensors", endpoint=endpoint))
    except Exception as error:  # huggingface_hub's HTTP, offline and cache errors
        raise WeightsError(
            f"cannot fetch {entry.hf_hub_id}/model.safetensors from the Hugging Face hub "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            f"Offline, HF_HUB_OFFLINE=1 uses huggingface_hub's cache; HF_ENDPOINT names a mirror."
        ) from None


def _download(url: str, partial: Path, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``partial``; returns the sha256 hex digest. A short read (the
    connection dropped) is an OSError."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        name = partial.name.removesuffix(".part")
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise OSError(f"the download stopped at {received} of {total} bytes")
    return digest.hexdigest()


def load_pretrained(tag: str, **options: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, variables)`` of the weights a tag names (fetched if need be); ``options`` go
    to the model (``num_classes=10`` re-initialises the head, as ``load_torchvision``)."""
    info = resolve(tag)
    return load_torchvision(info.model, fetch(info), **options)


def create_model(
    name: str, weights: str | None = None, **options: Any
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """:func:`resnet_flax.models.registry.create_model`; with ``weights`` (a tag or
    torchvision's enum name, e.g. ``"IMAGENET1K_V2"``), ``(model, variables)`` loaded from them."""
    if weights is None:
        return registry.create_model(name, **options)
    registry.model_options(name)  # an unknown name fails here, suggesting close ones
    info = resolve(weights, name)
    return load_torchvision(info.model, fetch(info), **options)
