import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ["llama", "gpt2", "opt", "qwen2"]


@pytest.fixture(scope="session")
def tiny_models():
    """One tiny random model per architecture, loaded once."""
    from flashback_rag import load_model

    return {arch: load_model(f"tiny-random-{arch}") for arch in ARCHS}


@pytest.fixture(scope="session")
def smollm2():
    from flashback_rag import load_model

    return load_model("smollm2-135m")
