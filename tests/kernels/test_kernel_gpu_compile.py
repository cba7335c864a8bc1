"""The kernels compile for NVIDIA GPUs (sm_80, sm_90) ahead of time, on a machine without one.

The interpreter accepts code that does not compile for a GPU (``tl.dot`` tiles under 16), so the
parity tests alone could pass on a kernel no GPU can run. Compiling needs a process without
``TRITON_INTERPRET`` (see kernels/aot_compile.py), so it runs in a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emote_kernels import aot_compile

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import json
from dataclasses import asdict
from emote_kernels import aot_compile as aot
bad = aot.attention_case(16, 40, "*fp16")
bad.name, bad.constexprs = "dot tile 8", dict(bad.constexprs, BLOCK_F=8)
results = [aot.compile_case(case, arch) for arch in (80, 90) for case in aot.default_cases()]
print(json.dumps([asdict(r) for r in results + [aot.compile_case(bad, 90)]]))
"""


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, int], dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {(r["name"], r["arch"]): r for r in json.loads(done.stdout.splitlines()[-1])}


def test_every_launch_configuration_compiles_to_a_cubin(results):
    failed = [f"sm_{arch} {name}: {r['error']}" for (name, arch), r in results.items()
              if not r["ok"] and name != "dot tile 8"]
    assert not failed, "\n".join(failed)
    assert len(results) == 2 * len(aot_compile.default_cases()) + 1


def test_no_launch_configuration_spills_registers(results):
    """The block tables were chosen so that nothing spills (stack frame 0) on sm_80 or sm_90 as launched: the
    reference-attention table by compiling each, the temporal kernel's head chunk narrowed past 64 frames and
    its fp32 warps doubled from 32 frames."""
    cases = {key: r for key, r in results.items() if key[0] != "dot tile 8"}
    if any(r["stack_bytes"] is None for r in cases.values()):
        pytest.skip("cuobjdump is not in the triton wheel; resource usage unknown")
    spilled = [f"sm_{arch} {name}: {r['registers']} registers, {r['stack_bytes']} B stack"
               for (name, arch), r in cases.items() if r["stack_bytes"]]
    assert not spilled, "\n".join(spilled)


def test_tiles_are_read_with_vector_loads_at_sd15_launches(results):
    """Specialised as launched on SD1.5's contiguous projections, the attention kernels read every tile with
    16-byte loads (scalar: at most the one keep flag), and GroupNorm its input: with the head dim passed at
    run time the 64x64 level's head dim 40 (80 bytes per head in fp16) made every attention load scalar."""
    attention = {key: r for key, r in results.items()
                 if key[0].startswith(("temporal_attention", "reference_attention"))}
    assert attention
    scalar = [f"sm_{arch} {name}: {r['vector_loads']} vector, {r['scalar_loads']} scalar"
              for (name, arch), r in attention.items() if not r["vector_loads"] or r["scalar_loads"] > 1]
    assert not scalar, "\n".join(scalar)
    norms = [r for (name, _), r in results.items() if name.startswith("group_norm group=40960")]
    assert norms and all(r["vector_loads"] >= 2 for r in norms)


def test_dot_tiles_under_16_fail_to_compile(results):
    """The check above can fail: a sequence block of 8 runs in the interpreter but not on a GPU."""
    bad = results[("dot tile 8", 90)]
    assert not bad["ok"] and "dot" in bad["error"]


def test_refuses_to_run_under_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert aot_compile.main([]) == 2
    assert "unset TRITON_INTERPRET" in capsys.readouterr().err
