"""The data and the networks a trial trains.

The model's own initialisation is used everywhere: every network is REBUILT by its
builder (``fxprune:NAME``, ``torchvision:NAME``, ``build_model()`` of a model file) under
``torch.manual_seed(seed)``, so whatever the constructor does (Kaiming fan-out for the
built-in ResNets, a user's ``init_weights``) is what a trial starts from. The proxy is the
base network pruned ONCE, at its initialisation with ``config.seed`` (so every worker and
machine prunes the same channels); a proxy trial then rebuilds the base with the trial's
seed and applies that same plan (``fxprune.apply_plan``): the slim network starts from
the model's own init, drawn anew. Rule for user models: put the initialisation in the
constructor (or in ``build_model()``); it must draw from torch's global RNG.

Re-deriving the init for the narrower widths (``proxy_init="fan-in"``, the default)
    The base network's init is scaled for the base widths: a slim conv that keeps 3 of 16
    input channels gets weights drawn for a fan-in of 144 where it has 27, so each layer's
    pre-activation variance (and, under BatchNorm, each filter's norm, hence the effective
    learning rate ``lr / |w|**2``) is not the base network's: the proxy would rank learning
    rates for another network. So every slim weight with a fan-in (conv, linear: ``dim >=
    2``) and its bias are multiplied by ``sqrt(fan_in_base / fan_in_slim)``: the model's
    own init, with its distribution and gain, re-derived by the fan-in rule for the slim
    width (Kaiming fan-in, PyTorch's default uniform bounds and LeCun all scale as
    ``1 / sqrt(fan_in)``). ``proxy_init="model"`` keeps the base widths' scale.

Re-deriving the learning rate for the narrower widths (``proxy_lr="fan-in"``; the default
``"same"`` is the paper's method)
    An SGD step changes a layer's pre-activation by about ``lr * fan_in * (input scale *
    gradient scale)``: the update is a sum over the layer's inputs, all pushing the same
    way. So in a network with the usual parametrisation the best learning rate falls as the
    layers widen, and a proxy with 3-6x smaller fan-ins prefers a 3-6x larger one (measured:
    ResNet-20's TPE proxy winners sat at lr 0.11-0.19 where the base network's best were
    0.015-0.085, and those winners cost about a point of test accuracy). With "fan-in" a
    proxy trial trains every weight with a fan-in (conv, linear) at ``lr * fan_in_base /
    fan_in_slim`` (``NetworkFactory.lr_scales``), so each layer moves its pre-activations as
    the base layer would at ``lr``, and with ``weight_decay`` divided by the same factor, so
    its weights still shrink by ``lr * weight_decay`` per step as the base layer's do (a
    per-weight decay needs no width correction); norms and biases keep ``lr``. The trial's
    suggested ``lr`` and ``weight_decay`` are what the winner hands to the base network.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from hpo.config import HpoConfig
from hpo.report import ProxyInfo

if TYPE_CHECKING:
    from torch import nn

    from hpo.data import Dataset

# Bounds the proxy's step-time measurement (``proxy_step_time``) to a few seconds.
STEP_TIMING_SECONDS = {"warmup": 2, "min_runs": 5, "min_seconds": 0.5, "max_seconds": 5.0}

_DATA_CACHE: dict[tuple[Any, ...], Dataset] = {}


def load_data(config: HpoConfig) -> Dataset:
    """The run's three-way split dataset, cached per process (a compare loads it once)."""
    from hpo.data import load_dataset

    key = (config.data, config.data_dir, config.seed, config.image_size, config.train_size,
           config.eval_size)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(config.data, config.data_dir, seed=config.seed,
                                        image_size=config.image_size, holdout=True,
                                        train_size=config.train_size,
                                        eval_size=config.eval_size)
    return _DATA_CACHE[key]


def build_model(config: HpoConfig, data: Dataset, seed: int) -> tuple[nn.Module, Any]:
    """The base network with its own initialisation drawn from ``seed``, and example inputs;
    the caller's RNG stream is untouched."""
    from fxprune.loading import load_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_model(config.model, input_shape=data.input_shape,
                          num_classes=data.num_classes)


