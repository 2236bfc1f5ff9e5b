"""Packed training is the same computation as one example per retrieval point, with the prefix read once.

The summed target loss and the gradients of every LoRA weight and marker row must be equal (fp32
tolerance) between one packed window and its separate examples, for append (with and without echo,
with a point whose retrieval found nothing) and for no retrieval.
"""

import pytest
import torch

from flashback_rag.models import add_marker_tokens, load_model
from flashback_rag.training.data import LeftPadCollator, layout_item, target_nll
from flashback_rag.training.packing import (attention_mask, collate_packed, pack_window, packed_losses,
                                            packed_token_nll, unpack_window)
from flashback_rag.training.tuning import LoraSettings, lora_model

STRIDE = 6


def _lora_with_markers(model, tokenizer, seed=0):
    markers = add_marker_tokens(model, tokenizer)
    model = lora_model(model, LoraSettings(r=4, alpha=8, dropout=0.0), markers.as_list())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_B" in name:          # B starts at 0: give A a gradient to compare
                param.data.normal_(0, 0.05)
    model.eval()      # no dropout (GPT-2 has 0.1): gradients still flow, and the two runs are comparable
    return model, markers


def _window(seed, vocab, length=40):
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(3, vocab, (length,), generator=g).tolist()
    points = [6, 12, 18, 27, 34]
    passages = [[torch.randint(3, vocab, (n,), generator=g).tolist() for n in sizes]
                for sizes in ([5], [3, 4], [], [7], [2])]          # the third point found nothing
    return window, points, passages


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _packed_loss_and_grads(model, markers, window, points, passages, pattern, echo, pad, mode, block_positions,
                           keep=False):
    from flashback_rag.patterns import build_block

    model.zero_grad(set_to_none=True)
    blocks = [build_block(found, markers) if pattern == "append" else [] for found in passages]
    batch = collate_packed([pack_window(window, points, blocks, STRIDE, echo, block_positions, keep)], pad, mode=mode)
    loss = packed_token_nll(model, batch, markers.as_list()).sum()
    loss.backward()
    return loss.detach(), _grads(model)


def _separate_loss_and_grads(model, markers, window, points, passages, pattern, echo, pad, block_positions,
                             keep=False):
    model.zero_grad(set_to_none=True)
    examples = unpack_window(window, points, passages, STRIDE, keep)
    items = [layout_item(ex, pattern, markers, echo=echo, block_positions=block_positions) for ex in examples]
    assert ("position_ids" in items[0]) == (block_positions == "before" and pattern == "append")
    nll, count = target_nll(model, LeftPadCollator(pad)(items), markers.as_list())
    assert int(count) == STRIDE * len(points)
    nll.backward()
    return nll.detach(), _grads(model)


def _assert_equivalent(model, markers, tokenizer, pattern, echo, rtol, atol, mode="segments", block_positions="after",
                       keep=False, window=None):
    window, points, passages = window or _window(1, min(len(tokenizer), 250))
    pad = tokenizer.pad_token_id or 0
    packed_loss, packed_grads = _packed_loss_and_grads(model, markers, window, points, passages, pattern, echo, pad,
                                                       mode, block_positions, keep)
    loss, grads = _separate_loss_and_grads(model, markers, window, points, passages, pattern, echo, pad,
                                           block_positions, keep)
    torch.testing.assert_close(packed_loss, loss, rtol=rtol, atol=atol)
    assert packed_grads.keys() == grads.keys()
    assert any("trainable_tokens" in n for n in grads) and any("lora_A" in n for n in grads)
    for name in grads:
        # relative to the tensor's own scale: summed fp32 contributions differ in the last bits
        error = (packed_grads[name] - grads[name]).abs().max()
        assert error <= rtol * grads[name].abs().max() + atol, (name, float(error))
    marker_grad = next(g for n, g in grads.items() if "trainable_tokens" in n)
    assert (marker_grad.abs().sum() > 0) == (pattern == "append")


