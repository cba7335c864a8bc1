"""The live avatar server: a browser page streams microphone audio over a WebSocket, frames come back.

``emote serve`` loads one model and backend at start; every WebSocket session gets its own
:class:`~engine.stream.session.Session` (reference bank computed once per session) driven by a
:class:`~engine.stream.runner.LiveSession`. Modules: :mod:`engine.serve.protocol` (the message
formats), :mod:`engine.serve.portraits` (upload checks and decoding), :mod:`engine.serve.hub`
(the shared model, capacity and session construction), :mod:`engine.serve.connection` (one
WebSocket session), :mod:`engine.serve.app` (the aiohttp application and its static page),
:mod:`engine.serve.client` (a Python client of the protocol). Sessions do not batch their backbone
calls together yet: each runs its own on the shared backend.
"""

from engine.serve.hub import ServeConfig, SessionHub

__all__ = ["ServeConfig", "SessionHub"]
