"""The LlamaIndex LLM refuses what it cannot honour: misspelt keywords, LangChain retrievers, no room in the
window; it warns about window slides, round-trips through to_dict/from_dict, and passes generation options."""

from __future__ import annotations

import logging

import pytest

from flashback_rag.errors import ConfigError
from flashback_rag.retrievers import BM25Retriever
from llama_index.llms.flashback import FlashBackLLM, as_flashback_query_engine, check_query_engine

TEXTS = ["Paris is the capital of France.", "Rome is the capital of Italy.", "Cats purr when content."]


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.build(TEXTS, titles=["France", "Italy", "Cats"])


def test_misspelt_keywords_are_errors(tiny_engine):
    with pytest.raises(TypeError, match="'strid' \\(did you mean 'stride'\\?\\)"):
        FlashBackLLM(tiny_engine, strid=16)
    with pytest.raises(TypeError, match="did you mean 'max_new_tokens'"):
        FlashBackLLM(tiny_engine, max_tokens=64)
    llm = FlashBackLLM(tiny_engine, max_new_tokens=4)
    with pytest.raises(TypeError, match="'max_tokens'"):
        llm.complete("The capital of France", max_tokens=3)
    with pytest.raises(TypeError, match="generate_kwargs got unknown keyword argument\\(s\\) 'num_beams'"):
        FlashBackLLM(tiny_engine, generate_kwargs={"num_beams": 4})


def test_a_langchain_vector_store_is_refused_with_the_right_adapter(tiny_engine):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=8))
    with pytest.raises(ConfigError, match="LangChain InMemoryVectorStore.*langchain_flashback.FlashBackLLM"):
        FlashBackLLM(tiny_engine, retriever=store)
    with pytest.raises(ConfigError, match="LangChain"):
        FlashBackLLM(tiny_engine, retriever=store.as_retriever())


def test_a_window_slide_is_warned_once_per_call_and_reported(tiny_engine, caplog):
    llm = FlashBackLLM(tiny_engine, max_new_tokens=8, ignore_eos=True)
    long_prompt = "The capital of France is Paris. " * 20            # 640 bytes > 512 positions
    with caplog.at_level(logging.WARNING, logger="flashback_rag.frameworks"):
        response = llm.complete(long_prompt)
        streamed = list(llm.stream_complete(long_prompt))
    slides = [r for r in caplog.records if "context window" in r.getMessage()]
    assert len(slides) == 2 and "tokens were dropped" in slides[0].getMessage()
    assert response.additional_kwargs["slides"] and streamed[-1].additional_kwargs["slides"]
    assert response.additional_kwargs["slides"][0]["dropped_tokens"] > 0


def test_round_trip_through_to_dict_with_the_retriever_reattached(bm25):
    llm = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, doc_tokens=24, max_new_tokens=6,
                       ignore_eos=True, repetition_penalty=1.1)
    data = llm.to_dict()
    with pytest.raises(ConfigError, match="retriever=\\.\\.\\."):
        FlashBackLLM.from_dict(data)
    again = FlashBackLLM.from_dict(data, retriever=bm25)
    assert again.to_dict() == data and again.engine.config == llm.engine.config
    assert again.complete("The capital").text == llm.complete("The capital").text
    assert FlashBackLLM.from_json(llm.to_json(), retriever=bm25).to_dict() == data


def test_generation_options_pass_through(tiny_engine):
    options = dict(max_new_tokens=16, ignore_eos=True, repetition_penalty=1.3, no_repeat_ngram_size=2)
    want = tiny_engine.generate("The capital of France", **options).token_ids
    llm = FlashBackLLM(tiny_engine, max_new_tokens=16, ignore_eos=True, repetition_penalty=1.3,
                       no_repeat_ngram_size=2)
    assert llm.complete("The capital of France").raw.token_ids == want
    plain = FlashBackLLM(tiny_engine, max_new_tokens=16, ignore_eos=True)
    by_call = plain.complete("The capital of France", generate_kwargs={"repetition_penalty": 1.3,
                                                                       "no_repeat_ngram_size": 2})
    assert by_call.raw.token_ids == want
    hf_style = FlashBackLLM(tiny_engine, max_new_tokens=16, ignore_eos=True,
                            generate_kwargs={"do_sample": True, "top_k": 5, "seed": 3})
    sampled = hf_style.complete("The capital of France").raw.token_ids
    assert sampled == tiny_engine.generate("The capital of France", max_new_tokens=16, ignore_eos=True,
                                           temperature=1.0, top_k=5, seed=3).token_ids


def test_refine_on_a_512_position_model_fails_up_front_with_the_reason(bm25, caplog):
    from llama_index.core import Document, SummaryIndex

    from llama_index.llms.flashback import base

    base._WARNED_WINDOWS.clear()
    with caplog.at_level(logging.WARNING, logger="llama_index.llms.flashback.base"):
        FlashBackLLM("tiny-random-llama", retriever=bm25, max_new_tokens=40)
        FlashBackLLM("tiny-random-llama", retriever=bm25, max_new_tokens=40)     # once per window size
    assert len([r for r in caplog.records if "padding" in r.getMessage()]) == 1

    index = SummaryIndex.from_documents([Document(text="Owls hunt at night.")])
    llm = FlashBackLLM("tiny-random-llama", retriever=bm25)      # defaults: 256 new tokens, 128-token passages
    for mode in ("refine", "compact"):
        with pytest.raises(ConfigError, match="too little room is left.*512 positions.*max_new_tokens"):
            as_flashback_query_engine(index, llm, response_mode=mode)
    small = FlashBackLLM("tiny-random-llama", retriever=bm25, max_new_tokens=16, doc_tokens=32)
    with pytest.raises(ConfigError, match="padding of 500"):       # refine's own answer padding: never fits
        as_flashback_query_engine(index, small, response_mode="refine")
    with pytest.raises(ConfigError, match="padding of 500"):       # the plain default (compact) engine too
        check_query_engine(index.as_query_engine(llm=small), small)
    engine = as_flashback_query_engine(index, small, response_mode="simple_summarize")
    assert engine.query("When do owls hunt?").response is not None


def test_langchain_flashback_retriever_is_refused_naming_its_package(tiny_engine, bm25):
    # Same class name as this package's FlashBackRetriever: the message must say which one it got.
    from langchain_flashback import FlashBackRetriever

    with pytest.raises(ConfigError, match=r"LangChain FlashBackRetriever \(langchain_flashback\.retrievers\."
                                          r"FlashBackRetriever\).*langchain_flashback\.FlashBackLLM.*\.retriever\)"):
        FlashBackLLM(tiny_engine, retriever=FlashBackRetriever(retriever=bm25))
