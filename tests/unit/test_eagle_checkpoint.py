"""Draft-head checkpoints: round trip, corruption -> CheckpointError, published EAGLE weight mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from refrag_rasd_core.eagle.checkpoint import (
    load_draft_head,
    load_eagle_checkpoint,
    map_eagle_state_dict,
    save_draft_head,
)
from refrag_rasd_core.eagle.head import DraftHead
from refrag_rasd_core.errors import CheckpointError
from tiny import tiny_target


@pytest.fixture
def saved(tmp_path: Path):
    target = tiny_target()
    torch.manual_seed(2)
    head = DraftHead.for_target(target, vocab_ids=torch.randperm(96)[:40].sort().values)
    path = save_draft_head(head, tmp_path / "head.safetensors", dtype=torch.float32, target=target,
                           recipe={"steps": 1}, metrics={"top1_agreement": 0.5})
    return target, head, path


def test_round_trip(saved) -> None:
    target, head, path = saved
    loaded = load_draft_head(path, target)
    assert torch.equal(loaded.vocab_ids, head.vocab_ids)
    for k, v in head.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    tokens, hidden = torch.randint(0, 96, (9,)), torch.randn(8, 32)
    head.eval().sync(tokens, hidden)
    loaded.sync(tokens, hidden)
    a, b = head.expand_root(5), loaded.expand_root(5)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert loaded.meta["recipe"] == {"steps": 1}
    assert load_draft_head(path.parent, target).config == head.config  # a folder works too


def test_fp16_storage_is_small_and_loads(tmp_path: Path) -> None:
    target = tiny_target()
    head = DraftHead.for_target(target, draft_vocab_size=40)
    path = save_draft_head(head, tmp_path / "h.safetensors")
    assert load_file(str(path))["fc.weight"].dtype == torch.float16
    assert load_draft_head(path, target).fc.weight.dtype == torch.float32


def test_truncated_file(saved) -> None:
    target, _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_draft_head(path, target)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_draft_head(path, target, verify_hash=False)


def test_wrong_hash(saved) -> None:
    target, _, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="sha256"):
        load_draft_head(path, target)


def test_wrong_shape_tensor(saved) -> None:
    target, _, path = saved
    state = load_file(str(path))
    state["fc.weight"] = torch.zeros(32, 63)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="shape"):
        load_draft_head(path, target, verify_hash=False)


def test_missing_tensor(saved) -> None:
    target, _, path = saved
    state = load_file(str(path))
    del state["layers.0.mlp.up_proj.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="missing"):
        load_draft_head(path, target, verify_hash=False)


def test_other_target_and_missing_files(saved, tmp_path: Path) -> None:
    _, _, path = saved
    with pytest.raises(CheckpointError, match="hidden 32"):
        load_draft_head(path, tiny_target(hidden=48))
    with pytest.raises(CheckpointError, match="not found|no json"):
        load_draft_head(tmp_path / "nothing.safetensors", tiny_target())
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="json"):
        load_draft_head(path, tiny_target())


def _write_eagle_folder(folder: Path, target, bias: bool = True, bin_only: bool = False) -> dict:
    """A published-EAGLE-style folder: config.json + model.safetensors with EAGLE's weight names."""
    cfg = target.config
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "num_hidden_layers": 1, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "bias": bias,
    }))
    H, inter, hd = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(5)
    state = {
        "fc.weight": torch.randn(H, 2 * H, generator=g) * 0.05,
        "layers.0.self_attn.q_proj.weight": torch.randn(H, H, generator=g) * 0.1,
        "layers.0.self_attn.k_proj.weight": torch.randn(cfg.num_key_value_heads * hd, H, generator=g) * 0.1,
        "layers.0.self_attn.v_proj.weight": torch.randn(cfg.num_key_value_heads * hd, H, generator=g) * 0.1,
        "layers.0.self_attn.o_proj.weight": torch.randn(H, H, generator=g) * 0.1,
        "layers.0.mlp.gate_proj.weight": torch.randn(inter, H, generator=g) * 0.1,
        "layers.0.mlp.up_proj.weight": torch.randn(inter, H, generator=g) * 0.1,
        "layers.0.mlp.down_proj.weight": torch.randn(H, inter, generator=g) * 0.1,
        "layers.0.post_attention_layernorm.weight": torch.rand(H, generator=g) + 0.5,
        "embed_tokens.weight": torch.randn(cfg.vocab_size, H, generator=g),
    }
    if bias:
        state["fc.bias"] = torch.randn(H, generator=g) * 0.1
    if bin_only:
        (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    else:
        save_file(state, str(folder / "model.safetensors"))
    return state


@pytest.mark.parametrize("bias", [True, False])
def test_eagle_checkpoint_mapping(tmp_path: Path, bias: bool) -> None:
    target = tiny_target()
    state = _write_eagle_folder(tmp_path / "eagle", target, bias=bias)
    head = load_eagle_checkpoint(tmp_path / "eagle", target)
    assert head.config.draft_vocab_size == 96 and head.config.fc_bias is bias
    sd = head.state_dict()
    for k, v in state.items():
        if k == "embed_tokens.weight":
            assert k not in sd
            continue
        torch.testing.assert_close(sd[k], v)
    # the mapped head drafts: the fc output and the layer are used as EAGLE defines them
    tokens, hidden = torch.randint(0, 96, (6,)), torch.randn(5, 32)
    head.sync(tokens, hidden)
    lp, ids = head.expand_root(3)
    x = torch.cat((target.get_input_embeddings().weight[tokens[1:]], hidden), -1) @ state["fc.weight"].T
    if bias:
        x = x + state["fc.bias"]
    torch.testing.assert_close(head.fuse(tokens[1:], hidden), x, atol=1e-5, rtol=1e-5)
    assert lp.shape == (3,) and int(ids.max()) < 96
    assert load_draft_head(tmp_path / "eagle", target).config == head.config  # folder auto-detected


def test_eagle_prefixed_names_and_bin_refused(tmp_path: Path) -> None:
    mapped = map_eagle_state_dict({"model.fc.weight": torch.ones(1), "model.embed_tokens.weight": torch.ones(1),
                                   "lm_head.weight": torch.ones(1)})
    assert list(mapped) == ["fc.weight"]
    target = tiny_target()
    _write_eagle_folder(tmp_path / "bin", target, bin_only=True)
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_eagle_checkpoint(tmp_path / "bin", target)
    _write_eagle_folder(tmp_path / "other", tiny_target(hidden=48))
    with pytest.raises(CheckpointError, match="hidden 48"):
        load_eagle_checkpoint(tmp_path / "other", target)
