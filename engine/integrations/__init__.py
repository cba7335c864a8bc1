"""Voice-agent integrations: :mod:`engine.integrations.avatar` (framework-free), and one module per framework
(:mod:`engine.integrations.livekit`, :mod:`engine.integrations.pipecat`) that imports its framework only when
it is imported itself, so the core never needs them (``pip install emote-engine[agents]``)."""
