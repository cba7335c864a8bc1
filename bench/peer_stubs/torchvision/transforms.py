"""The four transforms Hallo's ``ImageProcessor`` uses, with torchvision's results on PIL images.

``Resize((h, w))``: ``Image.resize((w, h), BILINEAR)``; ``ToTensor``: uint8 ``[H, W, C]`` -> float ``[C, H, W]``
in [0, 1]; ``Normalize(mean, std)``: ``(x - mean) / std`` per channel; ``Compose``: one after another.
"""

import numpy as np
import torch
from PIL import Image


class Compose:
    """Applies ``transforms`` in order."""

    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class Resize:
    """Resize a PIL image to ``size`` = (height, width), bilinear (the only form Hallo passes)."""

    def __init__(self, size: tuple[int, int]) -> None:
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise TypeError(f"this stand-in takes a (height, width) size, got {size!r}")
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        return image.resize((width, height), Image.BILINEAR)


class ToTensor:
    """A PIL image (8 bits per channel) as a float tensor ``[C, H, W]`` in [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.array(image, np.uint8, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255)


class Normalize:
    """``(x - mean) / std`` per channel of a ``[C, H, W]`` tensor."""

    def __init__(self, mean, std) -> None:
        self.mean, self.std = mean, std

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub(mean).div(std)
