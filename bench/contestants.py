"""The three contestants, each built for one (model, batch, image size): a train step (forward,
backward, SGD with momentum and weight decay) and an eval forward, as zero-argument callables
that block until done, plus the train step's compile time.

- ``ours``: the registry model with the kernels the trainer picks (``impl="auto"``: the CPU
  kernels on a CPU) and the project's own train step (``train.step``) on a 1-device mesh;
  eval runs :func:`resnet_flax.fold_batch_norm`'s forward (with the oneDNN post-ops where
  the CPU kernels run).
- ``flax``: :mod:`bench.flax_example` under plain ``jax.jit``.
- ``torch``: torchvision's model, eager, channels_last, ``torch.optim.SGD``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import flax_example
from resnet_flax import create_model, fold_batch_norm
from resnet_flax.io.transforms import IMAGENET_MEAN as MEAN
from resnet_flax.io.transforms import IMAGENET_STD as STD
from resnet_flax.models.layers import compiler_options, resolve_impl
from resnet_flax.models.registry import init_variables
from train import distributed
from train.data.augment import normalize
from train.state import new_train_state
from train.step import make_train_step, train_metrics_zeros

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
NORMALIZE = partial(normalize, mean=MEAN, std=STD, dtype=jnp.float32)  # uint8 -> float32


@dataclass
class Built:
    train: Callable[[], Any]
    eval: Callable[[], Any]
    compile_s: float


def num_classes(name: str) -> int:
    """The class count of ``name`` as our registry builds it."""
    return create_model(name).num_classes


def _known(name: str, contestant: str, names: Iterable[str]) -> None:
    if name not in names:
        raise SystemExit(
            f"error: the {contestant} contestant has no {name}: it knows {', '.join(names)}."
        )


def sgd() -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay): decay added to the gradient first."""
    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))


def host_batch(batch: int, size: int, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, classes, batch, dtype=np.int32),
    }


def ours(
    name: str,
    batch: int,
    size: int,
    dtype: Any = jnp.float32,
    impl: str = "auto",
    **model_options: Any,
) -> Built:
    mesh = jax.make_mesh((1,), (distributed.BATCH,), devices=jax.devices()[:1])
    classes = num_classes(name)
    model = create_model(
        name, num_classes=classes, axis_name=distributed.BATCH, dtype=dtype, impl=impl,
        **model_options,
    )  # fmt: skip
    variables = init_variables(model, size)
    state = new_train_state(model, variables, sgd(), distributed.replicated(mesh))
    data = distributed.global_batch(mesh, host_batch(batch, size, classes))
    normalize_ = partial(normalize, mean=MEAN, std=STD, dtype=dtype)
    step = make_train_step(mesh, model, num_classes=classes, normalize=normalize_)
    metrics = distributed.replicate(mesh, train_metrics_zeros())
    start = time.perf_counter()
    compiled = step.lower(state, metrics, data, None).compile()
    compile_s = time.perf_counter() - start
    carry = [state, metrics]

    def train():
        carry[0], carry[1] = compiled(carry[0], carry[1], data, None)
        jax.block_until_ready(carry[1])

    images = data["image"]
    post_ops = resolve_impl(impl) == "cpu"
    predict = fold_batch_norm(model, variables, images.shape, post_ops=post_ops)
    to_input = jax.jit(normalize_, compiler_options=compiler_options(impl))
    return Built(train, lambda: jax.block_until_ready(predict(to_input(images))), compile_s)


