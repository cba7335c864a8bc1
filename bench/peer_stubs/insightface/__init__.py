"""Stand-in for insightface (see ../README.md): only ``insightface.app.FaceAnalysis`` is provided."""
