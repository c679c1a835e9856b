"""Rules of fxprune/ops/extra.py against the masked-dense oracle: pixel (un)shuffle,
nn.Unflatten, recurrent layers and cells, rounding, and functional conv/linear called with
keyword arguments. Each model is pruned with the paper's setting (synflow 0.85/0.15) and
with L1 at 0.5, and must lose channels at the op that used to freeze them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from tests.harness import prune_and_check

SETTINGS = [("synflow", 0.85, 0.15), ("l1", 0.5, 0.15)]


class Shuffle(nn.Module):
    """conv -> PixelShuffle(2) -> conv: conv1's 16 outputs are 4 blocks of 4."""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = F.pixel_shuffle(y, 2) if self.functional else self.shuffle(y)
        return self.conv2(y)


class Unshuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv2 = nn.Conv2d(24, 5, 1)

    def forward(self, x):
        return self.conv2(self.unshuffle(torch.relu(self.conv1(x))))


class Decoder(nn.Module):
    """Linear -> Unflatten(1, (16, 2, 2)) -> conv: a VAE-style decoder head."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 64)
        self.unflatten = nn.Unflatten(1, (16, 2, 2))
        self.conv = nn.Conv2d(16, 3, 1)

    def forward(self, z):
        return self.conv(self.unflatten(torch.relu(self.fc(z))))


class Sequence(nn.Module):
    """Linear features -> recurrent layer -> last step -> Linear."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.embed = nn.Linear(5, 16)
        if kind == "lstm2bi":
            self.rnn = nn.LSTM(16, 12, num_layers=2, batch_first=True, bidirectional=True)
            width = 24
        elif kind == "gru":
            self.rnn = nn.GRU(16, 12, batch_first=True)
            width = 12
        elif kind == "rnn_seq_first":
            self.rnn = nn.RNN(16, 12)
            width = 12
        else:  # a cell, stepped by hand
            self.rnn = nn.GRUCell(16, 12)
            width = 12
        self.head = nn.Linear(width, 3)

    def forward(self, x):  # (N, L, 5)
        y = torch.relu(self.embed(x))
        if self.kind == "cell":
            h = self.rnn(y[:, 0])
            h = self.rnn(y[:, 1], h)
            return self.head(h)
        if self.kind == "rnn_seq_first":
            out, _ = self.rnn(y.transpose(0, 1))
            return self.head(out[-1])
        out, _ = self.rnn(y)
        return self.head(out[:, -1])


