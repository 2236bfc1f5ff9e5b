"""training/smollm2_flashback.sh, the recipe of the shipped model, runs end to end (2 steps) with its settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashback_rag import load_model
from flashback_rag.models import shipped_adapter

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# what may differ between a smoke pass and the shipped run: the budget and where things were written
BUDGET = {"max_steps", "logging_steps", "data", "out"}


def _recipe(tmp_path, **extra):
    env = {**os.environ, "STEPS": "2", "POINTS": "64", "OMP_NUM_THREADS": "2",
           "FLASHBACK": f"{sys.executable} -m flashback_rag.cli", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra}
    return subprocess.run(["bash", str(ROOT / "training" / "smollm2_flashback.sh"), str(tmp_path / "work"),
                           str(tmp_path / "adapter")], capture_output=True, text=True, timeout=900, env=env,
                          cwd=ROOT)


def test_recipe_smoke_run_trains_the_shipped_settings(tmp_path):
    # in two stages, as when the data is made on one machine and the training runs on a GPU machine
    data = _recipe(tmp_path, STAGES="corpus index prepare")
    assert data.returncode == 0, data.stderr[-3000:]
    assert (tmp_path / "work" / "data-copy" / "args.json").is_file() and not (tmp_path / "adapter").exists()
    done = _recipe(tmp_path, STAGES="train")
    assert done.returncode == 0, done.stderr[-3000:]
    model, _ = load_model("smollm2-135m", adapter=tmp_path / "adapter")
    assert (model.flashback_config.pattern, model.flashback_config.echo_tokens) == ("append", 16)
    smoke = json.loads((tmp_path / "adapter" / "flashback.json").read_text())
    shipped = json.loads((shipped_adapter("smollm2-135m-flashback") / "flashback.json").read_text())
    assert smoke["config"] == shipped["config"]
    for key in set(shipped["training"]) - BUDGET:
        assert smoke["training"][key] == shipped["training"][key], key


def test_recipe_refuses_an_unknown_stage_before_any_work(tmp_path):
    done = _recipe(tmp_path, STAGES="corpus trian")
    assert done.returncode == 2 and "unknown stage 'trian'" in done.stderr
    assert not (tmp_path / "work").exists()