def flax(name: str, batch: int, size: int, dtype: Any = jnp.float32) -> Built:
    _known(name, "plain-Flax", flax_example.MODELS)
    classes = num_classes(name)
    model = flax_example.MODELS[name](dtype=dtype)
    host = host_batch(batch, size, classes)
    images, labels = jnp.asarray(host["image"]), jnp.asarray(host["label"])
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False))(
        jax.random.key(0, impl="rbg")
    )
    tx = sgd()
    params = jax.tree.map(jnp.copy, variables["params"])
    state = (params, jax.tree.map(jnp.copy, variables["batch_stats"]), tx.init(params))

    @partial(jax.jit, donate_argnums=0)
    def step(state, images, labels):
        params, batch_stats, opt_state = state

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                NORMALIZE(images),
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    start = time.perf_counter()
    compiled = step.lower(state, images, labels).compile()
    compile_s = time.perf_counter() - start
    carry = [state]

    def train():
        carry[0], loss = compiled(carry[0], images, labels)
        jax.block_until_ready(loss)

    forward = jax.jit(lambda v, images: model.apply(v, NORMALIZE(images), train=False))
    return Built(train, lambda: jax.block_until_ready(forward(variables, images)), compile_s)


def torch(
    name: str, batch: int, size: int, device: str = "cpu", bf16: bool = False,
    compile: bool = False,
) -> Built:  # fmt: skip
    """``bf16``: autocast to bfloat16; ``compile``: ``torch.compile`` the train and eval
    functions (what a PyTorch user does on a GPU)."""
    import contextlib

    import torch as th
    import torchvision

    classes = num_classes(name)
    th.manual_seed(0)
    cifar = {f"resnet{6 * n + 2}": n for n in (3, 5, 7, 9, 18, 200)}
    if name == "resnet18_cifar":
        model = torchvision.models.resnet18(num_classes=classes)
        model.conv1 = th.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = th.nn.Identity()
    elif name in cifar:
        model = _torch_cifar_resnet(cifar[name], classes)
    else:
        _known(name, "PyTorch", [*torchvision.models.list_models(torchvision.models), *cifar])
        model = getattr(torchvision.models, name)(num_classes=classes)
    model = model.to(device=device, memory_format=th.channels_last)
    opt = th.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    host = host_batch(batch, size, classes)
    mean = th.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = th.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    images = th.from_numpy(host["image"]).to(device).permute(0, 3, 1, 2)  # channels_last
    labels = th.from_numpy(host["label"]).long().to(device)
    autocast = (
        partial(th.autocast, device_type=device.split(":")[0], dtype=th.bfloat16)
        if bf16
        else contextlib.nullcontext
    )
    forward = th.compile(model) if compile else model

    def sync():
        if device.startswith("cuda"):
            th.cuda.synchronize()

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            x = (images.float() - mean) / std
            loss = th.nn.functional.cross_entropy(forward(x), labels)
        loss.backward()
        opt.step()
        sync()

    def evaluate():
        model.eval()
        with th.inference_mode(), autocast():
            forward((images.float() - mean) / std)
        sync()

    return Built(train, evaluate, 0.0)


def _torch_cifar_resnet(n: int, classes: int) -> Any:
    """He et al.'s CIFAR ResNet (6n+2 layers, option-A shortcuts) in PyTorch: torchvision has
    none. The same layers as ``create_model(f"resnet{6n+2}")``."""
    import torch as th

    class Block(th.nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = th.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = th.nn.BatchNorm2d(cout)
            self.conv2 = th.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = th.nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x: Any) -> Any:
            out = self.bn2(self.conv2(th.relu(self.bn1(self.conv1(x)))))
            short = x[:, :, :: self.stride, :: self.stride]
            extra = (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2)
            return th.relu(out + th.nn.functional.pad(short, extra))

    layers: list[Any] = [th.nn.Conv2d(3, 16, 3, 1, 1, bias=False), th.nn.BatchNorm2d(16)]
    layers.append(th.nn.ReLU())
    cin = 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(n):
            layers.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
            cin = width
    layers += [th.nn.AdaptiveAvgPool2d(1), th.nn.Flatten(), th.nn.Linear(64, classes)]
    return th.nn.Sequential(*layers)


CONTESTANTS: dict[str, Callable[..., Built]] = {"ours": ours, "flax": flax, "torch": torch}
