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



@pytest.fixture(scope="session")
def pydoc_topics_jsonl(tmp_path_factory):
    """PYDOC_TOPICS as a JSONL corpus file with titles."""
    import json

    from helpers import PYDOC_TOPICS

    from flashback_rag.stdlib_corpus import pydoc_topic_documents

    path = tmp_path_factory.mktemp("corpus") / "topics.jsonl"
    docs = {d.title: d.text for d in pydoc_topic_documents()}
    path.write_text("".join(json.dumps({"title": t, "text": docs[t]}) + "\n" for t in PYDOC_TOPICS))
    return path

