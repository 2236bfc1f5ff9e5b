"""The shipped FlashBack model: a model name everywhere one is taken, with its trained layout as defaults."""

import json

import pytest
import torch

from flashback_rag import FlashBack, load_model
from flashback_rag.cli import main
from flashback_rag.demo import demo_index
from flashback_rag.errors import ModelNotFoundError
from flashback_rag.models import SHIPPED, add_marker_tokens, shipped_adapter
from flashback_rag.retrievers import load_index

pytestmark = pytest.mark.integration
NAME = "smollm2-135m-flashback"


@pytest.fixture(scope="module")
def shipped():
    return load_model(NAME)


def test_the_adapter_ships_inside_the_package():
    folder = shipped_adapter(NAME)
    assert {"adapter_model.safetensors", "adapter_config.json", "flashback.json", "README.md"} <= {
        p.name for p in folder.iterdir()}
    assert folder.stat().st_size < 50_000_000
    assert sum(p.stat().st_size for p in folder.iterdir()) < 20_000_000     # a few MB: LoRA + two rows


def test_loads_with_its_recorded_layout(shipped):
    model, tokenizer = shipped
    cfg = model.flashback_config
    assert (cfg.pattern, cfg.markers, cfg.echo_tokens, cfg.block_positions) == ("append", True, 16, "before")
    base, base_tokenizer = load_model(SHIPPED[NAME][0])
    marks = add_marker_tokens(base, base_tokenizer)
    trained = model.get_input_embeddings()(torch.tensor(marks.as_list()))
    assert not torch.allclose(trained, base.get_input_embeddings().weight[marks.as_list()])


def test_from_pretrained_uses_the_trained_settings_and_stays_exact(shipped):
    retriever = load_index(demo_index())
    fb = FlashBack(*shipped, retriever, shipped[0].flashback_config)
    again = FlashBack.from_pretrained(NAME, retriever=retriever)
    assert again.config == fb.config
    prompt = "A context manager is an object that"
    cached = fb.generate(prompt, max_new_tokens=20, ignore_eos=True, output_scores=True)
    reference = fb.generate(prompt, max_new_tokens=20, ignore_eos=True, output_scores=True, use_cache=False)
    assert cached.token_ids == reference.token_ids
    for a, b in zip(cached.scores, reference.scores):
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-3, atol=1e-3)
    assert len(cached.retrievals) == 2


def test_cli_generate_and_eval_with_the_shipped_model(tmp_path, capsys):
    index = str(demo_index())
    assert main(["generate", "--model", NAME, "--index", index, "--max-new-tokens", "8", "--json",
                 "The with statement"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pattern"] == "append" and len(result["token_ids"]) == 8
    text = tmp_path / "t.txt"
    text.write_text("The with statement is used to wrap the execution of a block with methods defined by a "
                    "context manager. " * 6, encoding="utf-8")
    assert main(["eval", "ppl", "--model", NAME, "--text", str(text), "--index", index, "--max-tokens", "64",
                 "--max-positions", "256", "--quiet"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["pattern"] == "append" and scored["echo_tokens"] == 16 and scored["ppl"] > 1


def test_an_adapter_on_top_is_refused():
    with pytest.raises(ModelNotFoundError, match="already carries"):
        load_model(NAME, adapter="somewhere")


def test_demo_with_an_adapter_folder_equals_the_shipped_name(capsys):
    """`demo --model BASE --adapter DIR` runs the FlashBack row with that adapter (merged, as the shipped
    model loads): the shipped folder given as an adapter writes the shipped model's own text."""
    common = ["demo", "--json", "--pages", "1", "--new-tokens", "16", "--prompt-tokens", "64"]
    assert main(common + ["--model", "smollm2-135m", "--adapter", str(shipped_adapter(NAME))]) == 0
    with_adapter = json.loads(capsys.readouterr().out)
    assert main(common) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert with_adapter["adapter"] == str(shipped_adapter(NAME)) and with_adapter["base_model"] == "smollm2-135m"
    generated = [r["pages"][0]["generated"] for r in (with_adapter, shipped)]
    assert generated[0]["flashback"]["text"] == generated[1]["flashback"]["text"]
    assert generated[0]["prepend"]["text"] == generated[1]["prepend"]["text"]
    assert generated[0]["flashback"]["block_positions"] == "before"
    assert with_adapter["pages"][0]["rows"]["flashback"]["ppl"] == pytest.approx(
        shipped["pages"][0]["rows"]["flashback"]["ppl"], rel=1e-3)
