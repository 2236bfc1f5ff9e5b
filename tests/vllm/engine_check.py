"""Run FlashBack on the in-process vLLM backend and print what it generated, as JSON (one line).

Run by tests/vllm/test_vllm_engine.py with the vLLM environment's Python (vLLM's pins differ from the
project's, so it cannot be imported in the test process):
    python tests/vllm/engine_check.py MODEL MAX_NEW_TOKENS PROMPT [PROMPT ...]

MODEL is what the README's in-process example passes: a model name (``smollm2-135m-flashback``, exported
for vLLM there and then) or a folder. The block takes the paper's positions, which vLLM can serve.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # tests/helpers.py


def main() -> None:
    from helpers import HashRetriever

    from flashback_rag import FlashBack

    model, n, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    engine = FlashBack.from_pretrained(
        model, retriever=HashRetriever(), backend="vllm", block_positions="after",
        backend_options={"dtype": "float32", "block_size": 32, "max_model_len": 2048, "enforce_eager": True})
    try:
        single = [engine.generate(p, n, ignore_eos=True) for p in prompts]
        batch = engine.generate_batch(prompts, n, ignore_eos=True)
        print("RESULT " + json.dumps({
            "backend": engine.backend.name, "config": engine.config.to_dict(),
            "single": [r.token_ids for r in single], "batch": [r.token_ids for r in batch],
            "cached": [r.stats.request_cached_tokens for r in single],
            "points": [[x.position for x in r.retrievals] for r in single]}), flush=True)
    finally:
        engine.backend.shutdown()


if __name__ == "__main__":       # vLLM starts its workers with spawn
    main()
