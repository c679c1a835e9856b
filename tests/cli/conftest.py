"""Shared by the CLI tests: small model files a user would bring."""

from __future__ import annotations

import textwrap

import pytest

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    def build_model():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def example_inputs():
        return torch.randn(2, 3, 16, 16)
""")


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.py"
    p.write_text(MODEL_FILE)
    return p


TEXT_CNN = textwrap.dedent("""
    import torch
    from torch import nn

    class TextCNN(nn.Module):
        def __init__(self, vocab=50, dim=8):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.conv1 = nn.Conv1d(dim, 16, 3, padding=1)
            self.conv2 = nn.Conv1d(16, 12, 3, padding=1)
            self.fc = nn.Linear(12, 3)

        def forward(self, tokens):
            x = self.embed(tokens).transpose(1, 2)  # (N, dim, L)
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return {"logits": self.fc(x.mean(-1)), "features": x}

    def build_model():
        return TextCNN()
""")

TWO_INPUTS = textwrap.dedent("""
    import torch
    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.embed = nn.Embedding(20, 8)
            self.head = nn.Linear(16, 2)

        def forward(self, image, ids):
            return self.head(torch.cat([self.image(image), self.embed(ids).mean(1)], 1))

    model = TwoInputs()
""")


@pytest.fixture
def text_cnn(tmp_path):
    path = tmp_path / "textcnn.py"
    path.write_text(TEXT_CNN)
    return path


@pytest.fixture
def two_inputs(tmp_path):
    path = tmp_path / "twoin.py"
    path.write_text(TWO_INPUTS)
    return path
