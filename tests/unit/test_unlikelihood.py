"""The copy unlikelihood: candidates are the passage tokens that would continue a match with the text, and
the term pushes their probability down only where the text went another way."""

import math

import pytest
import torch

from flashback_rag.training.packing import collate_packed, pack_record
from flashback_rag.training.unlikelihood import copy_candidate, copy_candidates, copy_unlikelihood


def test_the_longest_match_names_the_candidate():
    passages = [[7, 8, 1], [6, 7, 8, 2]]
    # "7 8" matches in both passages, "6 7 8" only in the second: its continuation wins
    assert copy_candidate([5, 6, 7, 8], passages, min_match=2) == 2
    # equally long matches: the first passage's
    assert copy_candidate([9, 7, 8], passages, min_match=2) == 1
    assert copy_candidate([9, 7, 8], passages, min_match=3) == -1          # too short
    assert copy_candidate([6, 7, 8], [[6, 7, 8]], min_match=1) == -1       # the match ends the passage
    assert copy_candidate([8], [[8, 4, 8, 5]], min_match=1) == 4           # the first of equal matches
    assert copy_candidate([], [[1, 2]], min_match=1) == -1
    assert copy_candidate([1, 2], [], min_match=1) == -1


def test_candidates_follow_the_packed_target_order():
    record = {"tokens": [1, 2, 3, 4, 5, 6, 7, 8], "points": [2, 5], "stride": 3,
              "passages": [[[2, 3, 9]], [[4, 5, 6, 7, 0]]]}
    packed = pack_record(record, "append", copy_min_match=1)
    # point 2 (targets 3 4 5): after "1 2" the passage continues "2" with 3 (a hit), after "2 3" with 9
    # (the text says 4: a miss), then nothing matches; point 5 (targets 6 7 8): "4 5" -> 6, "4 5 6" -> 7,
    # "4 5 6 7" -> 0 (the text says 8: a miss)
    assert packed.targets == [3, 4, 5, 6, 7, 8]
    assert packed.copy_candidates == [3, 9, -1, 6, 7, 0]
    with pytest.raises(ValueError, match="min_match"):
        copy_candidates(record["tokens"], record["points"], record["passages"], 3, min_match=0)
    assert pack_record(record, "append").copy_candidates == []              # only when asked


@pytest.mark.parametrize("mode", ["segments", "mask"])
def test_collated_candidates_are_padded_like_the_labels(mode):
    short = {"tokens": [1, 2, 3, 4, 5], "points": [2], "stride": 3, "passages": [[[2, 3, 9]]]}
    long = {"tokens": [1, 2, 3, 4, 5, 6, 7, 8], "points": [2, 5], "stride": 3, "passages": [[[2, 3]], [[5, 6, 1]]]}
    batch = collate_packed([pack_record(r, "append", copy_min_match=1) for r in (short, long)], 0, mode=mode)
    assert batch["copy_candidates"].tolist() == [[3, 9, -1, -1, -1, -1], [3, -1, -1, 6, 1, -1]]
    assert (batch["labels"][0, 3:] == -100).all()
    plain = collate_packed([pack_record(r, "append") for r in (short, long)], 0, mode=mode)
    assert "copy_candidates" not in plain


def test_unlikelihood_is_minus_log_one_minus_p_where_the_text_went_elsewhere():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]]))
    labels = torch.tensor([[1, 0, 2, -100]])
    candidates = torch.tensor([[0, 0, -1, 0]])        # a miss, a hit, no candidate, padding
    term = copy_unlikelihood(logits, labels, candidates)
    assert math.isclose(float(term[0, 0]), -math.log(0.5), rel_tol=1e-5)
    assert term[0, 1:].abs().sum() == 0
    certain = copy_unlikelihood(torch.tensor([[[50.0, -50.0]]]), torch.tensor([[1]]), torch.tensor([[0]]))
    assert torch.isfinite(certain).all() and certain.item() > 10           # large, never infinite


def test_its_gradient_lowers_the_candidate_and_raises_the_rest():
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    copy_unlikelihood(logits, torch.tensor([[2]]), torch.tensor([[1]])).sum().backward()
    grad = logits.grad[0, 0]
    assert grad[1] > 0 and (grad[[0, 2, 3]] < 0).all()                    # descent: candidate down
