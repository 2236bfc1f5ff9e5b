"""The CPU smoke recipe (training/smoke_cpu.sh) runs end to end: index, prepare, train, eval, export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_recipe(tmp_path):
    env = {**os.environ, "FLASHBACK": f"{sys.executable} -m flashback_rag.cli", "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(["bash", str(ROOT / "training" / "smoke_cpu.sh"), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ppl = json.loads((tmp_path / "ppl.json").read_text())
    assert ppl["tokens"] == 16 * 16 and math.isfinite(ppl["ppl"])
    metrics = json.loads((tmp_path / "adapter" / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "merged" / "flashback.json").read_text())["tune"] == "merged"
    assert (tmp_path / "merged" / "config.json").is_file()
