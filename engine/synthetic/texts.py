"""Sentences for the synthetic speech: a small English grammar sampled from a seed.

Varied enough to cover English phonemes in many orders (open and closed vowels, lip closures,
rounded sounds, pauses at punctuation); deterministic in the random generator's state.
"""

from __future__ import annotations

import numpy as np

NAMES = ("Anna", "Bob", "Maria", "Peter", "Lucy", "Omar", "Mei", "David", "Sophie", "Jamal", "Paula", "Ben",
         "Yuki", "Martin", "Olga", "Ravi", "Emma", "Hugo", "Nora", "Felix")
NOUNS = ("apple", "window", "garden", "river", "music", "paper", "mountain", "morning", "kitchen", "number",
         "teacher", "market", "bottle", "island", "winter", "machine", "pocket", "village", "button", "monkey",
         "ocean", "picture", "moment", "office", "problem", "bicycle", "camera", "pillow", "umbrella", "yellow boat",
         "table", "doctor", "planet", "blanket", "computer", "puppy", "lemon", "basket", "rabbit", "balloon")
PLURALS = ("apples", "books", "boxes", "cookies", "friends", "mountains", "pebbles", "shoes", "flowers", "maps",
           "emails", "bubbles", "numbers", "potatoes", "movies", "puzzles")
ADJECTIVES = ("big", "small", "quiet", "happy", "purple", "old", "beautiful", "empty", "warm", "funny", "bright",
              "wooden", "famous", "broken", "simple", "amazing", "blue", "open", "perfect", "tiny")
VERBS = ("open", "paint", "move", "bring", "find", "remember", "build", "carry", "watch", "measure", "bake",
         "borrow", "explain", "follow", "improve", "keep", "visit", "wash", "play", "buy")
PAST = ("opened", "painted", "moved", "brought", "found", "remembered", "built", "carried", "watched", "baked",
        "borrowed", "explained", "followed", "improved", "kept", "visited", "washed", "played", "bought", "made")
PLACES = ("in the morning", "by the window", "at the market", "before lunch", "after the rain", "on Monday",
          "near the bridge", "in the office", "at home", "every summer", "by the sea", "at midnight")
NUMBERS = ("two", "three", "four", "five", "seven", "nine", "ten", "twelve", "fifteen", "twenty", "a hundred")
OPENERS = ("Well,", "Oh,", "Hello!", "Look,", "By the way,", "You know,", "Maybe", "Yes,", "No,", "Hmm,")

_TEMPLATES = (
    "The {adj} {noun} {past} {place}.",
    "{name} will {verb} the {adj} {noun} {place}.",
    "Do you {verb} {plural} {place}?",
    "{opener} my name is {name}, and I {past} {number} {plural}.",
    "I {past} a {adj} {noun}, but {name} {past} the {noun2}.",
    "{opener} we can {verb} the {noun} {place}.",
    "Please {verb} my {adj} {noun}!",
    "{name} and {name2} {past} {number} {adj} {plural}.",
    "Why is the {noun} so {adj}?",
    "{opener} the {noun} was {adj}, and the {noun2} was {adj2}.",
    "Maybe {name} can {verb} the {noun} {place}, maybe not.",
    "I think {number} {plural} are enough for the {adj} {noun}.",
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def sentence(rng: np.random.Generator) -> str:
    """One sentence from the grammar."""
    template = _pick(rng, _TEMPLATES)
    fields = dict(adj=_pick(rng, ADJECTIVES), adj2=_pick(rng, ADJECTIVES), noun=_pick(rng, NOUNS),
                  noun2=_pick(rng, NOUNS), plural=_pick(rng, PLURALS), verb=_pick(rng, VERBS), past=_pick(rng, PAST),
                  place=_pick(rng, PLACES), name=_pick(rng, NAMES), name2=_pick(rng, NAMES),
                  number=_pick(rng, NUMBERS), opener=_pick(rng, OPENERS))
    text = template.format(**fields)
    return text[0].upper() + text[1:]


def utterance(rng: np.random.Generator, sentences: int) -> str:
    """``sentences`` sentences joined by spaces (espeak-ng pauses at their punctuation)."""
    return " ".join(sentence(rng) for _ in range(sentences))
