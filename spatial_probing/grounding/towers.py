"""Second towers: what a grounding arm contrasts each caption with (chosen by ``model.tower`` in an arm config).

Every contrastive arm has the same objective code (``objectives.Contrastive``); the tower decides what
the other side of each pair *is*, and so exactly what information the arm receives beyond its captions:

=====================  ==========================================================================
tower                  what it sees of a training scene
=====================  ==========================================================================
``ImageTower``         the rendered 32x32 RGB image (``shuffle=true``: the image of another scene,
                       under one fixed random permutation of the training scenes: pairing broken,
                       image multiset kept)
``TextPairTower``      another caption of the same scene, drawn independently (canonical or converse
                       form), through the caption encoder itself (shared weights): no pixels at all
``WorldStateTower``    the symbolic scene state: per object colour and shape one-hot plus its box,
                       objects in a fixed order (by name), through an MLP of about the image tower's size
``LayoutGridTower``    object identities painted on a coarse grid from the boxes (one channel per object
                       name), through the image tower's CNN: 2-D layout without rendered pixels
=====================  ==========================================================================

A tower turns scenes into its input tensors once, when the data module is set up (``inputs``: keys
``tower_*``, rows aligned with the examples), and encodes a batch of them into ``[B, width]`` features
(``forward``). Its network is built by ``build`` after the text encoder, so under one seed every arm
starts from the same text weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spatial_probing.errors import DataError
from spatial_probing.grounding import scenes as S
from spatial_probing.grounding.image import ImageEncoder, to_pixels
from spatial_probing.grounding.text import ScratchText, TextEncoder, TextTower


class SecondTower(nn.Module):
    """What a caption is contrasted with. Subclasses set ``needs_images`` and implement the three methods."""

    needs_images = False  # its inputs are rendered scene pixels (the data module must render them)
    image_view = False  # its network encodes RGB scene images: the registry's ``image`` view reads it

    families: tuple[str, ...] = ("shapes", "vsr")  # scene families (``--data.scenes``) it can read

    def build(self, width: int, image_size: int = S.IMAGE_SIZE) -> None:
        """Create the network (after the text encoder: same initial text weights in every arm); ``image_size``:
        the scene family's images."""

    def inputs(self, scenes: list[S.GroundingScene], seed: int, train: bool, text: TextTower | None = None) -> dict[str, torch.Tensor]:
        """Input tensors of every scene (keys ``tower_*``). ``train``: the training set (``seed``: its draws);
        ``text``: the text tower (its tokenizer, for towers that read captions; default ``ScratchText``)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor], text: TextEncoder) -> torch.Tensor:
        """Features ``[B, width]`` of a batch's tower inputs (``text``: the caption encoder, for shared weights)."""
        raise NotImplementedError

    def architecture(self) -> dict[str, Any]:
        """What a checkpoint records of this tower (the ``local:`` adapter and the study read it)."""
        return {"class": type(self).__name__}


class ImageTower(SecondTower):
    """The scene image through the small CNN (``image.ImageEncoder``).

    Args:
        channels: channels of the first convolution (doubled in the next two).
        shuffle: pair each training caption with the image of another scene, under one fixed random
            permutation of the training scenes (validation keeps the true pairing).
    """

    needs_images = True
    image_view = True

    def __init__(self, channels: int = 32, shuffle: bool = False) -> None:
        super().__init__()
        self.channels, self.shuffle = channels, shuffle

    def build(self, width: int, image_size: int = S.IMAGE_SIZE) -> None:
        self.image_size = image_size
        self.cnn = ImageEncoder(width, self.channels, image_size)

    def inputs(self, scenes: list[S.GroundingScene], seed: int, train: bool, text: TextTower | None = None) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(np.stack([s.image() for s in scenes]))
        if self.shuffle and train:
            pixels = pixels[torch.from_numpy(shuffle_order(len(scenes), seed))]
        return {"tower_pixels": pixels}

    def forward(self, batch: dict[str, torch.Tensor], text: TextEncoder) -> torch.Tensor:
        return self.cnn(to_pixels(batch["tower_pixels"]))

    def architecture(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "width": self.cnn.width, "channels": self.channels,
                "image_size": self.image_size, "shuffle": self.shuffle}


def shuffle_order(n: int, seed: int) -> np.ndarray:
    """The fixed permutation of the shuffled arm: example ``i`` is shown the image of scene ``order[i]``."""
    return np.random.default_rng([seed, 4]).permutation(n)


class TextPairTower(SecondTower):
    """Another caption of the same scene (canonical or converse form, drawn independently of the caption
    itself) through the caption encoder: SBERT/SimCSE-style shared weights, no parameters of its own."""

    def inputs(self, scenes: list[S.GroundingScene], seed: int, train: bool, text: TextTower | None = None) -> dict[str, torch.Tensor]:
        converse = np.random.default_rng([seed, 3]).random(len(scenes)) < 0.5
        texts = [s.captions()["converse" if flip else "caption"][0] for s, flip in zip(scenes, converse, strict=True)]
        tokens = (text or ScratchText()).tokenize(texts)
        return {"tower_input_ids": tokens["input_ids"], "tower_attention_mask": tokens["attention_mask"]}

    def forward(self, batch: dict[str, torch.Tensor], text: TextEncoder) -> torch.Tensor:
        return text.encode(batch["tower_input_ids"], batch["tower_attention_mask"])


