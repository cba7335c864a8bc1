"""``Separator`` stand-in: the "vocals" stem of a file is a copy of the file (no separation model is run)."""

import os
import shutil


class Separator:
    """Takes the real constructor's arguments; ``separate`` writes ``<name>_(Vocals).wav`` into ``output_dir``."""

    def __init__(self, output_dir: str, output_single_stem: str | None = None, model_file_dir: str | None = None,
                 **kwargs) -> None:
        self.output_dir = output_dir
        self.model_instance = None

    def load_model(self, name: str) -> None:
        """Marks the model as loaded (Hallo asserts on ``model_instance``); nothing is read."""
        self.model_instance = name

    def separate(self, wav_file: str) -> list[str]:
        """The names (relative to ``output_dir``) of the stems written: the input copied as the vocals."""
        name = os.path.splitext(os.path.basename(wav_file))[0] + "_(Vocals).wav"
        shutil.copyfile(wav_file, os.path.join(self.output_dir, name))
        return [name]