class NetworkFactory:
    """Builds the network a trial trains: the base network, or the pruned proxy, each time
    with the model's own initialisation drawn from the trial's seed."""

    def __init__(self, config: HpoConfig, data: Dataset, role: str) -> None:
        self.config, self.data, self.role = config, data, role
        # The network pruned at initialisation: seeded, so every worker prunes the same.
        self.base, self.example_inputs = build_model(config, data, config.seed)
        self.template: nn.Module = self.base
        self.plan: Any = None
        # Per-parameter learning-rate multipliers for training this role's networks
        # (``hpo.train.train_model``); empty: every parameter at the trial's lr.
        self.lr_scales: dict[str, float] = {}
        self.proxy_info: ProxyInfo | None = None
        if role == "proxy":
            import fxprune

            start = time.perf_counter()
            result = fxprune.prune(self.base, self.example_inputs, ratio=config.ratio,
                                   min_ratio=config.min_ratio, scorer=config.scorer)
            self.template, self.plan = result.model, result.plan
            self.proxy_info = ProxyInfo(  # flops_* are the report's public key names (MACs)
                params_before=int(result.params_before), params_after=int(result.params_after),
                flops_before=int(result.macs_before), flops_after=int(result.macs_after),
                ratio=config.ratio, min_ratio=config.min_ratio, scorer=config.scorer,
                prune_seconds=time.perf_counter() - start,
            )
            if config.proxy_lr == "fan-in":
                self.lr_scales = fan_in_lr_scales(self.template, self.base)

    def make(self, seed: int) -> nn.Module:
        """A fresh network for one training run (see the module docstring)."""
        fresh, inputs = build_model(self.config, self.data, seed)
        if self.plan is None:
            return fresh
        import fxprune

        slim = fxprune.apply_plan(fresh, self.plan, inputs)
        if self.config.proxy_init == "fan-in":
            rescale_to_fan_in(slim, fresh)
        return slim

    def warm_up(self) -> None:
        """One forward and backward pass of each network kind on a training batch, before
        any clock starts: first-call costs (allocator, kernels, lazy imports) are charged
        to neither arm."""
        from fxprune.train.loop import default_device

        device = default_device()  # where trials train: CUDA's first-call costs are seconds
        network = self.make(self.config.seed).to(device)
        network.train()
        images, labels = self.data.batch("train", torch.arange(min(8, len(self.data.train))))
        loss = torch.nn.functional.cross_entropy(network(images.to(device)), labels.to(device))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def fan_in(weight: torch.Tensor) -> int:
    """Inputs feeding one output unit: ``in_channels / groups * kernel`` (PyTorch's rule)."""
    return int(weight.shape[1] * weight[0][0].numel())


@torch.no_grad()
def rescale_to_fan_in(slim: nn.Module, base: nn.Module) -> dict[str, float]:
    """Scale, in place, each weight of ``slim`` with a fan-in (and its bias) by
    ``sqrt(fan_in_base / fan_in_slim)``, the same-named module of ``base`` (the network it
    was sliced from) giving the base fan-in (module docstring). Returns the factor applied
    per module (1.0 where the fan-in is unchanged)."""
    factors: dict[str, float] = {}
    for name, module, weight, source_weight in _weights_with_fan_in(slim, base):
        factor = (fan_in(source_weight) / fan_in(weight)) ** 0.5
        factors[name] = factor
        if factor != 1.0:
            weight.mul_(factor)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.mul_(factor)
    return factors


def fan_in_lr_scales(slim: nn.Module, base: nn.Module) -> dict[str, float]:
    """``{"<module>.weight": fan_in_base / fan_in_slim}`` for every weight of ``slim`` with a
    fan-in (``dim >= 2``) whose fan-in is smaller than its same-named base module's (module
    docstring, ``proxy_lr="fan-in"``)."""
    return {f"{name}.weight" if name else "weight": fan_in(source) / fan_in(weight)
            for name, _, weight, source in _weights_with_fan_in(slim, base)
            if fan_in(source) != fan_in(weight)}


def _weights_with_fan_in(slim: nn.Module, base: nn.Module) -> Iterator[
        tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """``(name, slim module, its weight, the base weight)`` for every module of ``slim``
    whose weight has a fan-in (``dim >= 2``), next to the same-named module of ``base``."""
    base_modules = dict(base.named_modules())
    for name, module in slim.named_modules():
        weight, source = getattr(module, "weight", None), base_modules.get(name)
        source_weight = getattr(source, "weight", None)
        if (isinstance(weight, torch.Tensor) and isinstance(source_weight, torch.Tensor)
                and weight.dim() >= 2 and source_weight.dim() == weight.dim()):
            yield name, module, weight, source_weight


def proxy_step_time(config: HpoConfig, data: Dataset) -> dict[str, Any]:
    """The proxy's training step (forward + backward) against the base network's, timed
    interleaved on the training device at the space's smallest batch size, bounded to a
    few seconds: ``fxprune.deploy.compare_step_times(...).to_dict()`` (speedup, its 95%
    interval, verdict). What the MACs reduction buys in wall time, measured."""
    from fxprune.deploy import Timing, compare_step_times
    from fxprune.train.loop import default_device

    factory = network_factory(config, data, "proxy")
    bound = config.space.batch_size
    batch = min(int(bound[0] if isinstance(bound, tuple) else bound), len(data.train))
    images, _ = data.batch("train", torch.arange(batch))
    comparison = compare_step_times(factory.base, factory.template, (images,),
                                    device=default_device(), timing=Timing(**STEP_TIMING_SECONDS))
    return comparison.to_dict()


_FACTORIES: dict[tuple[str, str], NetworkFactory] = {}


def network_factory(config: HpoConfig, data: Dataset, role: str) -> NetworkFactory:
    """The factory of ``role``, built once per process (pruning the proxy takes seconds)."""
    key = (role, digest_of(config))
    if key not in _FACTORIES:
        _FACTORIES[key] = NetworkFactory(config, data, role)
    return _FACTORIES[key]


def digest_of(config: HpoConfig) -> str:
    from hpo.config import digest

    return digest(config.fingerprint("proxy"))


__all__ = ["NetworkFactory", "build_model", "fan_in", "fan_in_lr_scales", "load_data",
           "network_factory", "proxy_step_time", "rescale_to_fan_in"]
