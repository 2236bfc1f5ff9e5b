"""FlashBackLLM / ChatFlashBack take what a HuggingFacePipeline / ChatHuggingFace user writes:
from_model_id(...), model_id=, pipeline_kwargs, model_kwargs, device_map, torch_dtype, integer devices,
ChatFlashBack(llm=...); Hugging Face names that mean something else here point at the right one."""

import pytest
import torch

from flashback_rag import load_model
from flashback_rag.errors import ConfigError
from flashback_rag.retrievers import BM25Retriever
from langchain_flashback import ChatFlashBack, FlashBackLLM

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


def test_from_model_id_as_hugging_face_pipeline(bm25, folder):
    llm = FlashBackLLM.from_model_id(str(folder), task="text-generation", device=-1,
                                     model_kwargs={"attn_implementation": "eager", "torch_dtype": torch.float32},
                                     pipeline_kwargs={"max_new_tokens": 5, "do_sample": False}, retriever=bm25,
                                     ignore_eos=True, stride=4)
    llm.invoke(PROMPT)
    assert len(llm.last_result.token_ids) == 5
    assert llm.engine.model.config._attn_implementation == "eager" and llm.dtype == "float32"
    assert llm.invoke(PROMPT, pipeline_kwargs={"max_new_tokens": 3}) and len(llm.last_result.token_ids) == 3
    with pytest.raises(ConfigError, match="task 'summarization'"):
        FlashBackLLM.from_model_id(str(folder), task="summarization", retriever=bm25)
    with pytest.raises(ConfigError, match="backend 'openvino'"):
        FlashBackLLM.from_model_id(str(folder), backend="openvino", retriever=bm25)


def test_model_id_and_the_hf_spellings_of_settings(bm25):
    llm = FlashBackLLM(model_id="tiny-random-llama", retriever=bm25, torch_dtype=torch.float32,
                       device_map="cpu", max_new_tokens=4)
    assert llm.model == "tiny-random-llama" and llm.dtype == "float32" and llm.device_map == "cpu"
    with pytest.raises(TypeError, match="got model and its Hugging Face spelling model_id"):
        FlashBackLLM(model="tiny-random-llama", model_id="smollm2-135m", retriever=bm25)
    chat = ChatFlashBack(model_id="tiny-random-llama", retriever=bm25, max_new_tokens=4)
    assert chat.model == "tiny-random-llama"


def test_chat_flashback_wraps_a_flashback_llm_as_chat_hugging_face_does(bm25):
    llm = FlashBackLLM(model="tiny-random-llama", retriever=bm25, stride=4, max_new_tokens=6, ignore_eos=True,
                       temperature=0.0, stopping_ids=[7])
    chat = ChatFlashBack(llm=llm)
    assert chat.engine is llm.engine and chat.retriever is bm25
    assert chat.max_new_tokens == 6 and chat.stopping_ids == [7] and chat.model == "tiny-random-llama"
    assert chat.invoke("Capital of France?").content == chat.engine.generate(
        "user: Capital of France?\nassistant:", max_new_tokens=6, ignore_eos=True, stop_token_ids=[7]).text
    assert ChatFlashBack(llm=llm, max_new_tokens=3).max_new_tokens == 3
    with pytest.raises(ConfigError, match="takes a langchain_flashback.FlashBackLLM"):
        ChatFlashBack(llm="tiny-random-llama")


@pytest.mark.parametrize("keyword, says", [
    ("max_length", "did you mean 'max_new_tokens'\\? Hugging Face's max_length counts the prompt too"),
    ("task", "not applicable: FlashBack generates text"),
    ("batch_size", "not applicable: sequences run one at a time"),
    ("pipeline", "did you mean 'model'\\? pass the pipeline's model and tokenizer"),
])
def test_hugging_face_names_point_at_the_right_keyword(tiny_engine, keyword, says):
    with pytest.raises(TypeError, match=f"'{keyword}' \\({says}"):
        FlashBackLLM(model=tiny_engine, **{keyword: 16})
    llm = FlashBackLLM(model=tiny_engine, max_new_tokens=4)
    with pytest.raises(TypeError, match="'max_length' \\(did you mean 'max_new_tokens'"):
        llm.invoke(PROMPT, max_length=3)
    with pytest.raises(ConfigError, match="return_full_text=True is not supported"):
        llm.invoke(PROMPT, pipeline_kwargs={"return_full_text": True})
