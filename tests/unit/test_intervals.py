"""Bootstrap intervals: what they must contain, pairing, grouping, and refusals."""

import math

import pytest
import torch

from flashback_rag.training.intervals import bootstrap_means, group_sums, ppl_interval, ratio_interval


def _runs(seed=0, groups=40):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(8, 32, (groups,), generator=gen).double()
    a = counts * (2.0 + 0.5 * torch.rand(groups, generator=gen, dtype=torch.float64))
    return a, counts


def test_a_run_against_itself_has_ratio_one_with_no_width():
    a, counts = _runs()
    draws = bootstrap_means({"a": a, "b": a.clone()}, counts, samples=300)
    assert ratio_interval(a, a, counts, draws["a"], draws["b"]) == [1.0, 1.0, 1.0]


def test_the_interval_holds_the_point_and_the_pairing_narrows_a_shift():
    a, counts = _runs()
    b = a + 0.05 * counts                       # b is worse by 0.05 nats on every token
    draws = bootstrap_means({"a": a, "b": b}, counts, samples=500)
    lo, hi = ppl_interval(draws["a"])
    assert lo < math.exp(float(a.sum() / counts.sum())) < hi
    point, rlo, rhi = ratio_interval(a, b, counts, draws["a"], draws["b"])
    assert point == pytest.approx(math.exp(-0.05)) and rlo == pytest.approx(point) and rhi == pytest.approx(point)
    blo, bhi = ppl_interval(draws["b"])
    assert bhi / blo > 1.01                       # unpaired, the runs' own intervals are wide


def test_same_seed_same_draws_and_mismatched_runs_are_refused():
    a, counts = _runs()
    assert torch.equal(bootstrap_means({"a": a}, counts, 50, seed=3)["a"],
                       bootstrap_means({"a": a}, counts, 50, seed=3)["a"])
    with pytest.raises(ValueError, match="same tokens"):
        bootstrap_means({"a": a, "b": a[:-1]}, counts)
    with pytest.raises(ValueError, match="no groups"):
        bootstrap_means({"a": a[:0]}, counts[:0])


def test_group_sums_cover_every_item_once():
    sums, counts = group_sums(torch.arange(10.0), torch.full((10,), 2), 4)
    assert sums.tolist() == [6.0, 22.0, 17.0] and counts.tolist() == [8.0, 8.0, 4.0]
    with pytest.raises(ValueError):
        group_sums(torch.ones(3), torch.ones(3), 0)


def test_eval_ppl_writes_chunk_losses_and_compares_two_runs(tmp_path, capsys):
    import json

    from flashback_rag.cli import main

    text = tmp_path / "t.txt"
    text.write_text("Cats purr when content. Dogs bark at night and guard the houses of their people. " * 40,
                    encoding="utf-8")
    ppl = ["eval", "ppl", "--model", "tiny-random-llama", "--text", str(text), "--pattern", "none", "--stride", "8",
           "--max-positions", "64", "--quiet"]
    assert main(ppl + ["--output", str(tmp_path / "none.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "none.json").read_text())
    assert "chunk_nll" not in printed and len(saved["chunk_nll"]) == saved["examples"]
    assert saved["groups"] >= 10 and saved["ppl_ci"][0] < saved["ppl"] < saved["ppl_ci"][1]
    assert main(ppl + ["--max-positions", "32", "--compare", str(tmp_path / "none.json")]) == 0
    shorter = json.loads(capsys.readouterr().out)["compare"]
    assert shorter["ppl"] == saved["ppl"] and shorter["ratio_ci"][0] <= shorter["ratio"] <= shorter["ratio_ci"][1]
