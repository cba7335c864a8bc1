"""Import-only: ``hallo.models.motion_module`` imports ``xformers.ops`` and calls nothing of it by default."""
