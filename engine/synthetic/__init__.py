"""Synthetic talking-face data: procedural faces whose mouths follow espeak-ng speech.

- :mod:`engine.synthetic.speech`: espeak-ng through its C library, speech at 16 kHz with phoneme timing.
- :mod:`engine.synthetic.visemes`: phoneme timing -> mouth opening and width per video frame.
- :mod:`engine.synthetic.face_drawing`: identities and the anti-aliased renderer of one frame.
- :mod:`engine.synthetic.clips`: deterministic talking clips (frames, audio, boxes, head speed, mouth truth).
- :mod:`engine.synthetic.dataset`: the on-disk cache of clips that training reads.
"""
