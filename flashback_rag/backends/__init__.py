"""Backends the decoding loop can drive: transformers (default, exact reference) and vLLM.

    >>> from flashback_rag.backends import BACKENDS
    >>> sorted(BACKENDS)
    ['transformers', 'vllm', 'vllm-server']
"""

from .base import Backend, SamplingSettings, Session
from .hf import TransformersBackend

# name -> what it is; the vLLM ones import vllm (or talk HTTP) only when built
BACKENDS = {
    "transformers": "in-process Hugging Face model with a token-level KV-cache crop (the reference)",
    "vllm": "in-process vLLM engine; its automatic prefix cache does the crop, it batches sequences",
    "vllm-server": "a running `vllm serve` (OpenAI-compatible HTTP), prompts sent as token ids",
}

__all__ = ["BACKENDS", "Backend", "SamplingSettings", "Session", "TransformersBackend"]
