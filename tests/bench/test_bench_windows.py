"""``python -m bench.windows``: the stream's causal context windows against the offline forms."""

from __future__ import annotations

from tiny_sources import write_echomimic

from bench.windows import main
from engine.importers.run import import_model


def test_windows_report_on_the_tiny_echomimic_tree(tmp_path, capsys):
    """At one step the stream is the joint windows exactly; the table and the frame changes come out."""
    model = tmp_path / "model"
    import_model("echomimic", write_echomimic(tmp_path / "src"), model)
    assert main(["--model", str(model), "--steps", "1", "--seconds", "1.0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("windows of 12 overlapping by 3, ddim, 1 s of speech at 24 fps, fp32 CPU")
    row = out[3].split(" | ")
    assert row[0] == "| 1" and row[1] == "0.000 / 0.000"
    assert float(row[2].split(" / ")[0]) > 0.1, "independent clips are not the joint windows"
    assert out[-1].startswith("1 steps: stream ")


def test_windows_needs_a_window_for_a_model_without_one(capsys):
    assert main(["--model", "tiny", "--steps", "1"]) == 2
    assert "give --window and --overlap" in capsys.readouterr().err
