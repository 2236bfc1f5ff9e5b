"""FlashBackLLM inside real LlamaIndex query and chat engines: SmolLM2, a VectorStoreIndex over the
Python docs embedded with all-MiniLM-L6-v2 (offline), sync / streaming / async, both layouts."""

import asyncio

import pytest

pytestmark = pytest.mark.integration

QUESTION = "What does the with statement do with a context manager?"


@pytest.fixture(scope="module")
def index(python_docs, minilm_path):
    pytest.importorskip("llama_index.embeddings.huggingface",
                        reason="pip install llama-index-embeddings-huggingface")
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    embed = HuggingFaceEmbedding(model_name=minilm_path, device="cpu")
    docs = [Document(text=text, metadata={"title": title}) for title, text in python_docs]
    return VectorStoreIndex.from_documents(docs, embed_model=embed,
                                           transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=0)])


@pytest.fixture(scope="module")
def llm(smollm2_model, index):
    from llama_index.llms.flashback import FlashBackLLM

    # Re-retrieval from the same vector index the query engine uses.
    # Small numbers keep this test quick on a CPU: 12 tokens, a retrieval every 6.
    return FlashBackLLM(smollm2_model, retriever=index.as_retriever(similarity_top_k=1), stride=6,
                        query_tokens=24, doc_tokens=64, max_new_tokens=12, ignore_eos=True)


def titles(record):
    return [p.title for p in record.passages]


def check_re_retrieval(result, topics):
    assert [r.step for r in result.retrievals] == [0, 6]
    assert all(r.passages and set(titles(r)) <= set(topics) for r in result.retrievals)
    # the second query is the running text: it ends with what was generated so far
    assert result.retrievals[0].query != result.retrievals[1].query
    assert result.text[:8].strip() in result.retrievals[1].query


def test_standard_query_engine_sync_and_streaming(index, llm, python_docs):
    topics = [t for t, _ in python_docs]
    response = index.as_query_engine(llm=llm, similarity_top_k=1).query(QUESTION)
    result = llm.last_result
    assert response.response.strip() and response.response == result.text
    assert len(result.token_ids) == 12
    check_re_retrieval(result, topics)

    streaming = index.as_query_engine(llm=llm, similarity_top_k=1, streaming=True).query(QUESTION)
    deltas = list(streaming.response_gen)
    assert len(deltas) > 1 and "".join(deltas) == response.response


def test_flashback_layout_hands_the_nodes_over(index, llm, python_docs):
    from llama_index.llms.flashback import as_flashback_query_engine

    topics = [t for t, _ in python_docs]
    engine = as_flashback_query_engine(index, llm, similarity_top_k=2)
    response = engine.query(QUESTION)
    result = llm.last_result
    assert response.response == result.text and response.response.strip()
    # first block = exactly the two nodes the query engine retrieved, in its order
    first = [p.text for p in result.retrievals[0].passages]
    assert first == [n.node.get_content() for n in response.source_nodes]
    assert len(result.retrievals[1].passages) == 1                  # later blocks: the LLM's top_k
    assert set(titles(result.retrievals[1])) <= set(topics)
    # the question stays at the front: the prompt is short, the nodes are not in it
    assert result.stats.prompt_tokens < 60

    async def run():
        return await as_flashback_query_engine(index, llm, similarity_top_k=2).aquery(QUESTION)

    assert asyncio.run(run()).response == response.response


def test_chat_engine(index, llm):
    chat = index.as_chat_engine(chat_mode="context", llm=llm, similarity_top_k=1)
    reply = chat.chat("Explain the try statement.")
    assert reply.response.strip() and reply.response == llm.last_result.text
    assert len(llm.last_result.retrievals) == 2
    assert "<|im_start|>" in llm.messages_to_prompt(chat.chat_history)   # SmolLM2's own chat template