class Rounding(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = torch.round(self.conv1(x) * 4) / 4
        y = torch.floor(y) + y.ceil() - torch.trunc(y) + y.frac()
        return self.conv2(torch.clamp(y, -2, 2))


class KeywordFunctional(nn.Module):
    """F.conv2d / F.linear with the weight and bias passed by keyword (timm's BEiT)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3)
        self.fc1 = nn.Linear(12, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        y = F.conv2d(x, weight=self.conv.weight, bias=self.conv.bias, padding=1)
        y = torch.relu(y).mean((2, 3))
        y = torch.relu(F.linear(y, weight=self.fc1.weight, bias=self.fc1.bias))
        return F.linear(input=y, weight=self.fc2.weight, bias=self.fc2.bias)


class StandardisedConv(nn.Conv2d):
    """timm's ScaledStdConv2d (NFNets): the weight is standardised per output channel
    through F.batch_norm on a reshaped copy, then passed to F.conv2d with the bias.
    ``mix=True`` hides the weight's channels behind a reshape that really mixes them
    (output and input channels in one dim): then the bias must stay with them."""

    def __init__(self, cin, cout, mix=False):
        super().__init__(cin, cout, 3, padding=1)
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)
        self.mix = mix

    def forward(self, x):
        if self.mix:
            weight = self.weight.flatten(0, 1).tanh().reshape_as(self.weight)
        else:
            weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                                  weight=(self.gain * 0.2).view(-1), training=True, momentum=0.0,
                                  eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class StandardisedNet(nn.Module):
    def __init__(self, mix=False):
        super().__init__()
        self.std1 = StandardisedConv(3, 16, mix)
        self.std2 = StandardisedConv(16, 12, mix)
        self.conv1 = nn.Conv2d(12, 12, 1)
        self.conv2 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = torch.relu(self.std2(torch.relu(self.std1(x))))
        return self.conv2(torch.relu(self.conv1(y)))


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
@pytest.mark.parametrize("functional", [False, True])
def test_pixel_shuffle_cuts_whole_blocks(scorer, ratio, min_ratio, functional):
    result = prune_and_check(Shuffle(functional), torch.randn(2, 3, 6, 6), ratio, min_ratio, scorer)
    kept = result.model.conv1.out_channels
    assert kept < 16 and kept % 4 == 0
    assert result.model.conv2.in_channels == kept // 4


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_pixel_unshuffle_repeats_each_channel(scorer, ratio, min_ratio):
    result = prune_and_check(Unshuffle(), torch.randn(2, 3, 6, 6), ratio, min_ratio, scorer)
    kept = result.model.conv1.out_channels
    assert kept < 6
    assert result.model.conv2.in_channels == 4 * kept


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_unflatten_shrinks_its_size(scorer, ratio, min_ratio):
    result = prune_and_check(Decoder(), torch.randn(2, 8), ratio, min_ratio, scorer)
    kept = result.model.conv.in_channels
    assert kept < 16
    assert result.model.unflatten.unflattened_size == (kept, 2, 2)
    assert result.model.fc.out_features == 4 * kept


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
@pytest.mark.parametrize("kind", ["gru", "lstm2bi", "rnn_seq_first", "cell"])
def test_recurrent_input_features_are_pruned_hidden_kept(scorer, ratio, min_ratio, kind):
    model = Sequence(kind)
    result = prune_and_check(model, torch.randn(2, 4, 5), ratio, min_ratio, scorer)
    rnn = result.model.rnn
    assert rnn.input_size == result.model.embed.out_features < 16
    assert rnn.hidden_size == 12
    weight = rnn.weight_ih if kind == "cell" else rnn.weight_ih_l0
    assert weight.shape[1] == rnn.input_size
    if kind == "lstm2bi":
        assert rnn.weight_ih_l0_reverse.shape[1] == rnn.input_size
        assert rnn.weight_ih_l1.shape[1] == 24  # layer 2 reads the (kept) hidden size


def test_recurrent_macs_count_every_weight_per_step():
    model = Sequence("gru")
    x = torch.randn(2, 4, 5)
    gru = 3 * 12 * (16 + 12)  # weight_ih (36, 16) + weight_hh (36, 12)
    expected = 4 * 5 * 16 + 4 * gru + 12 * 3  # per example: embed, 4 steps, head
    assert fxprune.count_macs(model, x) == expected
    model = Sequence("lstm2bi")
    lstm = 2 * (4 * 12 * (16 + 12)) + 2 * (4 * 12 * (24 + 12))
    assert fxprune.count_macs(model, x) == 4 * 5 * 16 + 4 * lstm + 24 * 3


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_rounding_is_elementwise(scorer, ratio, min_ratio):
    result = prune_and_check(Rounding(), torch.randn(2, 3, 6, 6), ratio, min_ratio, scorer)
    assert result.model.conv1.out_channels < 12
    assert not result.graph.unhandled


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_functional_layers_with_keyword_arguments(scorer, ratio, min_ratio):
    model = KeywordFunctional()
    x = torch.randn(2, 3, 6, 6)
    assert fxprune.count_macs(model, x) == 6 * 6 * 12 * 27 + 12 * 10 + 10 * 4
    result = prune_and_check(model, x, ratio, min_ratio, scorer)
    assert result.model.conv.weight.shape[0] < 12


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_bias_of_a_computed_weight_stays_with_its_frozen_channels(scorer, ratio, min_ratio):
    result = prune_and_check(StandardisedNet(mix=True), torch.randn(2, 3, 6, 6), ratio, min_ratio, scorer)
    assert result.model.std2.bias.shape == (12,)  # was sliced alone: the slim model did not run
    assert result.model.std2.weight.shape == (12, 16, 3, 3)
    assert result.model.conv1.out_channels < 12


@pytest.mark.parametrize("scorer,ratio,min_ratio", SETTINGS)
def test_weight_standardisation_prunes_both_dims_structurally(scorer, ratio, min_ratio):
    # the batch statistics of the weight run over its input channels: pruning those is
    # checked structurally, the output channels numerically
    result = prune_and_check(StandardisedNet(), torch.randn(2, 3, 6, 6), ratio, min_ratio, scorer, exact=False)
    std1, std2 = result.model.std1, result.model.std2
    assert std1.weight.shape[0] < 16
    assert std1.bias.shape == std1.gain.shape[:1] == std1.weight.shape[:1]
    assert std2.weight.shape[1] == std1.weight.shape[0]
