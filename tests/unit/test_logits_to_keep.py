"""Prefill computes logits for the last position only, also through a PEFT (LoRA) wrapper."""

import torch
from peft import LoraConfig, get_peft_model

from flashback_rag import load_model
from flashback_rag.kv_cache import CachedLogits
from flashback_rag.results import GenerationStats


def test_peft_wrapped_model_keeps_only_the_last_logits():
    model, _ = load_model("tiny-random-llama")
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    seen = []
    hook = wrapped.get_base_model().lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    source = CachedLogits(wrapped, GenerationStats())
    with torch.inference_mode():
        logits = source.resync(list(range(40)))
    hook.remove()
    assert logits.shape == (257,)
    assert seen == [torch.Size([1, 1, 257])]      # not (1, 40, 257)
