"""Shared fixtures: tiny random-weight models, generated clips and sounds.

Everything is generated here, offline and seeded, so tests never download.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreamreel.pipeline.models import DreamModel


class TinyNet(nn.Module):
    """Three conv layers and a classifier head: enough to test the mechanics."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.head(x.mean((2, 3)))


def make_tiny_model(seed: int = 0) -> DreamModel:
    torch.manual_seed(seed)
    return DreamModel(
        TinyNet(),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        layer_names=["conv1", "conv2", "conv3"],
        aliases={"low": "conv1", "mid": "conv2", "high": "conv3"},
        class_names=["cat", "dog", "tabby cat", "fish", "bird"],
        name="tiny",
    )


@pytest.fixture
def tiny_model() -> DreamModel:
    return make_tiny_model()


@pytest.fixture
def textured() -> torch.Tensor:
    """(1, 3, 48, 64) smooth random texture in [0, 1], seeded."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 12, 16, generator=g)
    return torch.nn.functional.interpolate(x, size=(48, 64), mode="bilinear", align_corners=False)