@pytest.mark.parametrize("mode", ["segments", "mask"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("pattern,echo", [("append", 0), ("append", 3), ("none", 0)])
def test_packed_loss_and_gradients_equal_separate_examples(arch, pattern, echo, mode):
    model, tokenizer = load_model(f"tiny-random-{arch}")
    model, markers = _lora_with_markers(model, tokenizer)
    _assert_equivalent(model, markers, tokenizer, pattern, echo, rtol=1e-5, atol=1e-5, mode=mode)


@pytest.mark.parametrize("mode", ["segments", "mask"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("echo", [0, 3])
def test_block_before_packed_equals_separate_examples(arch, echo, mode):
    """block_positions='before': the packed window (positions from pack_window) and the separate examples
    (positions from logical_positions, left-padded) give the same loss and gradients."""
    model, tokenizer = load_model(f"tiny-random-{arch}")
    model, markers = _lora_with_markers(model, tokenizer)
    _assert_equivalent(model, markers, tokenizer, "append", echo, rtol=1e-5, atol=1e-5, mode=mode,
                       block_positions="before")
    window, points, passages = _window(1, 250)
    blocks = [[90, *found[0], 91] if found else [] for found in passages]
    packed = pack_window(window, points, blocks, STRIDE, echo, "before")
    first = len(window)                              # the first segment: block, echo, then the chunk
    assert packed.position_ids[first:first + len(blocks[0])] == list(range(-len(blocks[0]), 0))
    assert packed.position_ids[first + len(blocks[0]):first + len(blocks[0]) + echo + STRIDE] == list(
        range(points[0] - echo, points[0] + STRIDE))


def _window_with_unchanged_blocks(seed, vocab):
    """Contiguous points whose passages repeat: A A A B (none) B, so three points keep one block, one
    keeps the next, and a point after one that found nothing places its block anew."""
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(3, vocab, (48,), generator=g).tolist()
    a, b = ([torch.randint(3, vocab, (n,), generator=g).tolist()] for n in (5, 4))
    return window, [6, 12, 18, 24, 30, 36], [a, a, a, b, [], b]


@pytest.mark.parametrize("mode", ["segments", "mask"])
@pytest.mark.parametrize("arch,block_positions", [("llama", "after"), ("llama", "before"), ("gpt2", "after")])
@pytest.mark.parametrize("echo", [0, 3])
def test_kept_blocks_packed_equal_separate_examples(arch, block_positions, echo, mode):
    """keep_unchanged: points sharing a block share one packed segment (the block once, then a longer chunk);
    loss and gradients equal those of separate examples whose block sits at the point that placed it."""
    from flashback_rag.patterns import build_block

    model, tokenizer = load_model(f"tiny-random-{arch}")
    model, markers = _lora_with_markers(model, tokenizer)
    window = _window_with_unchanged_blocks(2, 250)
    _assert_equivalent(model, markers, tokenizer, "append", echo, rtol=1e-5, atol=1e-5, mode=mode,
                       block_positions=block_positions, keep=True, window=window)
    tokens, points, passages = window
    blocks = [build_block(found, markers) for found in passages]
    kept = pack_window(tokens, points, blocks, STRIDE, echo, block_positions, keep_unchanged=True)
    plain = pack_window(tokens, points, blocks, STRIDE, echo, block_positions)
    assert sorted(set(kept.segment) - {-1}) == [0, 3, 5]           # one segment per placed block
    assert len(plain) - len(kept) == 2 * (len(blocks[0]) + echo)       # the two kept points of A
    assert kept.targets == plain.targets and kept.slots == plain.slots


def test_training_examples_read_what_decoding_reads(tiny_models):
    """The logits an example's layout gives its targets equal the engine's own decoding scores, for the
    paper's positions and for block_positions='before' with an echo, with every block re-inserted and with
    unchanged blocks kept (one definition of the layout)."""
    from helpers import ScriptedRetriever

    from flashback_rag import FlashBack, FlashBackConfig
    from flashback_rag.training.data import tail_logits

    model, tokenizer = tiny_models["llama"]
    prompt = list(range(40, 72))
    for block_positions in ("after", "before"):
        for keep in (False, True):
            cfg = FlashBackConfig(stride=4, query_tokens=8, doc_tokens=12, echo_tokens=3,
                                  block_positions=block_positions, keep_unchanged=keep)
            fb = FlashBack(model, tokenizer, ScriptedRetriever("AABBBA"), cfg)
            result = fb.generate(prompt, max_new_tokens=24, ignore_eos=True, output_scores=True)
            assert [r.kept for r in result.retrievals] == [False, keep, False, keep, keep, False]
            running = prompt + result.token_ids
            owner = None
            for r in result.retrievals:
                owner = owner if r.kept else r.position
                ex = {"src": running[:r.position], "tgt": running[r.position:r.position + 4],
                      "passages": [fb._passage_tokens(p) for p in r.passages], "block_point": owner}
                batch = LeftPadCollator(0)([layout_item(ex, "append", fb.markers, echo=3,
                                                        block_positions=block_positions)])
                with torch.no_grad():
                    logits = tail_logits(model, batch["input_ids"], batch["attention_mask"], 4,
                                         batch.get("position_ids"))
                steps = result.scores[r.step:r.step + 4]
                for k, score in enumerate(steps):
                    finite = torch.isfinite(score)
                    torch.testing.assert_close(logits[0, k][finite], score[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["segments", "mask"])
@pytest.mark.parametrize("pattern,block_positions", [("append", "after"), ("append", "before"), ("none", "after")])
def test_prefix_loss_is_the_windows_own_language_modelling_loss(mode, pattern, block_positions):
    """packed_losses(prefix=True): the target losses are unchanged, and the prefix losses are exactly the
    window's next-token losses read alone (no passage), padding rows included, with gradients."""
    from flashback_rag.patterns import build_block

    base, tokenizer = load_model("tiny-random-llama")
    model, markers = _lora_with_markers(base, tokenizer)
    packed, windows = [], []
    for seed, length in ((1, 40), (2, 33)):                 # two windows of different lengths: padding
        window, points, passages = _window(seed, 250, length)
        points = [p for p in points if p + STRIDE <= length]
        blocks = [build_block(found, markers) if pattern == "append" else [] for found in passages[:len(points)]]
        packed.append(pack_window(window, points, blocks, STRIDE, 3 if pattern == "append" else 0,
                                  block_positions))
        windows.append(window)
    batch = collate_packed(packed, 0, mode=mode)
    plain = packed_token_nll(model, batch, markers.as_list())
    nll, prefix = packed_losses(model, batch, markers.as_list(), prefix=True)
    torch.testing.assert_close(nll, plain, rtol=1e-5, atol=1e-5)
    assert prefix.shape == (2, 39) and (batch["prefix_labels"][1, 32:] == -100).all() and (prefix[1, 32:] == 0).all()
    for row, window in enumerate(windows):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([window])).logits[0, :-1].float()
        logits[:, markers.as_list()] = float("-inf")          # markers are never predicted
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(window[1:]), reduction="none")
        torch.testing.assert_close(prefix[row, :len(window) - 1], expected, rtol=1e-5, atol=1e-5)
    prefix.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)


def test_mask_lets_segments_see_their_prefix_and_themselves_only():
    p = pack_window([1, 2, 3, 4, 5, 6], [2, 4], [[90, 91], [92, 93]], stride=2, echo=1)
    allowed = attention_mask(p, width=len(p) + 1)[0, 0] == 0
    # window: causal among itself
    assert allowed[3, :4].all() and not allowed[3, 4:].any()
    # segment of point 2 (indices 6..10: 90 91 echo(2) 3 4): sees window[:2] and itself causally
    seg = list(range(6, 11))
    for q in seg:
        assert allowed[q, :2].all() and not allowed[q, 2:6].any()
        assert allowed[q, 6:q + 1].all() and not allowed[q, q + 1:].any()
    assert p.input_ids[6:11] == [90, 91, 2, 3, 4] and p.position_ids[6:11] == [2, 3, 4, 5, 6]
    # the other segment never sees this one
    assert not allowed[11:, 6:11].any()
    # padding sees itself only
    assert allowed[len(p)].sum() == 1


def test_collate_pads_rows_and_masks_missing_targets():
    a = pack_window([1, 2, 3, 4, 5, 6], [2], [[90, 91]], stride=2)
    b = pack_window([1, 2, 3, 4, 5, 6, 7, 8], [2, 4], [[90], [91]], stride=2)
    batch = collate_packed([a, b], pad_id=0, mode="mask")
    assert batch["input_ids"].shape == (2, len(b)) and batch["attention_mask"].shape == (2, 1, len(b), len(b))
    assert batch["labels"][0].tolist() == [3, 4, -100, -100]


@pytest.mark.integration
@pytest.mark.parametrize("mode,echo", [("segments", 0), ("segments", 8), ("mask", 8)])
def test_packed_equals_separate_on_smollm2(mode, echo):
    model, tokenizer = load_model("smollm2-135m")        # a fresh copy: LoRA is injected in place
    model, markers = _lora_with_markers(model, tokenizer)
    _assert_equivalent(model, markers, tokenizer, "append", echo, rtol=2e-4, atol=2e-5, mode=mode)
