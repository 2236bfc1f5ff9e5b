"""Models of a named published shape with random weights: timing big models without downloading them.

Speed depends on the shape (layers, hidden size, heads, vocabulary), not on the weight values, so a
Llama-2-7B-shaped model with random weights times like Llama-2-7B. ``random_model`` builds one directly
on the target device and dtype, with the byte-level tokenizer of the tiny test models (generation is
restricted to the tokenizer's ids; the full-vocabulary output layer is still computed, as it would be).

    >>> from flashback_rag.shapes import SHAPES, parameter_count
    >>> sorted(SHAPES)[:3]
    ['gpt2', 'gpt2-xl', 'llama-13b']
    >>> round(parameter_count("llama-7b") / 1e9, 2)        # Llama-2-7B: 6.74B parameters
    6.74

Command line: ``python benchmarks/speed.py --random-init llama-7b --device cuda --dtype bfloat16``.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ModelNotFoundError

# name -> (model_type, config fields). Shapes as published in each model's config.json.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   max_position_embeddings=8192, tie_word_embeddings=True)),
    "smollm2-360m": ("llama", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                   num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                                   max_position_embeddings=8192, tie_word_embeddings=True)),
    "tinyllama-1.1b": ("llama", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                     num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                     max_position_embeddings=2048, tie_word_embeddings=False)),
    "llama-7b": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                               max_position_embeddings=4096, tie_word_embeddings=False)),
    "llama-13b": ("llama", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                                max_position_embeddings=4096, tie_word_embeddings=False)),
    "opt-125m": ("opt", dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                             word_embed_proj_dim=768, vocab_size=50272, max_position_embeddings=2048)),
    "opt-1.3b": ("opt", dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                             word_embed_proj_dim=2048, vocab_size=50272, max_position_embeddings=2048)),
    "opt-6.7b": ("opt", dict(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32,
                             word_embed_proj_dim=4096, vocab_size=50272, max_position_embeddings=2048)),
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    "gpt2-xl": ("gpt2", dict(n_embd=1600, n_layer=48, n_head=25, n_positions=1024, vocab_size=50257)),
}


def shape_config(name: str, max_positions: int | None = None):
    """The transformers config of shape ``name``; ``max_positions`` raises the position limit if needed.

    Raising it only enlarges the (random) position table of learned-position models such as OPT;
    it does not change the cost of a forward over the same number of tokens.
    """
    from transformers import AutoConfig

    if name not in SHAPES:
        raise ModelNotFoundError(f"unknown model shape {name!r}; choose one of {', '.join(sorted(SHAPES))}")
    model_type, fields = SHAPES[name]
    fields = dict(fields)
    key = "n_positions" if model_type == "gpt2" else "max_position_embeddings"
    if max_positions is not None and max_positions > fields[key]:
        fields[key] = max_positions
    return AutoConfig.for_model(model_type, **fields)


def parameter_count(name: str) -> int:
    """Parameters of shape ``name``, counted on the meta device (nothing is allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config(name))
    return sum(p.numel() for p in model.parameters())


def random_model(name: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 max_positions: int | None = None, seed: int = 0):
    """``(model, tokenizer)``: shape ``name`` with random weights, built on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM

    from .models import _finish, byte_level_tokenizer, resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    config = shape_config(name, max_positions)
    tokenizer = byte_level_tokenizer()
    tokenizer.model_max_length = max(tokenizer.model_max_length, max_positions or 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        try:
            torch.set_default_dtype(dt)     # allocate in the target dtype: a 7B model in fp32 would not fit
            with torch.device(dev):
                model = AutoModelForCausalLM.from_config(config, dtype=dt)
        finally:
            torch.set_default_dtype(previous)
    return _finish(model, tokenizer, dev)
