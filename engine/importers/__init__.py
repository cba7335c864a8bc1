"""Importers for public checkpoints (Hallo, EchoMimic v1): key maps as data, config derivation, provenance.

``emote import --from hallo|echomimic --src DIR --out MODEL_DIR`` runs :func:`engine.importers.run.import_model`.
Each system's module (:mod:`engine.importers.hallo`, :mod:`engine.importers.echomimic`) holds its file
list, its key-map tables (:mod:`engine.importers.keymap` rules) and how its config is derived.
"""
