"""Training on tiny-random-llama: preparation layout, loss going down, what changes, save/load, mismatches."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("peft")

from flashback_rag.corpus import Document
from flashback_rag.errors import AdapterMismatchError, ConfigError, FlashBackError
from flashback_rag.models import add_marker_tokens, load_model
from flashback_rag.retrievers import BM25Retriever
from flashback_rag.adapters import read_meta
from flashback_rag.training.data import layout, read_examples
from flashback_rag.training.evaluate import (compare_text_results, prepared_perplexity, text_perplexity,
                                             windows_perplexity)
from flashback_rag.training.prepare import PrepareConfig, prepare, read_windows, token_stream
from flashback_rag.training.trainer import TrainConfig, train

MAX_POS, STRIDE = 96, 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: thread hand-offs cost more than the maths on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _docs(prefix: str, n: int) -> list[Document]:
    topics = ["cats purr when content", "dogs bark at strangers", "rivers flow to the sea",
              "bread needs flour and yeast", "trains run on rails", "bees make honey from nectar"]
    return [Document(title=f"{prefix}{i}", text=" ".join(f"{topics[(i + j) % len(topics)]} number {j}."
                                                         for j in range(12)))
            for i in range(n)]


@pytest.fixture(scope="module")
def corpus():
    index_docs = _docs("index", 8)
    retriever = BM25Retriever.build([d.text for d in index_docs], titles=[d.title for d in index_docs])
    return {"train": _docs("train", 6), "validation": _docs("val", 2)}, retriever


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus):
    sources, retriever = corpus
    _, tok = load_model("tiny-random-llama")
    out = tmp_path_factory.mktemp("prep") / "data"
    cfg = PrepareConfig(stride=STRIDE, query_tokens=16, doc_tokens=24, max_positions=MAX_POS, shard_size=16)
    args = prepare(sources, retriever, tok, out, cfg, show_progress=False)
    return out, args, tok


def test_prepared_layout_is_src_markers_passages_tgt_under_the_bound(prepared, corpus):
    out, args, tok = prepared
    model, _ = load_model("tiny-random-llama")
    marks = add_marker_tokens(model, tok)
    stream = token_stream(corpus[0]["train"], tok)
    examples = read_examples(out / "train")
    assert len(examples) == args["counts"]["train"] > 20
    lengths = set()
    for ex in examples:
        ids = layout(ex, "append", marks)
        passages = [t for p in ex["passages"] for t in p]
        assert ids == ex["src"] + [marks.left] + passages + [marks.right] + ex["tgt"]
        assert len(ids) <= MAX_POS and len(ex["tgt"]) == STRIDE and ex["passages"]
        assert all(len(p) <= 24 for p in ex["passages"])
        i = ex["point"]       # src and tgt are the stream around the retrieval point
        assert ex["src"] == stream[i - len(ex["src"]):i] and ex["tgt"] == stream[i:i + STRIDE]
        lengths.add(len(ids))
    assert len(lengths) > 3   # the random start position makes examples vary in length


def test_default_construction_fills_max_positions(tmp_path, corpus):
    sources, retriever = corpus
    _, tok = load_model("tiny-random-llama")
    cfg = PrepareConfig(stride=STRIDE, query_tokens=16, doc_tokens=24, max_positions=MAX_POS,
                        construction="default", top_k=2)
    prepare({"train": sources["train"]}, retriever, tok, tmp_path / "d", cfg, show_progress=False)
    for ex in read_examples(tmp_path / "d" / "train"):
        assert len(ex["passages"]) == 2
        assert len(ex["src"]) + 2 + sum(map(len, ex["passages"])) + len(ex["tgt"]) == MAX_POS


def test_prepare_resumes_and_refuses_other_arguments(prepared, corpus):
    out, args, tok = prepared
    sources, retriever = corpus
    shard = sorted((out / "train").glob("*.jsonl"))[0]
    stamp = shard.stat().st_mtime_ns
    shard.unlink()
    later = sorted((out / "train").glob("*.jsonl"))[-1]
    later_stamp = later.stat().st_mtime_ns
    cfg = PrepareConfig(stride=STRIDE, query_tokens=16, doc_tokens=24, max_positions=MAX_POS, shard_size=16)
    again = prepare(sources, retriever, tok, out, cfg, show_progress=False)
    assert again["counts"] == args["counts"] and shard.is_file() and shard.stat().st_mtime_ns != stamp
    assert later.stat().st_mtime_ns == later_stamp          # finished shards are not redone
    with pytest.raises(FlashBackError, match="other arguments"):
        prepare(sources, retriever, tok, out, PrepareConfig(stride=4, max_positions=MAX_POS, doc_tokens=24),
                show_progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared):
    out, _, _ = prepared
    adapter = tmp_path_factory.mktemp("adapter") / "append-markers"
    cfg = TrainConfig(model="tiny-random-llama", data=str(out), out=str(adapter), pattern="append",
                      markers=True, learning_rate=5e-3, batch_size=8, max_steps=24, logging_steps=4,
                      warmup_ratio=0.1, report_to="none")
    model, tok, metrics = train(cfg, show_progress=False)
    return adapter, model, tok, metrics, out


def test_training_lowers_the_loss(trained):
    adapter, model, tok, metrics, data = trained
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert losses[-1] < losses[0] - 0.3
    base, base_tok = load_model("tiny-random-llama")
    val = read_windows(data / "validation")             # packed training evaluates on windows
    before = windows_perplexity(base, base_tok, val, "append", markers=True)["ppl"]
    after = windows_perplexity(model, tok, val, "append", markers=True)["ppl"]
    assert after < before and math.isclose(after, metrics["eval_ppl"], rel_tol=1e-4)


@pytest.mark.parametrize("pattern,echo", [("append", 0), ("append", 4), ("none", 0)])
def test_packed_window_perplexity_equals_separate_examples(trained, pattern, echo):
    """Evaluation packs windows for append / none and gives the numbers of one example per point."""
    _, model, tok, _, data = trained
    val = read_windows(data / "validation")
    packed = windows_perplexity(model, tok, val, pattern, True, echo=echo, pack=True)
    separate = windows_perplexity(model, tok, val, pattern, True, echo=echo, pack=False)
    assert packed["packed"] and not separate["packed"]
    assert packed["tokens"] == separate["tokens"] == sum(len(r["points"]) for r in val) * STRIDE
    assert math.isclose(packed["ppl"], separate["ppl"], rel_tol=1e-5)
    assert len(packed["nll_by_position"]) == STRIDE


def test_prepared_windows_cover_the_stream_under_the_bound(prepared):
    data, args, _ = prepared
    cfg = PrepareConfig(**args["config"])
    for split in ("train", "validation"):
        records = read_windows(data / split)
        assert args["counts"][f"{split}_windows"] == len(records)
        for r in records:
            assert len(r["tokens"]) <= cfg.window_length and len(r["points"]) == len(r["passages"])
            for at, found in zip(r["points"], r["passages"]):
                block = sum(map(len, found)) + 2
                assert at >= cfg.window_prefix and at + STRIDE + block <= MAX_POS
        # consecutive windows: each one's first target follows the previous one's last
        for a, b in zip(records, records[1:]):
            assert b["start"] + b["points"][0] == a["start"] + a["points"][-1] + STRIDE


def test_marker_rows_start_distinct_and_both_train(trained):
    """Markers start apart (not both at the mean) and both rows move at their own learning rate."""
    adapter, model, *_ = trained
    base, tok = load_model("tiny-random-llama")
    marks = add_marker_tokens(base, tok)
    start = base.get_input_embeddings().weight[marks.as_list()].detach().clone()
    assert not torch.equal(start[0], start[1])
    mean = base.get_input_embeddings().weight[:marks.left].mean(0)
    assert not torch.allclose(start[0], mean) and not torch.allclose(start[1], mean)
    trained_rows = model.merge_and_unload().get_input_embeddings().weight[marks.as_list()].detach()
    moved = (trained_rows - start).norm(dim=-1)
    assert (moved > 1e-2 * start.norm(dim=-1)).all(), moved


def test_marker_rows_have_their_own_learning_rate(prepared, tmp_path):
    """With a vanishing LoRA rate, only the marker rows (at --marker-lr) move noticeably."""
    data, _, _ = prepared
    cfg = TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / "a"), pattern="append",
                      learning_rate=1e-9, marker_lr=5e-2, batch_size=2, max_steps=3, warmup_ratio=0.0,
                      report_to="none", max_eval_examples=2)
    model, _, _ = train(cfg, show_progress=False)
    base, tok = load_model("tiny-random-llama")
    marks = add_marker_tokens(base, tok)
    start = base.get_input_embeddings().weight[marks.as_list()]
    rows = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    assert ((rows - start).abs().max(dim=-1).values > 1e-2).all()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert max(float(p.detach().abs().max()) for p in lora_b) < 1e-6


@pytest.mark.parametrize("init", ["mean", "offset", "tokens"])
def test_marker_inits(init):
    base, tok = load_model("tiny-random-gpt2")
    rows = base.get_input_embeddings().weight.shape[0]
    marks = add_marker_tokens(base, tok, init=init)
    weight = base.get_input_embeddings().weight
    assert torch.equal(weight[:rows], load_model("tiny-random-gpt2")[0].get_input_embeddings().weight)
    assert torch.equal(weight[marks.left], weight[marks.right]) == (init == "mean")


def test_prefix_loss_weight_adds_the_windows_own_loss(prepared, tmp_path):
    """The first step's logged loss is target loss + w x prefix loss (linear in w, the same batch), the
    weight is recorded with the adapter, and evaluation still scores the targets only."""
    data, _, _ = prepared
    first = {}
    for weight in (0.0, 1.0, 2.0):
        cfg = TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / f"a{weight}"),
                          pattern="append", echo_tokens=4, prefix_loss_weight=weight, learning_rate=1e-9,
                          marker_lr=1e-9, batch_size=4, max_steps=1, logging_steps=1, report_to="none",
                          max_eval_examples=4)
        _, _, metrics = train(cfg, show_progress=False)
        first[weight] = next(h["loss"] for h in metrics["log_history"] if "loss" in h)
        assert read_meta(tmp_path / f"a{weight}")["training"]["prefix_loss_weight"] == weight
    assert first[1.0] - first[0.0] > 1.0                                  # a window token costs nats
    assert math.isclose(first[2.0] - first[1.0], first[1.0] - first[0.0], rel_tol=1e-3)
    with pytest.raises(ConfigError, match="prefix_loss_weight needs packed training"):
        TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / "b"), pattern="append",
                    pack=False, prefix_loss_weight=1.0)


def test_copy_unlikelihood_adds_its_logged_term(prepared, tmp_path):
    """--copy-unlikelihood w: the first step's loss is the target loss + w x the logged copy unlikelihood
    (the same batch), the term is positive on real passages, and the weight is recorded with the adapter;
    layouts without packed passages refuse it."""
    data, _, _ = prepared
    logged = {}
    for weight in (0.0, 2.0):
        cfg = TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / f"u{weight}"),
                          pattern="append", echo_tokens=4, copy_unlikelihood=weight, copy_min_match=1,
                          learning_rate=1e-9, marker_lr=1e-9, batch_size=4, max_steps=1, logging_steps=1,
                          report_to="none", max_eval_examples=4)
        _, _, metrics = train(cfg, show_progress=False)
        logged[weight] = next(h for h in metrics["log_history"] if "loss" in h)
        assert read_meta(tmp_path / f"u{weight}")["training"]["copy_unlikelihood"] == weight
    term = logged[2.0]["loss_copy_unlikelihood"]
    assert term > 0 and "loss_copy_unlikelihood" not in logged[0.0]
    assert math.isclose(logged[2.0]["loss"] - logged[0.0]["loss"], 2.0 * term, rel_tol=2e-2, abs_tol=2e-4)
    with pytest.raises(ConfigError, match="copy_unlikelihood needs packed training of the append layout"):
        TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / "b"), pattern="prepend",
                    copy_unlikelihood=1.0)
    with pytest.raises(ConfigError, match="copy_min_match must be a positive integer"):
        TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / "b"), copy_min_match=0)


def test_unpacked_training_still_works(prepared, tmp_path):
    data, _, _ = prepared
    cfg = TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / "a"), pattern="append",
                      echo_tokens=4, pack=False, learning_rate=5e-3, batch_size=8, max_steps=4, report_to="none",
                      max_eval_examples=8)
    _, _, metrics = train(cfg, show_progress=False)
    assert metrics["train_examples"] > 8 and math.isfinite(metrics["eval_ppl"])
    assert read_meta(tmp_path / "a")["config"]["echo_tokens"] == 4


def test_only_lora_weights_and_the_two_marker_rows_change(trained):
    adapter, *_ = trained
    base, tok = load_model("tiny-random-llama")
    marks = add_marker_tokens(base, tok)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:    # LoRA + 2 rows, no embedding
        assert all("lora_" in k or "trainable_tokens" in k for k in f.keys())
    loaded, _ = load_model("tiny-random-llama", adapter=adapter)
    meta = read_meta(adapter)
    assert meta["markers"]["left"] == marks.left and meta["markers"]["right"] == marks.right
    trainable_extra = 0
    for name, tensor in loaded.named_parameters():
        if "lora_" in name or "trainable_tokens" in name:
            trainable_extra += 1
            continue
        key = (name.replace("base_model.model.", "").replace(".base_layer", "")
               .replace(".token_adapter", ""))
        assert torch.equal(tensor, original[key]), name     # frozen weights are bit-identical
    assert trainable_extra > 0
    merged = loaded.merge_and_unload()
    emb, emb0 = merged.get_input_embeddings().weight, original["model.embed_tokens.weight"]
    others = [i for i in range(emb.shape[0]) if i not in marks.as_list()]
    assert torch.equal(emb[others], emb0[others])
    assert not torch.equal(emb[marks.as_list()], emb0[marks.as_list()])


def test_save_load_same_logits_and_merged_export(trained, tmp_path):
    from flashback_rag.adapters import export_merged

    adapter, model, tok, _, data = trained
    ex = read_examples(data / "validation", limit=1)[0]
    loaded, tok2 = load_model("tiny-random-llama", adapter=adapter)
    marks = add_marker_tokens(loaded, tok2)
    ids = torch.tensor([layout(ex, "append", marks)])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    out = export_merged("tiny-random-llama", adapter, tmp_path / "merged")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(out)        # any HF loader reads it, markers included
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(["<MARK_L>", "<MARK_R>"]) == marks.as_list()
    with torch.no_grad():
        c = plain(input_ids=ids).logits
    assert torch.allclose(a, c, atol=1e-4)


def test_rescaled_adapter_is_the_lora_update_times_the_factor(trained, tmp_path):
    from flashback_rag.adapter_scale import rescale_adapter

    adapter, *_, data = trained
    ex = read_examples(data / "validation", limit=1)[0]

    def logits(folder, halve=False):
        model, tok = load_model("tiny-random-llama", adapter=folder)
        if halve:                             # the same update halved by hand: every lora_B times 0.5
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if ".lora_B." in name:
                        param.mul_(0.5)
        ids = torch.tensor([layout(ex, "append", add_marker_tokens(model, tok))])
        with torch.no_grad():
            return model(input_ids=ids).logits

    half = rescale_adapter(adapter, 0.5, tmp_path / "half")
    assert torch.allclose(logits(half), logits(adapter, halve=True), atol=1e-5)
    assert not torch.allclose(logits(half), logits(adapter), atol=1e-3)
    assert read_meta(half)["rescaled"]["factor"] == 0.5
    assert read_meta(half)["markers"] == read_meta(adapter)["markers"]     # the marker rows as trained
    back = rescale_adapter(half, 2.0, tmp_path / "back")                    # factors multiply
    assert read_meta(back)["rescaled"]["factor"] == 1.0
    assert torch.allclose(logits(back), logits(adapter), atol=1e-5)


def test_rescale_refuses_what_it_cannot_rescale(trained, prepared, tmp_path, capsys):
    from flashback_rag.adapter_scale import rescale_adapter
    from flashback_rag.cli import main

    adapter, *_ = trained
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(FlashBackError, match="--factor"):
            rescale_adapter(adapter, bad, tmp_path / "x")
    with pytest.raises(FlashBackError, match="itself"):
        rescale_adapter(adapter, 0.5, adapter)
    data, _, _ = prepared
    full = tmp_path / "full"
    train(TrainConfig(model="tiny-random-llama", data=str(data), out=str(full), tune="full", pattern="none",
                      learning_rate=1e-3, batch_size=2, max_steps=1, report_to="none", max_eval_examples=2),
          show_progress=False)
    with pytest.raises(AdapterMismatchError, match="not a LoRA adapter"):
        rescale_adapter(full, 0.5, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    capsys.readouterr()                       # (training's own progress output)
    for argv in (["--adapter", str(adapter), "--factor", "0"], ["--adapter", str(full), "--factor", "0.5"],
                 ["--adapter", str(tmp_path / "missing"), "--factor", "0.5"]):
        assert main(["rescale", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("flashback: error:")
    assert main(["rescale", "--adapter", str(adapter), "--factor", "0.25", "--out", str(tmp_path / "q")]) == 0
    assert read_meta(tmp_path / "q")["rescaled"]["factor"] == 0.25
    assert json.loads((tmp_path / "q" / "adapter_config.json").read_text())["lora_alpha"] == pytest.approx(
        0.25 * json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"])


def test_from_pretrained_restores_the_adapter_settings(trained):
    from flashback_rag import FlashBack

    adapter, *_ = trained
    retriever = BM25Retriever.build(["cats purr when content", "dogs bark at strangers"])
    fb = FlashBack.from_pretrained("tiny-random-llama", adapter=str(adapter), retriever=retriever)
    assert fb.config.pattern == "append" and fb.config.markers and fb.config.stride == STRIDE
    assert fb.markers.as_list() == [read_meta(adapter)["markers"][k] for k in ("left", "right")]
    result = fb.generate("cats purr", max_new_tokens=10, ignore_eos=True)
    assert fb.generate("cats purr", max_new_tokens=10, ignore_eos=True, use_cache=False).token_ids == result.token_ids


def test_mismatched_adapter_is_refused(trained):
    adapter, *_ = trained
    with pytest.raises(AdapterMismatchError, match="model_type"):
        load_model("tiny-random-qwen2", adapter=adapter)
    model, tok = load_model("tiny-random-llama")
    tok.add_tokens(["<extra>"])                  # another tokenizer: the markers would land elsewhere
    from flashback_rag.adapters import apply_adapter

    with pytest.raises(AdapterMismatchError):
        apply_adapter(model, tok, adapter)
    with pytest.raises(AdapterMismatchError, match="no flashback.json"):
        load_model("tiny-random-llama", adapter=adapter / "checkpoints")


def test_multi_passage_average_and_text_perplexity(trained, corpus):
    adapter, model, tok, _, data = trained
    val = read_examples(data / "validation", limit=4)
    single = prepared_perplexity(model, tok, val, "append", True, top_k=1, multi="average")
    concat = prepared_perplexity(model, tok, val, "append", True, top_k=1, multi="concat")
    assert math.isclose(single["ppl"], concat["ppl"], rel_tol=1e-4)   # one passage: both scorings agree
    alone = prepared_perplexity(model, tok, val, "append", True, top_k=1, batch_size=1)
    assert math.isclose(alone["ppl"], concat["ppl"], rel_tol=1e-4)    # left padding changes nothing
    assert len({len(layout(ex, "append", None)) for ex in val}) > 1
    text = corpus[0]["validation"][0].text
    res = text_perplexity(model, tok, text, corpus[1], "append", True, stride=STRIDE, query_tokens=16,
                          doc_tokens=24, max_positions=MAX_POS, max_tokens=200)
    assert res["tokens"] == (200 // STRIDE - 1) * STRIDE and res["ppl"] > 1
    # one loss per scored chunk, summing to the total; an interval around the point; grouped by 256 tokens
    assert len(res["chunk_nll"]) == res["examples"] == 200 // STRIDE - 1
    assert math.isclose(sum(res["chunk_nll"]) / res["tokens"], res["nll"], rel_tol=1e-4)
    assert res["groups"] == 1 and res["ppl_ci"] is None and "fewer than the 10" in res["ppl_ci_note"]
    assert compare_text_results(res, res)["ratio_ci"] is None
    # runs of 16 tokens (two chunks): 12 runs, enough for intervals
    res = text_perplexity(model, tok, text, corpus[1], "append", True, stride=STRIDE, query_tokens=16,
                          doc_tokens=24, max_positions=MAX_POS, max_tokens=200, group_tokens=16)
    assert res["groups"] == 12 and res["ppl_ci"][0] < res["ppl"] < res["ppl_ci"][1]
    same = compare_text_results(res, res)
    assert (same["ratio"], same["ratio_ci"]) == (1.0, [1.0, 1.0])
    none = text_perplexity(model, tok, text, None, "none", stride=STRIDE, max_positions=MAX_POS, max_tokens=200,
                           group_tokens=16)
    versus = compare_text_results(res, none)
    assert versus["ratio"] == pytest.approx(res["ppl"] / none["ppl"], rel=1e-4)
    assert versus["ratio_ci"][0] <= versus["ratio"] <= versus["ratio_ci"][1]
    with pytest.raises(ConfigError, match="same tokens"):
        compare_text_results(res, text_perplexity(model, tok, text, None, "none", stride=STRIDE,
                                                  max_positions=MAX_POS, max_tokens=160))


def test_full_tuning_writes_a_model_folder_with_its_settings(prepared, tmp_path):
    from flashback_rag import FlashBack

    data, _, _ = prepared
    cfg = TrainConfig(model="tiny-random-llama", data=str(data), out=str(tmp_path / "full"), tune="full",
                      pattern="prepend", markers=True, learning_rate=1e-3, batch_size=8, max_steps=2,
                      report_to="none", max_eval_examples=4)
    model, tok, _ = train(cfg, show_progress=False)
    assert read_meta(tmp_path / "full")["tune"] == "full"
    retriever = BM25Retriever.build(["cats purr when content"])
    fb = FlashBack.from_pretrained(str(tmp_path / "full"), retriever=retriever)
    assert fb.config.pattern == "prepend" and fb.config.markers
    marks = read_meta(tmp_path / "full")["markers"]
    assert fb.markers.as_list() == [marks["left"], marks["right"]]
    ids = torch.tensor([[5, 6, marks["left"], 7, marks["right"], 8]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, fb.model(input_ids=ids).logits, atol=1e-5)


def test_cli_reports_a_mismatched_adapter_as_one_line(trained, capsys):
    from flashback_rag.cli import main

    adapter, *_, data = trained
    code = main(["eval", "ppl", "--model", "tiny-random-qwen2", "--adapter", str(adapter), "--data", str(data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("flashback: error: adapter")


def test_cli_generate_with_an_adapter(trained, tmp_path, capsys):
    import json

    from flashback_rag.cli import main
    from flashback_rag.retrievers import BM25Retriever

    adapter, *_ = trained
    BM25Retriever.build(["cats purr when content", "dogs bark at night"]).save(tmp_path / "idx")
    base = ["generate", "--model", "tiny-random-llama", "--index", str(tmp_path / "idx"), "--stride", "4",
            "--doc-tokens", "16", "--max-new-tokens", "6", "--json", "cats purr"]
    assert main(base + ["--adapter", str(adapter)]) == 0
    with_adapter = json.loads(capsys.readouterr().out)
    assert main(base) == 0
    without = json.loads(capsys.readouterr().out)
    assert with_adapter["retrievals"] and with_adapter["token_ids"] != without["token_ids"]
    bad = ["generate", "--model", "tiny-random-gpt2", "--adapter", str(adapter), "--pattern", "none", "hi"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flashback: error: adapter")
