"""The grounding image encoder: three strided 3x3 convolutions on 32x32 scenes, then a linear map.

The feature map is flattened rather than pooled: global pooling would discard where objects are,
which is what spatial relations are about.
"""

from __future__ import annotations

import torch
from torch import nn

MEAN = 0.5  # pixels are scaled to [0, 1], then centred and scaled: (x / 255 - MEAN) / STD
STD = 0.25


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> normalised float ``[B, 3, H, W]``."""
    return (images.float() / 255.0 - MEAN) / STD


class ImageEncoder(nn.Module):
    """32x32 -> 16 -> 8 -> 4 (channels, 2*channels, 2*channels) -> flatten -> ``width`` features.

    ``in_channels``: 3 for RGB scenes; the layout-grid tower feeds one channel per object name.
    """

    def __init__(self, width: int = 64, channels: int = 32, image_size: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        c2 = 2 * channels
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, c2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.out = nn.Linear(c2 * (image_size // 8) ** 2, width)
        self.width = width

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``[B, in_channels, 32, 32]`` -> features ``[B, width]``."""
        return self.out(self.convs(pixels).flatten(1))
