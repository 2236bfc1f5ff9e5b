"""The LangChain classes refuse what they cannot honour (misspelt keywords, LlamaIndex retrievers), warn about
window slides, round-trip through LangChain's serialisation, and pass generation options through."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from langchain_core.load import dumpd, dumps, load, loads

from flashback_rag.errors import ConfigError
from flashback_rag.retrievers import BM25Retriever
from langchain_flashback import ChatFlashBack, FlashBackLLM

README = Path(__file__).resolve().parents[1] / "README.md"
TEXTS = ["Paris is the capital of France.", "Rome is the capital of Italy.", "Cats purr when content."]


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.build(TEXTS, titles=["France", "Italy", "Cats"])


@pytest.mark.parametrize("cls", [FlashBackLLM, ChatFlashBack])
def test_misspelt_keywords_are_errors(cls, tiny_engine):
    with pytest.raises(TypeError, match="'strid' \\(did you mean 'stride'\\?\\)"):
        cls(model=tiny_engine, strid=16)
    with pytest.raises(TypeError, match="did you mean 'max_new_tokens'"):
        cls(model=tiny_engine, max_tokens=64)
    llm = cls(model=tiny_engine, max_new_tokens=4)
    with pytest.raises(TypeError, match="'max_tokens'"):
        llm.invoke("The capital of France", max_tokens=3)


def test_llama_index_retrievers_and_indexes_are_refused_with_the_right_adapter(tiny_engine):
    from llama_index.core import Document, SummaryIndex

    index = SummaryIndex.from_documents([Document(text="Owls hunt at night.")])
    for obj in (index, index.as_retriever()):
        with pytest.raises(ConfigError, match="LlamaIndex .*llama_index.llms.flashback.FlashBackLLM"):
            FlashBackLLM(model=tiny_engine, retriever=obj)
    # flashback's own LlamaIndex adapter is a plain flashback-rag retriever: accepted
    from llama_index.llms.flashback import LlamaIndexPassageRetriever

    assert FlashBackLLM(model=tiny_engine, retriever=LlamaIndexPassageRetriever(index.as_retriever()))


def test_a_window_slide_is_warned_once_per_call_and_reported(tiny_engine, caplog):
    llm = FlashBackLLM(model=tiny_engine, max_new_tokens=8, ignore_eos=True)
    long_prompt = "The capital of France is Paris. " * 20            # 640 bytes > 512 positions
    with caplog.at_level(logging.WARNING, logger="flashback_rag.frameworks"):
        result = llm.generate([long_prompt])
        chunks = list(llm.stream(long_prompt))
    assert len([r for r in caplog.records if "context window" in r.getMessage()]) == 2
    assert result.generations[0][0].generation_info["slides"][0]["dropped_tokens"] > 0
    assert chunks


def test_round_trip_through_dumpd_and_to_dict_with_the_retriever_reattached(bm25, tmp_path):
    llm = FlashBackLLM(model="tiny-random-llama", retriever=bm25, stride=4, doc_tokens=24, max_new_tokens=6,
                       ignore_eos=True, repetition_penalty=1.1)
    serialized = dumpd(llm)
    assert "retriever" not in serialized["kwargs"]
    with pytest.raises(ConfigError, match="retriever=\\.\\.\\."):
        FlashBackLLM.from_dict(serialized)
    again = FlashBackLLM.from_dict(serialized, retriever=bm25)
    assert again.engine.config == llm.engine.config and again.invoke("The capital") == llm.invoke("The capital")
    assert FlashBackLLM.from_dict(llm.to_dict(), retriever=bm25).to_dict() == llm.to_dict()
    # LangChain's own loader rebuilds it when the retriever is an index folder (a path is a setting).
    bm25.save(tmp_path / "idx")
    by_path = FlashBackLLM(model="tiny-random-llama", retriever=str(tmp_path / "idx"), stride=4, max_new_tokens=4)
    loaded = load(dumpd(by_path), valid_namespaces=["langchain_flashback"],
                  allowed_objects=[FlashBackLLM])
    assert isinstance(loaded, FlashBackLLM) and loaded.engine.config == by_path.engine.config


def test_generation_options_pass_through(tiny_engine):
    options = dict(max_new_tokens=16, ignore_eos=True, repetition_penalty=1.3, no_repeat_ngram_size=2)
    want = tiny_engine.generate("The capital of France", **options).text
    llm = FlashBackLLM(model=tiny_engine, max_new_tokens=16, ignore_eos=True, repetition_penalty=1.3,
                       no_repeat_ngram_size=2)
    assert llm.invoke("The capital of France") == want
    plain = FlashBackLLM(model=tiny_engine, max_new_tokens=16, ignore_eos=True)
    assert plain.invoke("The capital of France", generate_kwargs={"repetition_penalty": 1.3,
                                                                  "no_repeat_ngram_size": 2}) == want
    assert plain.bind(repetition_penalty=1.3, no_repeat_ngram_size=2).invoke("The capital of France") == want
    with pytest.raises(TypeError, match="'num_beams'"):
        plain.invoke("x", generate_kwargs={"num_beams": 2})


@pytest.mark.parametrize("cls", [FlashBackLLM, ChatFlashBack])
def test_llama_index_flashback_retriever_is_refused_naming_its_package(cls, tiny_engine, bm25):
    # Same class name as langchain_flashback.FlashBackRetriever, but a LlamaIndex retriever: accepted, every
    # retrieval used to fail as a warning while generation went on without passages.
    from llama_index.llms.flashback import FlashBackRetriever

    with pytest.raises(ConfigError, match=r"LlamaIndex FlashBackRetriever \(llama_index\.llms\.flashback\.retrievers"
                                          r"\.FlashBackRetriever\).*llama_index\.llms\.flashback\.FlashBackLLM"
                                          r".*\.flashback_retriever"):
        cls(model=tiny_engine, retriever=FlashBackRetriever(bm25))


# The line the README documents; the test below runs exactly this line.
ROUND_TRIP = ('load(dumpd(llm), valid_namespaces=["langchain_flashback"], '
              'allowed_objects=[FlashBackLLM, ChatFlashBack])')


@pytest.mark.parametrize("cls", [FlashBackLLM, ChatFlashBack])
def test_the_documented_langchain_round_trip_runs_for_both_classes(cls, bm25, tmp_path):
    assert ROUND_TRIP in README.read_text(encoding="utf-8")
    bm25.save(tmp_path / "idx")
    llm = cls(model="tiny-random-llama", retriever=str(tmp_path / "idx"), stride=4, max_new_tokens=4,
              ignore_eos=True)
    loaded = eval(ROUND_TRIP, {"load": load, "dumpd": dumpd, "FlashBackLLM": FlashBackLLM,
                               "ChatFlashBack": ChatFlashBack, "llm": llm})
    assert type(loaded) is cls and loaded.engine.config == llm.engine.config
    as_text = (lambda out: out) if cls is FlashBackLLM else (lambda out: out.content)
    assert as_text(loaded.invoke("The capital")) == as_text(llm.invoke("The capital"))
    again = loads(dumps(llm), valid_namespaces=["langchain_flashback"], allowed_objects=[cls])
    assert type(again) is cls and again.to_dict() == llm.to_dict()
