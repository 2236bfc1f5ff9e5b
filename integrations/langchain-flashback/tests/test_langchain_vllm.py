"""FlashBackLLM / ChatFlashBack on a real `vllm serve` of the shipped model (the root conftest's
`vllm_server`): built from the server's URL, round-tripped through to_dict, and `batch` / `abatch`
keeping every sequence in flight at once with the same texts as one call at a time."""

import asyncio

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from flashback_rag.errors import BackendError, ConfigError
from langchain_flashback import ChatFlashBack, FlashBackLLM

PROMPTS = ["The with statement is used to", "A class definition defines", "The for statement iterates over",
           "An import statement finds a module and"]
NEW = 24          # 2 segments of the shipped stride (16): each sequence re-retrieves once mid-way


@pytest.fixture(scope="module")
def served_llm(vllm_server, docs_bm25):
    return FlashBackLLM(server=vllm_server.url, retriever=docs_bm25, max_new_tokens=NEW, ignore_eos=True)


def test_built_from_the_server_url_with_the_exported_settings(served_llm, vllm_server, docs_bm25):
    engine = served_llm.engine
    assert engine.backend.name == "vllm-server" and engine.backend.concurrent
    assert served_llm.model == "smollm2-135m-flashback" and served_llm.server == vllm_server.url
    assert engine.config.stride == 16 and engine.config.echo_tokens == 16   # the export's flashback.json
    # to_dict / from_dict rebuild a served LLM with the same settings (the retriever is re-attached)
    again = FlashBackLLM.from_dict(served_llm.to_dict(), retriever=docs_bm25)
    assert again.engine.backend.name == "vllm-server" and again.server == vllm_server.url
    assert again.engine.config == engine.config and again.to_dict() == served_llm.to_dict()
    # a served engine given as model= records its server too
    assert FlashBackLLM(model=engine, max_new_tokens=NEW).server == vllm_server.url


def test_batch_keeps_every_sequence_in_flight_with_the_texts_of_single_invokes(served_llm, counted):
    alone = [served_llm.invoke(p) for p in PROMPTS]
    engine = counted(served_llm.engine)
    llm = FlashBackLLM(model=engine, max_new_tokens=NEW, ignore_eos=True)
    chain = PromptTemplate.from_template("{topic}") | llm | StrOutputParser()
    assert chain.batch([{"topic": p} for p in PROMPTS]) == alone
    assert engine.backend.most == len(PROMPTS), "batch did not keep every sequence in flight"
    engine.backend.most = 0
    assert asyncio.run(llm.abatch(PROMPTS)) == alone
    assert engine.backend.most > 1, "abatch ran the sequences one at a time"


def test_chat_batch_overlaps_on_the_server(served_llm, counted):
    engine = counted(served_llm.engine)
    chat = ChatFlashBack(model=engine, max_new_tokens=16, ignore_eos=True)
    conversations = [[("human", p)] for p in PROMPTS[:3]]
    replies = chat.batch(conversations)
    assert engine.backend.most > 1, "the conversations never overlapped"
    assert [r.content for r in replies] == [chat.invoke(c).content for c in conversations]


def test_server_settings_that_cannot_apply_are_refused_before_any_request(docs_bm25):
    url = "http://127.0.0.1:9/v1"                     # nothing listens there; no request is made
    with pytest.raises(ConfigError, match="flashback export"):
        FlashBackLLM(server=url, adapter="some/adapter", retriever=docs_bm25)
    with pytest.raises(ConfigError, match="vllm serve"):
        FlashBackLLM(server=url, dtype="float16", retriever=docs_bm25)
    with pytest.raises(ConfigError, match="served name"):
        FlashBackLLM(model=("a", "pair"), server=url, retriever=docs_bm25)
    with pytest.raises(ConfigError, match="unknown FlashBackConfig field"):
        FlashBackLLM(server=url, config={"strid": 4}, retriever=docs_bm25)
    with pytest.raises(ConfigError, match="tokenizer= goes with server="):
        FlashBackLLM(model="tiny-random-llama", tokenizer="some/tokenizer", retriever=docs_bm25)
    with pytest.raises(BackendError, match="not reachable"):
        FlashBackLLM(server=url, retriever=docs_bm25)