#: per object: colour one-hot, shape one-hot, box (x0, y0, x1, y1) / image size
STATE_FEATURES = len(S.SCENE_COLOURS) + len(S.SCENE_SHAPES) + 4


def world_states(scenes: list[S.GroundingScene], max_objects: int) -> torch.Tensor:
    """``[n, max_objects, STATE_FEATURES]``: objects ordered by ``scenes.OBJECT_NAMES`` (not by the
    caption's roles nor draw order), empty slots zero."""
    out = np.zeros((len(scenes), max_objects, STATE_FEATURES), dtype=np.float32)
    n_colours = len(S.SCENE_COLOURS)
    for i, scene in enumerate(scenes):
        if len(scene.objects) > max_objects:
            raise DataError(f"a scene has {len(scene.objects)} objects but the world-state tower holds "
                            f"{max_objects}: raise --model.tower.init_args.max_objects")
        for slot, obj in enumerate(sorted(scene.objects, key=lambda o: S.OBJECT_NAMES.index(o.name))):
            out[i, slot, S.SCENE_COLOURS.index(obj.colour)] = 1.0
            out[i, slot, n_colours + S.SCENE_SHAPES.index(obj.shape)] = 1.0
            out[i, slot, -4:] = np.asarray(obj.box, dtype=np.float32) / S.IMAGE_SIZE
    return torch.from_numpy(out)


class WorldStateTower(SecondTower):
    """The scene's symbolic state, no rendering, through an MLP.

    Args:
        hidden: width of the MLP's two hidden layers (300: 120.7k parameters at width 64, the image
            tower's CNN has 121.9k).
        max_objects: object slots of the input (held-out scenes have 3 objects).
    """

    def __init__(self, hidden: int = 300, max_objects: int = 3) -> None:
        super().__init__()
        self.hidden, self.max_objects = hidden, max_objects

    families = ("shapes",)  # colour and shape one-hots of the shapes scenes

    def build(self, width: int, image_size: int = S.IMAGE_SIZE) -> None:
        self.mlp = nn.Sequential(nn.Linear(self.max_objects * STATE_FEATURES, self.hidden), nn.ReLU(),
                                 nn.Linear(self.hidden, self.hidden), nn.ReLU(), nn.Linear(self.hidden, width))

    def inputs(self, scenes: list[S.GroundingScene], seed: int, train: bool, text: TextTower | None = None) -> dict[str, torch.Tensor]:
        return {"tower_state": world_states(scenes, self.max_objects)}

    def forward(self, batch: dict[str, torch.Tensor], text: TextEncoder) -> torch.Tensor:
        return self.mlp(batch["tower_state"].flatten(1))

    def architecture(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "hidden": self.hidden, "max_objects": self.max_objects}


def layout_grids(scenes: list[S.GroundingScene], grid: int) -> torch.Tensor:
    """uint8 ``[n, len(OBJECT_NAMES), grid, grid]``: 1 where a cell overlaps an object's box, in that object
    name's channel (boxes are half-open pixel ranges on the ``IMAGE_SIZE`` canvas)."""
    out = np.zeros((len(scenes), len(S.OBJECT_NAMES), grid, grid), dtype=np.uint8)
    cell = S.IMAGE_SIZE / grid
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            cols = slice(int(x0 // cell), int(np.ceil(x1 / cell)))
            rows = slice(int(y0 // cell), int(np.ceil(y1 / cell)))
            out[i, S.OBJECT_NAMES.index(obj.name), rows, cols] = 1
    return torch.from_numpy(out)


class LayoutGridTower(SecondTower):
    """Object identities on a coarse grid (one channel per object name), upsampled to the image size and
    encoded by the image tower's CNN architecture (its first convolution reads one channel per name).

    Args:
        channels: channels of the CNN's first convolution, as ``ImageTower``.
        grid: cells per side (8: 4x4-pixel cells; boxes are 6-10 pixels).
    """

    def __init__(self, channels: int = 32, grid: int = 8) -> None:
        super().__init__()
        if S.IMAGE_SIZE % grid:
            raise DataError(f"--model.tower.init_args.grid must divide the image size {S.IMAGE_SIZE}, got {grid}")
        self.channels, self.grid = channels, grid

    families = ("shapes",)  # one channel per shapes object name

    def build(self, width: int, image_size: int = S.IMAGE_SIZE) -> None:
        self.cnn = ImageEncoder(width, self.channels, S.IMAGE_SIZE, in_channels=len(S.OBJECT_NAMES))

    def inputs(self, scenes: list[S.GroundingScene], seed: int, train: bool, text: TextTower | None = None) -> dict[str, torch.Tensor]:
        return {"tower_grid": layout_grids(scenes, self.grid)}

    def forward(self, batch: dict[str, torch.Tensor], text: TextEncoder) -> torch.Tensor:
        grid = batch["tower_grid"].float()
        return self.cnn(F.interpolate(grid, size=(S.IMAGE_SIZE, S.IMAGE_SIZE), mode="nearest"))

    def architecture(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "channels": self.channels, "grid": self.grid}
