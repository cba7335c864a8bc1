"""Import-only stand-in for mediapipe (see ../README.md): Hallo's ``get_landmark`` is replaced by the driver."""
