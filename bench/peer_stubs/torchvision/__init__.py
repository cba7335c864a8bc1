"""Stand-in for torchvision (see ../README.md): only ``torchvision.transforms`` with four PIL transforms."""

from . import transforms  # noqa: F401
