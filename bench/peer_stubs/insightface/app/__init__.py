"""``FaceAnalysis`` stand-in: ``get`` returns the faces in :data:`FACES`, which the benchmark's driver fills.

Each face is a dict with ``bbox`` (x0, y0, x1, y1 in pixels of the image passed to ``get``) and ``embedding``
(float32 ``[512]`` or the tree's reduced width), the two fields Hallo's ``ImageProcessor`` reads.
"""

FACES: list[dict] = []


class FaceAnalysis:
    """Takes the real constructor's arguments and loads nothing."""

    def __init__(self, *args, **kwargs) -> None:
        self.models: dict = {}

    def prepare(self, *args, **kwargs) -> None:
        """Nothing to prepare: no detector is loaded."""

    def get(self, image) -> list[dict]:
        """The faces the driver set, whatever ``image`` is."""
        return list(FACES)
