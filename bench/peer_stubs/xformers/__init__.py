"""Import-only stand-in for xformers (see ../README.md); no distribution metadata, so diffusers sees none."""
