import pytest

from flashback_rag import FlashBackConfig
from flashback_rag.errors import ConfigError


def test_json_round_trip(tmp_path):
    cfg = FlashBackConfig(pattern="prepend", markers=False, stride=8, top_k=2, max_context=1024)
    assert FlashBackConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "c.json")
    assert FlashBackConfig.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("bad", [
    dict(pattern="middle"), dict(stride=0), dict(query_tokens=-1), dict(doc_tokens=0), dict(top_k=0),
    dict(stride=1.5), dict(stride=True), dict(max_context=1), dict(passage_template="{title}"),
    dict(mark_left="<X>", mark_right="<X>"),
])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ConfigError):
        FlashBackConfig(**bad)


def test_unknown_json_fields_are_rejected():
    with pytest.raises(ConfigError, match="unknown FlashBackConfig field"):
        FlashBackConfig.from_dict({"strid": 3})
    with pytest.raises(ConfigError, match="not valid"):
        FlashBackConfig.from_json("{nope")


def test_block_size():
    assert FlashBackConfig(doc_tokens=100, top_k=2).max_block_tokens == 202
    assert FlashBackConfig(doc_tokens=100, markers=False).max_block_tokens == 100
    assert FlashBackConfig(pattern="none").max_block_tokens == 0
