"""What a GPU run needs of the engine, checked on the CPU: other dtypes, other devices, older transformers.

The device machine (see benchmarks/README.md) runs transformers 5.17 with bf16 weights; the checks here
are the parts of that which a CPU can show. The GPU itself is checked by benchmarks/gpu/run.sh.
"""

import pytest
import torch

from flashback_rag import FlashBack, FlashBackConfig, load_model
from flashback_rag.errors import ConfigError
from flashback_rag.models import _marker_rows, byte_level_tokenizer
from helpers import HashRetriever

PROMPT = "The capital of France is a city that"


# ----------------------------------------------------------------------------- bf16 parity
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("fields", [dict(pattern="append"), dict(pattern="append", echo_tokens=4, block_positions="before"),
                                    dict(pattern="prepend"), dict(pattern="none")], ids=["append", "echo+before",
                                                                                        "prepend", "none"])
def test_bf16_cached_matches_recomputed_within_tolerance(arch, fields):
    """bf16 weights: logits within a few bf16 steps of the recompute's, and the same token wherever the
    choice is clear (a near-tie may go either way in bf16; the texts then part and are not compared on)."""
    model, tokenizer = load_model(f"tiny-random-{arch}", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    config = FlashBackConfig(stride=4, query_tokens=8, doc_tokens=24, **fields)
    runs = [FlashBack(model, tokenizer, HashRetriever(), config).generate(
        PROMPT, max_new_tokens=24, ignore_eos=True, output_scores=True, use_cache=use_cache) for use_cache in (True, False)]
    cached, reference = runs
    assert all(s.dtype == torch.float32 for s in cached.scores)      # the choice is made in float32
    scale = max(float(s[torch.isfinite(s)].abs().max()) for s in reference.scores)
    tolerance = 0.03 * scale
    for step, (a, b) in enumerate(zip(cached.scores, reference.scores)):
        finite = torch.isfinite(b)
        assert torch.equal(finite, torch.isfinite(a))
        assert float((a[finite] - b[finite]).abs().max()) <= tolerance, step
        if cached.token_ids[step] != reference.token_ids[step]:
            top = torch.topk(b[finite], 2).values
            assert float(top[0] - top[1]) <= 2 * tolerance, f"parted at step {step} on a clear choice"
            break


def test_penalty_is_applied_in_float32_under_bf16_weights():
    """A repetition penalty applied to bf16 logits rounds away the difference that decides the greedy
    choice: 2.984375 / 1.49 is 2.0029 (beats 2.0) in float32, but rounds to 2.0 (a tie) in bf16."""
    from flashback_rag.backends import SamplingSettings, TransformersBackend
    from flashback_rag.results import GenerationResult

    model, _ = load_model("tiny-random-llama", dtype="bfloat16")
    session = TransformersBackend(model).session(GenerationResult("", [], "length", "none"),
                                                 SamplingSettings(repetition_penalty=1.49))
    logits = torch.tensor([2.0, 2.984375], dtype=torch.bfloat16)       # token 1 was seen: penalised
    assert session._pick(logits, history=[1]) == 1


# ----------------------------------------------------------------------------- devices
def test_marker_rows_are_made_on_the_embeddings_device():
    """The 'offset' rows draw their noise on the CPU (the same rows everywhere), then join the embedding's
    device: a model on a GPU must not mix devices (the meta device stands in for one here)."""
    weight = torch.empty(300, 8, device="meta")
    rows = _marker_rows(weight, 300, byte_level_tokenizer(), "offset")
    assert rows.device.type == "meta" and rows.shape == (2, 8)


def test_load_model_takes_a_device_map(tmp_path):
    """device_map='auto' (accelerate places the layers: here, with no GPU, all on the CPU) gives the model
    that device= gives."""
    model, tokenizer = load_model("tiny-random-llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    placed, placed_tokenizer = load_model(str(tmp_path), device_map="auto")
    assert {p.device.type for p in placed.parameters()} == {"cpu"}
    fb = FlashBack(placed, placed_tokenizer, HashRetriever(), FlashBackConfig(stride=4, doc_tokens=16))
    reference = FlashBack(model, tokenizer, HashRetriever(), FlashBackConfig(stride=4, doc_tokens=16))
    assert fb.generate(PROMPT, max_new_tokens=12, ignore_eos=True).token_ids == \
        reference.generate(PROMPT, max_new_tokens=12, ignore_eos=True).token_ids
    alias, _ = load_model("tiny-random-llama", device_map="auto")        # built in process: whole, on one device
    assert next(alias.parameters()).device.type == "cpu"


def test_device_and_device_map_together_are_refused():
    with pytest.raises(ConfigError, match="not both"):
        load_model("tiny-random-llama", device="cpu", device_map="auto")


# ----------------------------------------------------------------------------- older transformers
def _old_slice(hidden_states, logits_to_keep):
    """How transformers before 5.2x sliced: an int keeps the last positions, any tensor indexes dim 1 of
    every row (a 2D tensor gives (B, B, K, H): it has no per-row meaning there)."""
    if isinstance(logits_to_keep, int):
        return hidden_states[:, slice(-logits_to_keep, None) if logits_to_keep else slice(None), :]
    return hidden_states[:, logits_to_keep, :]


@pytest.mark.parametrize("mode", ["segments", "mask"])
def test_packed_loss_is_right_where_transformers_reads_logits_to_keep_the_old_way(monkeypatch, mode):
    """transformers 5.17 (the GPU machine's) has no per-row logits_to_keep: packed training must not need
    it, or its loss is computed on the wrong rows (it was: a packed batch's loss was off by 6-10%)."""
    import transformers.models.llama.modeling_llama as llama

    from flashback_rag.models import add_marker_tokens
    from flashback_rag.patterns import build_block
    from flashback_rag.training.data import LeftPadCollator, layout_item, target_nll
    from flashback_rag.training.packing import collate_packed, pack_window, packed_token_nll, unpack_window

    model, tokenizer = load_model("tiny-random-llama")
    markers = add_marker_tokens(model, tokenizer)
    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(3, 250, (40,), generator=g).tolist() for _ in range(2)]
    points = [6, 12, 18, 27]
    passages = [[torch.randint(3, 250, (n,), generator=g).tolist()] for n in (5, 3, 7, 2)]
    blocks = [build_block(found, markers) for found in passages]
    with torch.no_grad():
        expected = sum(float(target_nll(model, LeftPadCollator(0)(
            [layout_item(ex, "append", markers, echo=3) for ex in unpack_window(w, points, passages, 6)]),
            markers.as_list())[0]) for w in windows)
        monkeypatch.setattr(llama, "slice_logits_to_keep", _old_slice)
        batch = collate_packed([pack_window(w, points, blocks, 6, 3) for w in windows], 0, mode=mode)
        packed = float(packed_token_nll(model, batch, markers.as_list()).sum())
    assert packed == pytest.approx(expected, rel=1e-5)
