"""Stand-in for audio-separator (see ../README.md): ``audio_separator.separator.Separator``."""
