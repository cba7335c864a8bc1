"""The one generation path: audio in (any block size), frames out, clip by clip."""
