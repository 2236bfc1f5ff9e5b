"""benchmarks/gpu/run.sh, the device run, with tiny shapes on the CPU: it cannot rot between GPU loans.

The same script, parts and summary as on the GPU (only the shapes and the device differ), end to end:
every part finishes, every check holds, the six results files are there and say what they should. And a
part that runs out of time still writes its file, marked partial, which the summary reports.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "benchmarks" / "gpu"
FILES = {"parity.json", "speed.json", "train.json", "summary.json", "summary.md", "run.log"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-run")
    started = time.time()
    done = subprocess.run(["bash", str(GPU / "run.sh"), str(out), "--tiny", "--device", "cpu", "--python", sys.executable],
                          capture_output=True, text=True, timeout=400, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return out, done, time.time() - started


def test_tiny_run_finishes_every_part_and_every_check_holds(tiny_run):
    out, done, seconds = tiny_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES          # the device tool brings back at most 8 files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["tiny"]
    assert {name: part["status"] for name, part in summary["parts"].items()} == \
        {"parity": "done", "speed": "done", "train": "done"}
    assert "# FlashBack on cpu (tiny shapes" in (out / "summary.md").read_text()
    assert "== summary:" in (out / "run.log").read_text()
    assert seconds < 300


def test_tiny_run_parity_covers_every_case_in_both_dtypes(tiny_run):
    out, _, _ = tiny_run
    parity = json.loads((out / "parity.json").read_text())
    assert parity["all_hold"]
    cases = {(it["dtype"], it["case"]) for it in parity["items"] if "arch" in it}
    for dtype in ("float32", "bfloat16"):
        for case in ("append+markers", "append+markers+echo", "append+markers+echo+before", "prepend", "none"):
            assert (dtype, case) in cases
    assert any(it["case"].startswith("packed (segments") for it in parity["items"])
    assert any(it["case"].startswith("sampled") for it in parity["items"])


def test_tiny_run_speed_has_predictions_beside_each_pattern(tiny_run):
    out, _, _ = tiny_run
    speed = json.loads((out / "speed.json").read_text())
    assert [p["T"] for p in speed["items"]] == [128, 96]            # in the order asked: the headline first
    for point in speed["items"]:
        for pattern in ("prepend", "append", "none"):
            assert point[f"{pattern}_s"] > 0 and point[f"{pattern}_predicted_s"] > 0 and point[f"{pattern}_flops"] > 0
            assert point[f"{pattern}_stats"]["generated_tokens"] == point["T"] - point["init_length"]
        assert point["flops_speedup"] > 1 and "predicted_speedup" in point
    batch = speed["batch"]
    assert batch["batch"] == 2 and all(batch[f"{p}_tokens_per_s"] > 0 for p in ("prepend", "append", "none"))


def test_tiny_run_trains_the_marker_rows(tiny_run):
    out, _, _ = tiny_run
    train = json.loads((out / "train.json").read_text())
    item = train["items"][-1]
    assert train["all_hold"] and item["steps"] == 2 and item["losses_finite"] and item["marker_rows_trained"]
    assert item["packed_tokens_per_s"] > 0


def test_a_part_out_of_time_writes_what_it_has_and_the_summary_says_so(tmp_path):
    """A deadline already past: the speed part skips every point (each recorded with its estimate), marks
    itself partial and exits 1; the summary reports it and the parts that never ran."""
    done = subprocess.run([sys.executable, str(GPU / "timing.py"), "--out", str(tmp_path / "speed.json"), "--tiny",
                           "--device", "cpu", "--deadline", str(time.time())],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["status"] == "partial" and speed["items"] == []
    assert [s["what"] for s in speed["skipped"]] == ["T=128", "T=96", "batch 2 at T=96"]
    assert all("time budget: estimated" in s["reason"] for s in speed["skipped"])
    summarized = subprocess.run([sys.executable, str(GPU / "summary.py"), str(tmp_path)], capture_output=True,
                                text=True, timeout=60, cwd=ROOT)
    assert summarized.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["complete"] and summary["parts"]["parity"] is None
    assert "| parity | missing |" in summarized.stdout and "skipped T=128" in summarized.stdout
