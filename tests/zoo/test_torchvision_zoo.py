"""Every torchvision classification and segmentation model, pruned at ratio 0.5 and slimmed.

One harness (``check_pruned``) asserts the contract for each model: the slim model runs on
the example input and on a batch of two, gives outputs of the dense shapes, has strictly
fewer parameters, and, wherever the pruned channels only meet ops that commute with
masking (``rep.exact``), equals the dense model with those channels masked.

Models are built with ``weights=None`` and then given random norm statistics, affine
parameters and biases: at their default init every BatchNorm is the identity and every
bias zero, ConvNeXt scales its residual branches by 1e-6 and ViT's head is all zeros, so
slicing the wrong channels would go unnoticed by the oracle.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.verify import verify_equivalence

pytestmark = pytest.mark.zoo

CLASSIFICATION_MODELS = torchvision.models.list_models(module=torchvision.models)
SEGMENTATION_MODELS = torchvision.models.list_models(module=torchvision.models.segmentation)

DEFAULT_IMAGE_SIZE = 64
# Models that cannot run at DEFAULT_IMAGE_SIZE, with the smallest size they accept.
IMAGE_SIZE = {
    "inception_v3": 75,  # stem + two stride-2 reductions need at least 75x75
    "maxvit_t": 224,  # every stage's feature map must divide by the 7x7 partition
    "vit_*": 224,  # built for image_size=224; forward asserts the input size
}

# Measured on 2 idle CPU cores (pytest -n 2): over ~20 s or ~4 GB peak RSS per test
# (vit_h_14 97 s / 8.5 GB, regnet_y_128gf 53 s / 9 GB, vit_l_* 18-23 s / 4.7 GB), plus the
# next-biggest ones (regnet_*_32gf 6-11 s / 2.3-3 GB, convnext_large 13 s / 3.4 GB). Every
# other classification and segmentation model takes under 16 s.
SLOW_MODELS = {
    "convnext_large", "regnet_x_32gf", "regnet_y_128gf", "regnet_y_32gf", "vit_h_14",
    "vit_l_16", "vit_l_32",
}

# Models whose state_dict is compared before/after pruning: a plain residual CNN, one with
# squeeze-excitation and hardswish, one with channel shuffle.
UNTOUCHED_CHECK = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5"]
# torchvision warns unless these two are told which init to use
BUILD_KWARGS = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True}}


def image_size(name: str) -> int:
    for pattern, size in IMAGE_SIZE.items():
        if fnmatch.fnmatch(name, pattern):
            return size
    return DEFAULT_IMAGE_SIZE


def randomize_affine_and_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give norm layers non-trivial statistics/affine parameters and biases random values,
    so that channel-sliced copies of them differ channel by channel."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm,
                                          nn.GroupNorm))
            for pname, tensor in [*module.named_parameters(recurse=False),
                                  *module.named_buffers(recurse=False)]:
                if not tensor.is_floating_point():
                    continue
                # ConvNeXt's layer_scale starts at 1e-6, hiding every residual branch
                if pname in ("running_var", "layer_scale") or (is_norm and pname == "weight"):
                    uniform(tensor, 0.5, 1.5)
                elif pname in ("running_mean", "bias"):
                    uniform(tensor, -0.2, 0.2)
                elif tensor.dim() >= 2 and not tensor.any():
                    # ViT's classification head starts at zero: the output would be its bias
                    fan_in = tensor[0].numel()
                    uniform(tensor, -fan_in ** -0.5, fan_in ** -0.5)
    return model


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **BUILD_KWARGS.get(name, {}))
    return randomize_affine_and_statistics(model).eval()


def build_segmentation(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    return randomize_affine_and_statistics(model).eval()


def output_shapes(output) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a model output (tensor, tuple or dict), in a fixed order."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, dict):
        return [s for key in sorted(output) for s in output_shapes(output[key])]
    if isinstance(output, (tuple, list)):
        return [s for value in output for s in output_shapes(value)]
    return []


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# L1 at ratio 0.5, and the paper's setting (Synflow at ratio 0.85, min_ratio 0.15)
SETTINGS = [pytest.param("l1", 0.5, id="l1-0.5"), pytest.param("synflow", 0.85, id="synflow-0.85")]


def check_pruned(model: nn.Module, size: int, scorer: str = "l1", ratio: float = 0.5
                 ) -> fxprune.PruneResult:
    """Prune ``model`` and assert the slim model's contract; returns the result."""
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 3, size, size, generator=gen)
    x2 = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        dense_shapes = {1: output_shapes(model(x1)), 2: output_shapes(model(x2))}

    result = fxprune.prune(model, x1, ratio=ratio, min_ratio=0.15, scorer=scorer)
    slim = result.model
    assert slim is not model
    assert result.params_after < result.params_before
    assert count_params(slim) < count_params(model)
    assert result.macs_after < result.macs_before

    with torch.no_grad():
        for batch, x in ((1, x1), (2, x2)):
            assert output_shapes(slim(x)) == dense_shapes[batch], f"batch {batch}"

    # passed: numerically equal to the masked dense model where report.exact, else equal
    # shapes; the batch of two also catches a batch size baked into the slim graph
    report = verify_equivalence(result.graph, result.keep, slim, (x2,))
    assert report.passed, report.detail
    return result


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_MODELS else [])
    for name in CLASSIFICATION_MODELS
])
@pytest.mark.parametrize("scorer,ratio", SETTINGS)
def test_classification_model_prunes_to_equivalent_slim_model(name: str, scorer: str,
                                                              ratio: float) -> None:
    check_pruned(build(name), image_size(name), scorer, ratio)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_MODELS else [])
    for name in SEGMENTATION_MODELS
])
@pytest.mark.parametrize("scorer,ratio", SETTINGS)
def test_segmentation_model_prunes_to_equivalent_slim_model(name: str, scorer: str,
                                                            ratio: float) -> None:
    check_pruned(build_segmentation(name), DEFAULT_IMAGE_SIZE, scorer, ratio)


@pytest.mark.parametrize("name", UNTOUCHED_CHECK)
def test_prune_leaves_the_given_model_unmodified(name: str) -> None:
    model = build(name)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    modules_before = [(path, type(module)) for path, module in model.named_modules()]
    size = image_size(name)
    fxprune.prune(model, torch.randn(1, 3, size, size), ratio=0.5, min_ratio=0.15, scorer="l1")
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert [(path, type(module)) for path, module in model.named_modules()] == modules_before
    assert not model.training
