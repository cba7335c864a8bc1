"""Training the shipped talking-face model on synthetic data, and distilling it into a few-step student.

- :mod:`engine.training.model_config`: the small model's networks (64x64, pixel codec, ~4 M parameters).
- :mod:`engine.training.recipe`: step counts, batch sizes and learning rates of each stage.
- :mod:`engine.training.data`: batches cut from cached clips exactly as the streaming session cuts them.
- :mod:`engine.training.diffusion`: the conditioned v-prediction loss.
- :mod:`engine.training.stages`: audio pre-training, image, video and speed stages.
- :mod:`engine.training.distill`: latent-consistency distillation with audio guidance baked in.
- :mod:`engine.training.state`: resumable checkpoints and the loss log.
- :mod:`engine.training.train`: ``python -m engine.training.train``, the whole recipe.
"""
