"""load_model and FlashBack take Hugging Face's loading options as HF users spell them: model_kwargs and
tokenizer_kwargs reach from_pretrained, device_map places the model, torch_dtype is dtype, -1 / 0 are
devices; the engine stops at stop_token_ids; loading is quiet in a log (no progress bar, no FutureWarning)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from flashback_rag import FlashBack, FlashBackConfig, load_model
from flashback_rag.errors import ConfigError, ModelNotFoundError
from flashback_rag.models import resolve_device

from helpers import HashRetriever


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """tiny-random-llama saved as a Hugging Face folder, so loads go through the real from_pretrained."""
    out = tmp_path_factory.mktemp("tiny-folder")
    model, tokenizer = load_model("tiny-random-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_integer_devices_as_hf_pipelines_take_them():
    assert resolve_device(-1) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelNotFoundError, match="cuda:0.*CUDA is not available"):
            resolve_device(0)
    with pytest.raises(ConfigError, match="-1 is the CPU"):
        resolve_device(-2)


def test_model_and_tokenizer_kwargs_reach_from_pretrained(folder, caplog):
    with caplog.at_level(logging.WARNING):
        model, tokenizer = load_model(folder, device=-1,
                                      model_kwargs={"torch_dtype": torch.bfloat16, "attn_implementation": "eager"},
                                      tokenizer_kwargs={"padding_side": "left"})
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    assert tokenizer.padding_side == "left" and model.device == torch.device("cpu")
    assert "torch_dtype" not in caplog.text          # given to transformers as dtype: no deprecation notice
    with pytest.raises(ModelNotFoundError, match="could not load model"):   # the option did reach it
        load_model(folder, model_kwargs={"attn_implementation": "no-such-kernel"})


def test_device_map_places_the_model(folder):
    model, _ = load_model(folder, device_map="auto")
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_model(folder, model_kwargs={"device_map": {"": "cpu"}})
    assert model.device == torch.device("cpu")
    with pytest.raises(ConfigError, match="device= or device_map=, not both"):
        load_model(folder, device="cpu", device_map="auto")


def test_options_given_twice_or_in_the_wrong_place_are_refused(folder):
    with pytest.raises(ConfigError, match="dtype is given twice"):
        load_model(folder, dtype="float32", model_kwargs={"torch_dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="'device' is load_model's own device= argument"):
        load_model(folder, model_kwargs={"device": "cpu"})
    with pytest.raises(ConfigError, match="model_kwargs must be a dict"):
        load_model(folder, model_kwargs=["attn_implementation"])


def test_a_model_built_in_memory_takes_what_applies_to_it():
    model, _ = load_model("tiny-random-llama", device_map="cpu", model_kwargs={"attn_implementation": "eager"})
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="built in memory.*revision.*tokenizer_kwargs 'padding_side'"):
        load_model("tiny-random-llama", model_kwargs={"revision": "main"}, tokenizer_kwargs={"padding_side": "left"})


def test_from_pretrained_passes_them_on_and_vllm_refuses_them(folder):
    fb = FlashBack.from_pretrained(str(folder), retriever=HashRetriever(), stride=4,
                                   model_kwargs={"attn_implementation": "eager"})
    assert fb.model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="model_kwargs are Hugging Face loading options of the transformers"):
        FlashBack.from_pretrained(str(folder), retriever=HashRetriever(), backend="vllm",
                                  model_kwargs={"attn_implementation": "eager"})


def test_generation_stops_at_stop_token_ids():
    model, tokenizer = load_model("tiny-random-llama")
    fb = FlashBack(model, tokenizer, HashRetriever(), FlashBackConfig(stride=4, doc_tokens=16))
    free = fb.generate("The capital of France", max_new_tokens=12, ignore_eos=True)
    stop = free.token_ids[5]
    cut = free.token_ids[:free.token_ids.index(stop)]
    for use_cache in (True, False):
        stopped = fb.generate("The capital of France", max_new_tokens=12, ignore_eos=True, stop_token_ids=[stop],
                              use_cache=use_cache)
        assert stopped.token_ids == cut and stopped.finish_reason == "stop"
    stream = fb.stream("The capital of France", max_new_tokens=12, ignore_eos=True, stop_token_ids=[stop])
    assert "".join(stream) == tokenizer.decode(cut) and stream.result.token_ids == cut
    with pytest.raises(ConfigError, match="stop_token_ids must be token ids"):
        fb.generate("x", stop_token_ids=[len(tokenizer) + 5])


def test_loading_is_quiet_in_a_log(folder, capfd):
    # stderr is not a terminal here, as in a log, a pipe or a CI run: no "Loading weights" bar in it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(folder)
        load_model(folder, device_map="auto", model_kwargs={"torch_dtype": "float32"})
        load_model("tiny-random-llama")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
