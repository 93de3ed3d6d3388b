"""MatFormer-LM: nested FFNs, Mix'n'Match, skipped layers; the extracted decoder with and without a KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy.families.lm_blocks import Decoder
from deploy.models import build


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return build("matformer_lm_tiny").eval()


def _configs(lm):
    rng = np.random.default_rng(5)
    return [lm.smallest(), lm.largest(), lm.config([0, 2], [32, 256]), *(lm.sample(rng) for _ in range(3))]


def _greedy_logits(dense: Decoder, prompt: torch.Tensor, steps: int, static: bool) -> list[torch.Tensor]:
    """Logits of each greedy step with the cache (dynamic or the fixed-length static one)."""
    n = prompt.shape[1]
    if static:
        logits, kv = dense.prefill_static(torch.nn.functional.pad(prompt, (0, 4)))  # padded to a bucket
        out = [logits[:, n - 1]]
    else:
        logits, kv = dense.prefill(prompt)
        out = [logits]
    for pos in range(n, n + steps):
        token = out[-1].argmax(-1, keepdim=True)
        logits, kv = dense.decode_static(token, torch.tensor([pos]), kv) if static else dense.decode(token, kv)
        out.append(logits)
    return out


@pytest.mark.parametrize("static", [False, True], ids=["dynamic_cache", "static_cache"])
def test_extracted_decoder_with_kv_cache_equals_the_supernet_within_1e5(lm, static):
    prompt = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for config in _configs(lm):
            steps = _greedy_logits(lm.extract(config), prompt, 10, static)
            tokens = torch.cat([prompt, torch.stack([s.argmax(-1) for s in steps[:-1]], dim=1)], dim=1)
            full = lm(tokens, config)  # the supernet on the whole sequence, no cache
            for i, got in enumerate(steps):
                assert (got - full[:, prompt.shape[1] - 1 + i]).abs().max() <= 1e-5, (config, i)


def test_extracted_decoder_without_cache_equals_the_supernet_within_1e5(lm):
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        for config in _configs(lm):
            assert (lm.extract(config)(tokens) - lm(tokens, config)).abs().max() <= 1e-5


def test_smaller_ffn_is_the_first_units_of_the_larger(lm):
    config = lm.config([0, 1, 2], [32, 64, 256])
    dense = lm.extract(config)
    assert torch.equal(dense.layers[0].fc1.weight, lm.layers[0].fc1.weight[:32])
    assert torch.equal(dense.layers[1].fc2.weight, lm.layers[1].fc2.weight[:, :64])
    assert len(lm.extract(lm.config([1], [32])).layers) == 1  # skipped layers are gone


def test_kv_cache_holds_one_key_and_one_value_per_kept_layer(lm):
    dense = lm.extract(lm.config([0, 2], [32, 256]))
    _, kv = dense.prefill(torch.zeros(1, 5, dtype=torch.long))
    assert tuple(kv.shape) == dense.cache_shape(5) == (4, 2, 5, 16)
    _, kv = dense.prefill_static(torch.zeros(1, 8, dtype=torch.long))
    assert tuple(kv.shape) == dense.cache_shape(lm.dims.max_context)


def test_regime_blocks_key_prefill_by_prompt_and_decode_by_context(lm):
    config = lm.config([0, 2], [32, 256])
    prefill = lm.regime_blocks(config, "prefill", 8)
    decode = lm.regime_blocks(config, "decode", 20)
    static = lm.regime_blocks(config, "decode", 20, static=True)
    assert [k.kind for k in prefill] == ["lm_embed", "lm_prefill_layer", "lm_prefill_layer", "lm_last_head"]
    assert {k["tokens"] for k in prefill if k.kind == "lm_prefill_layer"} == {8}
    assert {k["kv"] for k in decode if k.kind == "lm_decode_layer"} == {20}
    assert {k["kv"] for k in static if k.kind == "lm_decode_layer"} == {lm.dims.max_context}
    every = set(lm.regime_block_keys("decode", (4, 20)))
    assert set(decode) <= every and len({k["ffn"] for k in every if "ffn" in dict(k.shape)}) == 4
    with pytest.raises(ValueError, match="max_context"):
        lm.regime_blocks(config, "prefill", lm.dims.max_context + 1)


@pytest.mark.parametrize("regime", ["prefill", "decode"])
def test_regime_blocks_build_and_run_alone(lm, regime):
    for key in lm.regime_block_keys(regime, (4,), static=False) + lm.regime_block_keys(regime, (4,), static=True):
        module, example = lm.build_block(key)
        with torch.inference_mode():
            out = module(*(example if isinstance(example, tuple) else (example,)))
        assert (out[0] if isinstance(out, tuple) else out).shape[0] == 1, key


def test_bad_dims_are_refused_with_the_reason():
    from deploy.families.matformer_lm import MatFormerLM

    with pytest.raises(ValueError, match="multiple of heads"):
        MatFormerLM.from_dims("x", {"dim": 30, "heads": 4})
    with pytest.raises(ValueError, match="max_context"):
        MatFormerLM.from_dims("x", {"seq": 64, "max_context": 32})
