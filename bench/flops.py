"""FLOPs of recorded network calls, counted by ``torch.utils.flop_counter.FlopCounterMode``.

Every network but the audio encoder is replayed on the META device (no memory, no arithmetic): there
``scaled_dot_product_attention`` decomposes into matrix products the counter sees, whereas on the CPU
it runs a fused kernel the counter misses. The audio encoder checks its PCM's values (which a meta
tensor has none of), so it runs on the CPU with PyTorch's math attention, which the counter also sees.
A multiply-add counts 2. Results are memoised per call signature.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.recording import Call
from engine.backends import make_backend
from engine.config import ModelConfig
from engine.models.model import EmoteModel


class FlopCounter:
    """Counts the FLOPs of calls to the networks of one model configuration.

    ``audio_encoder``: the live model's audio encoder (copied to the CPU in fp32 for counting).
    ``memo``: a cache to share between counters of configurations that differ only in their VAE
    (entries of the VAE's calls are keyed by the VAE's configuration, the others by the call alone).
    """

    def __init__(self, config: ModelConfig, audio_encoder: nn.Module, memo: dict[tuple, int] | None = None):
        meta_model = EmoteModel.on_meta(config).requires_grad_(False)
        self.meta = make_backend("torch", meta_model, "meta", torch.float32)
        self.audio_encoder = copy.deepcopy(audio_encoder).to("cpu", torch.float32).eval().requires_grad_(False)
        self._vae_key = repr(config.vae)
        self._memo: dict[tuple, int] = {} if memo is None else memo

    def flops(self, call: Call) -> int:
        """FLOPs of one call (memoised by signature)."""
        key = (self._vae_key if call.network.startswith("vae_") else None, call.signature)
        if key not in self._memo:
            self._memo[key] = self._count(call)
        return self._memo[key]

    def _count(self, call: Call) -> int:
        counter = FlopCounterMode(display=False)
        if call.network == "audio_tokens":
            args, kwargs = call.inputs("cpu", torch.float32)
            with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
                self.audio_encoder.tokens(*args, **kwargs)
        else:
            args, kwargs = call.inputs("meta", torch.float32)
            with counter:
                getattr(self.meta, call.network)(*args, **kwargs)
        return int(counter.get_total_flops())

    def total(self, calls: list[Call]) -> int:
        """FLOPs of a list of calls (each signature counted once, then multiplied)."""
        counts = Counter(c.signature for c in calls)
        first = {c.signature: c for c in calls}
        return sum(n * self.flops(first[sig]) for sig, n in counts.items())

    def by_network(self, calls: list[Call]) -> dict[str, int]:
        """FLOPs per network over a list of calls."""
        out: Counter = Counter()
        for call in calls:
            out[call.network] += self.flops(call)
        return dict(out)
