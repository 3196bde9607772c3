"""Model shapes, causality and sizes; byte tokens; the sharded, resumable batch stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from systems.blocks.attention import MultiHeadAttention
from systems.distributed_training.data import BatchStream, StreamState, TokenBlocks, decode, encode, split_tokens
from systems.distributed_training.model import GPT, MODEL_PRESETS, ModelConfig, estimate_params, flops_per_token

pytestmark = pytest.mark.unit


def test_forward_shapes_and_initial_loss_is_uniform() -> None:
    torch.manual_seed(0)
    model = GPT(MODEL_PRESETS["cpu_debug"]())
    x, y = torch.randint(0, 256, (3, 32)), torch.randint(0, 256, (3, 32))
    logits, loss = model(x, y)
    assert logits.shape == (3, 32, 256)
    assert loss is not None
    # small init -> near-uniform predictions: cross-entropy ~ ln(256) = 5.545
    assert abs(loss.item() - math.log(256)) < 0.1


def test_uses_the_shared_attention_block() -> None:
    model = GPT(MODEL_PRESETS["cpu_debug"]())
    assert sum(isinstance(m, MultiHeadAttention) for m in model.modules()) == model.cfg.n_layer


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    torch.manual_seed(0)
    model = GPT(MODEL_PRESETS["cpu_debug"]()).eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 7) % 256
    a, _ = model(x)
    b, _ = model(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:], atol=1e-3)


def test_sequence_longer_than_block_is_rejected() -> None:
    model = GPT(MODEL_PRESETS["cpu_debug"]())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("name", ["cpu_debug", "cpu_small"])
def test_param_estimate_matches_the_module(name: str) -> None:
    cfg = MODEL_PRESETS[name]()
    assert estimate_params(cfg) == GPT(cfg).num_params(non_embedding=False)


def test_gpu_124m_is_gpt2_small_sized() -> None:
    cfg = MODEL_PRESETS["gpu_124m"]()
    assert 123e6 < estimate_params(cfg) < 126e6
    # 6N + attention: ~0.8 GFLOP per token for training
    assert 7e8 < flops_per_token(cfg, estimate_params(cfg)) < 9e8


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)


def test_byte_tokens_round_trip_unicode() -> None:
    text = "Fits true to size — lovely, 5★"
    tokens = encode(text)
    assert tokens.dtype == np.uint8 and len(tokens) == len(text.encode("utf-8"))
    assert decode(tokens) == text


def test_token_blocks_targets_are_inputs_shifted_by_one() -> None:
    ds = TokenBlocks(np.arange(100, dtype=np.uint8), block_size=8)
    assert len(ds) == 12  # (100 - 1) // 8
    x, y = ds[3]
    assert x.tolist() == list(range(24, 32)) and y.tolist() == list(range(25, 33))


def test_split_is_by_position() -> None:
    train, val = split_tokens(np.arange(100, dtype=np.uint8), val_fraction=0.1)
    assert len(train) == 90 and val[0] == 90


def _take(stream: BatchStream, n: int) -> list[torch.Tensor]:
    it = iter(stream)
    return [next(it)[0] for _ in range(n)]


def test_two_ranks_see_the_same_global_batch_as_one() -> None:
    ds = TokenBlocks(np.random.default_rng(0).integers(0, 256, 4001).astype(np.uint8), block_size=4)
    one = _take(BatchStream(ds, micro_batch_size=8, rank=0, world_size=1, seed=3), 5)
    r0 = _take(BatchStream(ds, micro_batch_size=4, rank=0, world_size=2, seed=3), 5)
    r1 = _take(BatchStream(ds, micro_batch_size=4, rank=1, world_size=2, seed=3), 5)
    for step in range(5):
        as_set = {tuple(row.tolist()) for row in one[step]}
        assert as_set == {tuple(row.tolist()) for row in torch.cat([r0[step], r1[step]])}
        # and the two ranks are disjoint
        assert not {tuple(r.tolist()) for r in r0[step]} & {tuple(r.tolist()) for r in r1[step]}


def test_stream_resumes_exactly_and_reshuffles_per_epoch() -> None:
    ds = TokenBlocks(np.random.default_rng(1).integers(0, 256, 81).astype(np.uint8), block_size=4)  # 20 items
    full = BatchStream(ds, micro_batch_size=4, rank=0, world_size=1, seed=7)
    batches = _take(full, 12)  # 5 per epoch: crosses two epoch boundaries
    resumed = BatchStream(ds, micro_batch_size=4, rank=0, world_size=1, seed=7, state=StreamState(1, 2))
    for a, b in zip(batches[7:], _take(resumed, 5), strict=True):
        assert torch.equal(a, b)
    epoch0 = torch.cat(batches[:5])
    epoch1 = torch.cat(batches[5:10])
    assert not torch.equal(epoch0, epoch1)  # set_epoch changed the permutation
    assert sorted(map(tuple, epoch0.tolist())) == sorted(map(tuple, epoch1.tolist()))  # same items


def test_fused_attention_gives_the_explicit_losses_and_grads() -> None:
    from dataclasses import replace

    cfg = MODEL_PRESETS["cpu_debug"]()
    torch.manual_seed(0)
    explicit = GPT(cfg)
    fused = GPT(replace(cfg, fused_attention=True))
    fused.load_state_dict(explicit.state_dict())
    assert all(m.fused for m in fused.modules() if isinstance(m, MultiHeadAttention))
    x, y = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    _, loss_e = explicit(x, y)
    _, loss_f = fused(x, y)
    assert loss_e is not None and loss_f is not None
    loss_e.backward()
    loss_f.backward()
    assert abs(loss_e.item() - loss_f.item()) < 1e-5
    for (name, pe), pf in zip(explicit.named_parameters(), fused.parameters(), strict=True):
        assert pe.grad is not None and pf.grad is not None
        torch.testing.assert_close(pf.grad, pe.grad, atol=1e-5, rtol=1e-4, msg=name)
    # the GPU preset is the one that needs it (T = 1024); the CPU presets keep the explicit teaching path
    assert MODEL_PRESETS["gpu_124m"]().fused_attention and not cfg.fused_attention
