"""The proxy's initialisation is re-derived for its narrower widths (fan-in rule)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import fxprune
from hpo.network import fan_in, load_data, network_factory, rescale_to_fan_in

KAIMING_FAN_IN = textwrap.dedent('''
    from torch import nn


    class Wide(nn.Module):
        """Wide enough that each layer's weight std is estimated to within a few percent."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            )
            self.fc = nn.Linear(128, num_classes)
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(module.bias)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))


    def build_model(num_classes=10):
        return Wide(num_classes)
''')


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("proxy_init", ["fan-in", "model"])
def test_proxy_weights_follow_the_fan_in_rule_of_their_own_width(make_config, tmp_path,
                                                                  proxy_init):
    path = tmp_path / "wide.py"
    path.write_text(KAIMING_FAN_IN)
    config = make_config(model=str(path), ratio=0.6, min_ratio=0.2, proxy_init=proxy_init)
    data = load_data(config)
    proxy = network_factory(config, data, "proxy").make(seed=7)
    base = network_factory(config, data, "base").make(seed=7)
    narrowed = 0
    for name, weight in _weights(proxy).items():
        base_weight = _weights(base)[name]
        if fan_in(weight) == fan_in(base_weight):
            continue
        narrowed += 1
        assert fan_in(weight) < 0.8 * fan_in(base_weight)
        # Kaiming fan-in: std = sqrt(2 / fan_in), for the width the layer HAS in "fan-in"
        # mode, for the base width in "model" mode (the base init, sliced, unscaled).
        wanted = fan_in(weight) if proxy_init == "fan-in" else fan_in(base_weight)
        tolerance = 4 / (2 * weight.numel()) ** 0.5  # 4 standard errors of a sample std
        assert weight.std().item() == pytest.approx((2 / wanted) ** 0.5, rel=tolerance), name
    assert narrowed >= 3  # both hidden convs and the classifier lost inputs


def test_rescaling_keeps_each_filter_norm_of_the_base_network():
    """Under BatchNorm the effective learning rate of a filter is lr / |w|**2: with the
    fan-in rule a slim ResNet filter has the base's expected norm, without it a smaller one."""
    from fxprune.models.cifar_resnet import resnet20

    torch.manual_seed(0)
    base = resnet20(num_classes=10)
    slim = fxprune.prune(base, torch.randn(2, 3, 32, 32), ratio=0.85, min_ratio=0.15).model
    factors = rescale_to_fan_in(slim, base)
    assert factors["conv1"] == 1.0  # its three input channels are all kept
    assert factors["layer1.0.conv1"] > 2.0  # 16 -> 3 input channels: sqrt(144 / 27)
    slim_weights, base_weights = _weights(slim), _weights(base)
    for name in ("layer2.1.conv1", "layer3.1.conv2"):
        slim_norm = slim_weights[name].pow(2).sum((1, 2, 3)).mean()
        base_norm = base_weights[name].pow(2).sum((1, 2, 3)).mean()
        assert slim_norm.item() == pytest.approx(base_norm.item(), rel=0.35), name
    # the slimmed model still computes: the plan is untouched, only the scale changed
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_proxy_init_is_part_of_the_proxy_fingerprint(make_config):
    one, two = make_config(), make_config(proxy_init="model")
    assert one.fingerprint("proxy") != two.fingerprint("proxy")
    assert one.fingerprint("base") == two.fingerprint("base")
    with pytest.raises(fxprune.errors.ConfigError, match="--proxy-init"):
        make_config(proxy_init="xavier")


def test_proxy_lr_enters_the_proxy_fingerprint_only_when_not_the_papers(make_config):
    same, scaled = make_config(), make_config(proxy_lr="fan-in")
    assert "proxy_lr" not in same.fingerprint("proxy")  # run folders made before it resume
    assert scaled.fingerprint("proxy")["proxy_lr"] == "fan-in"
    assert same.fingerprint("base") == scaled.fingerprint("base")
    with pytest.raises(fxprune.errors.ConfigError, match="--proxy-lr 'mup'"):
        make_config(proxy_lr="mup")


@pytest.mark.parametrize("proxy_lr", ["same", "fan-in"])
def test_proxy_lr_scales_are_each_layers_fan_in_ratio(make_config, tmp_path, proxy_lr):
    path = tmp_path / "wide.py"
    path.write_text(KAIMING_FAN_IN)
    config = make_config(model=str(path), ratio=0.6, min_ratio=0.2, proxy_lr=proxy_lr)
    data = load_data(config)
    factory = network_factory(config, data, "proxy")
    assert network_factory(config, data, "base").lr_scales == {}  # the base trains at lr
    if proxy_lr == "same":
        assert factory.lr_scales == {}
        return
    proxy, base = factory.make(seed=3), dict(factory.base.named_parameters())
    named = dict(proxy.named_parameters())
    # every narrowed weight, and only weights: norms and biases keep the trial's lr
    narrowed = {name for name, p in named.items()
                if p.dim() >= 2 and fan_in(p) != fan_in(base[name])}
    assert set(factory.lr_scales) == narrowed and len(narrowed) >= 3
    for name, scale in factory.lr_scales.items():
        assert scale == pytest.approx(fan_in(base[name]) / fan_in(named[name])) and scale > 1.2


def _warmed_up_network(make_config, monkeypatch, device: torch.device) -> nn.Module:
    """The network ``NetworkFactory.warm_up`` ran, with the training device set to ``device``."""
    import fxprune.train.loop
    from hpo.network import NetworkFactory

    monkeypatch.setattr(fxprune.train.loop, "default_device", lambda: device)
    config = make_config()
    factory = network_factory(config, load_data(config), "base")
    made = []
    original = NetworkFactory.make

    def spy(self, seed):
        made.append(original(self, seed))
        return made[-1]

    monkeypatch.setattr(NetworkFactory, "make", spy)
    factory.warm_up()
    assert len(made) == 1
    return made[0]


def test_warm_up_runs_on_the_training_device(make_config, monkeypatch):
    # Warm-up exists so that first-call costs are charged to neither arm; on a GPU those
    # costs (context, cuDNN/cuBLAS handles) are CUDA's, so a CPU warm-up would leave them
    # to whichever search runs first. The meta device stands in for "not the CPU".
    network = _warmed_up_network(make_config, monkeypatch, torch.device("meta"))
    assert {p.device.type for p in network.parameters()} == {"meta"}
    assert all(p.grad is not None and p.grad.device.type == "meta"
               for p in network.parameters() if p.requires_grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_warm_up_initialises_cuda_before_any_clock(make_config, monkeypatch):
    network = _warmed_up_network(make_config, monkeypatch, torch.device("cuda"))
    assert torch.cuda.is_initialized()
    assert {p.device.type for p in network.parameters()} == {"cuda"}
