"""FlashBackLLM takes what a HuggingFaceLLM user writes: context_window, stopping_ids, system_prompt and
query_wrapper_prompt honoured by complete(), model_name, torch_dtype, model_kwargs / tokenizer_kwargs /
device_map, integer devices; Hugging Face names that mean something else here point at the right one."""

import logging

import pytest
import torch
from llama_index.core import Document, SummaryIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMCompletionStartEvent
from llama_index.core.prompts import PromptTemplate

from flashback_rag import load_model
from flashback_rag.errors import ConfigError, ModelNotFoundError
from flashback_rag.retrievers import BM25Retriever
from llama_index.llms.flashback import FlashBackLLM, as_flashback_query_engine

PROMPT = "The capital of France"


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.build(["Paris is the capital of France.", "Cats purr when content."])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-folder")
    model, tokenizer = load_model("tiny-random-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_context_window_is_what_llamaindex_packs(bm25, caplog):
    llm = FlashBackLLM("tiny-random-llama", retriever=bm25, doc_tokens=32, context_window=200, max_new_tokens=8)
    block = llm.engine.config.max_block_tokens
    assert llm.metadata.context_window == 200 and llm.engine.max_context == 200 + block
    assert FlashBackLLM.from_dict(llm.to_dict(), retriever=bm25).engine.config == llm.engine.config
    with caplog.at_level(logging.WARNING, logger="llama_index.llms.flashback.base"):
        big = FlashBackLLM("tiny-random-llama", retriever=bm25, doc_tokens=32, context_window=3900)
    assert "context_window 3900 does not fit" in caplog.text              # as HuggingFaceLLM: warned, cut down
    assert big.metadata.context_window == 512 - block and big.engine.max_context == 512
    with pytest.raises(ConfigError, match="context_window .* or max_context .*, not both"):
        FlashBackLLM("tiny-random-llama", retriever=bm25, context_window=200, max_context=300)


def test_stopping_ids_end_the_text(bm25):
    free = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=12, ignore_eos=True)
    ids = free.complete(PROMPT).raw.token_ids
    llm = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=12, ignore_eos=True,
                       stopping_ids=[ids[4]])
    response = llm.complete(PROMPT)
    assert response.raw.token_ids == ids[:ids.index(ids[4])] and response.raw.finish_reason == "stop"
    assert "".join(r.delta for r in llm.stream_complete(PROMPT)) == response.text
    with pytest.raises(ConfigError, match="token ids of this tokenizer"):
        FlashBackLLM("tiny-random-llama", retriever=bm25, stopping_ids=[10**6])


class Prompts(BaseEventHandler):
    """The prompts LlamaIndex hands to the LLM (its own instrumentation events)."""

    seen: list = []

    def handle(self, event, **kwargs):
        if isinstance(event, LLMCompletionStartEvent):
            self.seen.append(event.prompt)


def test_system_prompt_and_query_wrapper_prompt_are_honoured_once(bm25):
    llm = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=6, ignore_eos=True,
                       system_prompt="You answer briefly.", query_wrapper_prompt="<q>{query_str}</q>")
    assert isinstance(llm.query_wrapper_prompt, PromptTemplate)          # a plain string, as HuggingFaceLLM takes
    wrapped = "<q>You answer briefly.\n\nThe capital of France</q>"       # LlamaIndex's own order (LLM._extend_prompt)
    plain = FlashBackLLM("tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=6, ignore_eos=True)
    assert llm.complete(PROMPT).raw.token_ids == plain.complete(wrapped).raw.token_ids
    assert llm.complete(wrapped, formatted=True).raw.token_ids == plain.complete(wrapped).raw.token_ids

    handler, dispatcher = Prompts(), get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:                                # a query engine's predict() wraps the prompt itself: not a second time
        index = SummaryIndex.from_documents([Document(text="Paris is in France.")])
        as_flashback_query_engine(index, llm, response_mode="simple_summarize").query("Capital of France?")
    finally:
        dispatcher.event_handlers.remove(handler)
    assert handler.seen[-1].count("You answer briefly.") == 1 and handler.seen[-1].startswith("<q>")


def test_hugging_face_loading_keywords(bm25, folder):
    llm = FlashBackLLM(model_name=str(folder), retriever=bm25, device=-1, torch_dtype=torch.bfloat16,
                       model_kwargs={"attn_implementation": "eager"}, tokenizer_kwargs={"padding_side": "left"},
                       max_new_tokens=4, ignore_eos=True)
    model = llm.engine.model
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    assert llm.engine.tokenizer.padding_side == "left" and llm.dtype == "bfloat16" and llm.device == -1
    again = FlashBackLLM.from_dict(llm.to_dict(), retriever=bm25)          # the options are settings: kept
    assert again.engine.model.config._attn_implementation == "eager" and again.engine.model.dtype == torch.bfloat16
    assert FlashBackLLM(str(folder), retriever=bm25, device_map="auto").engine.model.device.type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ModelNotFoundError, match="CUDA is not available"):
            FlashBackLLM(str(folder), retriever=bm25, device=0)


def test_loading_options_for_a_loaded_model_are_refused(tiny_engine):
    with pytest.raises(ConfigError, match="device, model_kwargs say how to load a model given by name.*loaded"):
        FlashBackLLM(tiny_engine, device="cpu", model_kwargs={"attn_implementation": "eager"})


@pytest.mark.parametrize("keyword, says", [
    ("max_length", "did you mean 'max_new_tokens'\\? Hugging Face's max_length counts the prompt too"),
    ("tokenizer_name", "not applicable: the tokenizer is the model's own"),
    ("task", "not applicable: FlashBack generates text"),
    ("num_output", "did you mean 'max_new_tokens'"),
])
def test_hugging_face_names_point_at_the_right_keyword(tiny_engine, keyword, says):
    with pytest.raises(TypeError, match=f"'{keyword}' \\({says}"):
        FlashBackLLM(tiny_engine, **{keyword: 16})
    llm = FlashBackLLM(tiny_engine, max_new_tokens=4)
    with pytest.raises(TypeError, match="'max_length' \\(did you mean 'max_new_tokens'"):
        llm.complete(PROMPT, max_length=3)
    with pytest.raises(TypeError, match="'num_beams' \\(not applicable"):
        llm.complete(PROMPT, generate_kwargs={"num_beams": 2})
