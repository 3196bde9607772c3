"""Attention from scratch vs torch.nn.MultiheadAttention and F.scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from systems.blocks.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention

pytestmark = pytest.mark.unit

B, T, S, E, H = 3, 7, 9, 32, 4
D = E // H
TOL = 1e-5


def _pair(seed: int = 0, bias: bool = True) -> tuple[nn.MultiheadAttention, MultiHeadAttention]:
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, H, batch_first=True, bias=bias)
    # torch initialises the in-projection bias to 0: randomise it so copying it is tested.
    with torch.no_grad():
        if ref.in_proj_bias is not None:
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    mine = MultiHeadAttention(E, H, bias=bias).load_from_torch(ref)
    return ref, mine


def _padding_mask() -> torch.Tensor:
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, 6:] = True  # sequence 1 has 6 real keys
    kpm[2, 2:] = True  # sequence 2 has 2 real keys
    return kpm


def _grads(module: nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None] + [
        x.grad.clone() for x in inputs if x.grad is not None
    ]


@pytest.mark.parametrize(
    "case", ["none", "padding", "causal", "bool_mask", "float_mask", "cross", "float_and_padding", "bool_and_padding"]
)
def test_mha_matches_torch_outputs_and_grads(case: str) -> None:
    ref, mine = _pair()
    torch.manual_seed(1)
    q = torch.randn(B, T, E)
    kv = torch.randn(B, S, E) if case in ("cross", "padding", "float_and_padding", "bool_and_padding") else q.clone()
    s = kv.shape[1]
    kw_ref: dict = {}
    kw_mine: dict = {}
    if case == "padding":
        kw_ref["key_padding_mask"] = kw_mine["key_padding_mask"] = _padding_mask()
    elif case == "causal":
        # torch's module needs the mask itself; is_causal is only a hint there.
        kw_ref.update(attn_mask=~causal_mask(T), is_causal=True)
        kw_mine["is_causal"] = True
    elif case == "bool_mask":
        allowed = torch.rand(T, s) > 0.3
        allowed[:, 0] = True  # keep at least one key per row (torch gives NaN otherwise)
        kw_ref["attn_mask"] = ~allowed  # torch nn.MHA: True = NOT allowed
        kw_mine["attn_mask"] = allowed  # ours (SDPA convention): True = allowed
    elif case == "float_mask":
        bias = torch.randn(T, s)
        kw_ref["attn_mask"] = kw_mine["attn_mask"] = bias
    elif case == "float_and_padding":
        kw_ref["attn_mask"] = kw_mine["attn_mask"] = torch.randn(T, s)
        kw_mine["key_padding_mask"] = _padding_mask()
        # torch wants both masks of one kind: give it the padding as an additive float mask
        kw_ref["key_padding_mask"] = torch.zeros(B, s).masked_fill(_padding_mask(), float("-inf"))
    elif case == "bool_and_padding":
        allowed = torch.rand(T, s) > 0.3
        allowed[:, 0] = True
        kw_ref["attn_mask"], kw_mine["attn_mask"] = ~allowed, allowed
        kw_ref["key_padding_mask"] = kw_mine["key_padding_mask"] = _padding_mask()

    q_ref = q.clone().requires_grad_(True)
    kv_ref = kv.clone().requires_grad_(True)
    q_mine = q.clone().requires_grad_(True)
    kv_mine = kv.clone().requires_grad_(True)
    out_ref, _ = ref(q_ref, kv_ref, kv_ref, need_weights=False, **kw_ref)
    out_mine = mine(q_mine, kv_mine, kv_mine, **kw_mine)
    torch.testing.assert_close(out_mine, out_ref, atol=TOL, rtol=TOL)

    g = torch.randn_like(out_ref)
    (out_ref * g).sum().backward()
    (out_mine * g).sum().backward()
    torch.testing.assert_close(q_mine.grad, q_ref.grad, atol=TOL, rtol=TOL)
    torch.testing.assert_close(kv_mine.grad, kv_ref.grad, atol=TOL, rtol=TOL)
    assert ref.in_proj_weight.grad is not None
    wq, wk, wv = ref.in_proj_weight.grad.chunk(3)
    for lin, w in ((mine.q_proj, wq), (mine.k_proj, wk), (mine.v_proj, wv)):
        assert lin.weight.grad is not None
        torch.testing.assert_close(lin.weight.grad, w, atol=TOL, rtol=TOL)
    assert mine.out_proj.weight.grad is not None and ref.out_proj.weight.grad is not None
    torch.testing.assert_close(mine.out_proj.weight.grad, ref.out_proj.weight.grad, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float", "causal_rect"])
def test_sdpa_matches_torch_function(mask_kind: str) -> None:
    torch.manual_seed(2)
    s = T + 3 if mask_kind == "causal_rect" else S
    q = torch.randn(B, H, T, D, requires_grad=True)
    k = torch.randn(B, H, s, D, requires_grad=True)
    v = torch.randn(B, H, s, D, requires_grad=True)
    kw: dict = {}
    if mask_kind in ("causal", "causal_rect"):
        kw["is_causal"] = True
    elif mask_kind == "bool":
        m = torch.rand(B, 1, T, s) > 0.5
        m[..., 0] = True
        kw["attn_mask"] = m
    elif mask_kind == "float":
        kw["attn_mask"] = torch.randn(B, H, T, s)
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    (gq_r, gk_r, gv_r) = torch.autograd.grad(ref.sum(), (q, k, v))
    mine = scaled_dot_product_attention(q, k, v, **kw)
    (gq, gk, gv) = torch.autograd.grad(mine.sum(), (q, k, v))
    torch.testing.assert_close(mine, ref, atol=TOL, rtol=TOL)
    for a, b in ((gq, gq_r), (gk, gk_r), (gv, gv_r)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_fully_masked_row_gives_zeros_and_finite_grads() -> None:
    torch.manual_seed(3)
    q = torch.randn(2, H, T, D, requires_grad=True)
    k = torch.randn(2, H, S, D, requires_grad=True)
    v = torch.randn(2, H, S, D, requires_grad=True)
    allowed = torch.ones(2, 1, T, S, dtype=torch.bool)
    allowed[0, 0, 3, :] = False  # query 3 of batch 0 may attend nothing
    out = scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, :, 3], torch.zeros(H, D))
    out.sum().backward()
    for x in (q, k, v):
        assert x.grad is not None and torch.isfinite(x.grad).all()
    # the other rows are untouched by the special case
    ref = F.scaled_dot_product_attention(q.detach()[1:], k.detach()[1:], v.detach()[1:])
    torch.testing.assert_close(out.detach()[1:], ref, atol=TOL, rtol=TOL)

    # the same through the module with a key-padding mask that pads a whole sequence
    mha = MultiHeadAttention(E, H)
    x = torch.randn(2, T, E, requires_grad=True)
    kpm = torch.zeros(2, T, dtype=torch.bool)
    kpm[1] = True
    y = mha(x, key_padding_mask=kpm)
    assert torch.isfinite(y).all()
    assert torch.equal(y[1], torch.zeros(T, E))  # zeros, not the out_proj bias
    assert y[0].abs().sum() > 0
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_additive_minus_inf_row_is_zero() -> None:
    q, k, v = (torch.randn(1, 1, 2, 4) for _ in range(3))
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 1, :] = float("-inf")
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[0, 0, 1], torch.zeros(4))


def test_causal_means_no_peeking() -> None:
    """Changing a future token must not change earlier outputs."""
    torch.manual_seed(4)
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(1, T, E)
    x2 = x.clone()
    x2[0, -1] += 10.0
    y, y2 = mha(x, is_causal=True), mha(x2, is_causal=True)
    torch.testing.assert_close(y[0, :-1], y2[0, :-1])
    assert not torch.allclose(y[0, -1], y2[0, -1])


def test_dropout_only_in_training_and_rescales() -> None:
    torch.manual_seed(5)
    mha = MultiHeadAttention(E, H, dropout=0.5)
    x = torch.randn(2, T, E)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha(x))
    # dropout on weights keeps the expectation: mean over many draws ~ no-dropout output
    q, k, v = (torch.randn(1, 1, 4, 8).expand(4000, 1, 4, 8) for _ in range(3))  # 4000 draws at once
    draws = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.testing.assert_close(draws.mean(0), scaled_dot_product_attention(q[:1], k[:1], v[:1])[0], atol=0.1, rtol=0.1)


def test_rejects_bad_head_count() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)


def _autograd_ops(t: torch.Tensor) -> set[str]:
    """Names of every backward node that produced ``t`` (which kernels the forward really ran)."""
    names: set[str] = set()
    visited: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in visited:
            continue
        visited.add(id(fn))
        names.add(type(fn).__name__)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return names


@pytest.mark.parametrize(
    "case", ["none", "causal", "padding", "bool_mask", "causal_and_padding", "cross", "dead_rows", "float_mask"]
)
def test_fused_matches_explicit_outputs_and_grads(case: str) -> None:
    torch.manual_seed(6)
    explicit = MultiHeadAttention(E, H)
    fused = MultiHeadAttention(E, H, fused=True)
    fused.load_state_dict(explicit.state_dict())
    q = torch.randn(B, T, E)
    kv = torch.randn(B, S, E) if case in ("padding", "cross", "dead_rows") else q
    kw: dict = {}
    if case == "causal":
        kw["is_causal"] = True
    elif case == "padding":
        kw["key_padding_mask"] = _padding_mask()
    elif case == "bool_mask":
        kw["attn_mask"] = torch.rand(T, T) > 0.3  # (T, S), shared by batch and heads; may leave rows dead
    elif case == "causal_and_padding":
        kpm = torch.zeros(B, T, dtype=torch.bool)
        kpm[1, 4:] = True
        kpm[2, :] = True  # a sequence that is all padding: every row dead
        kw.update(is_causal=True, key_padding_mask=kpm)
    elif case == "dead_rows":
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[0] = True
        allowed = torch.ones(B, H, T, S, dtype=torch.bool)
        allowed[1, :, 2] = False  # query 2 of sequence 1 sees nothing, in every head
        allowed[2, 0, 5] = False  # query 5 of sequence 2 sees nothing in head 0 only
        kw.update(key_padding_mask=kpm, attn_mask=allowed)
    elif case == "float_mask":
        kw["attn_mask"] = torch.randn(T, T)  # additive: the fused module falls back to the explicit path
    outs, grads = [], []
    for module in (explicit, fused):
        module.zero_grad()
        x_q = q.clone().requires_grad_(True)
        x_kv = x_q if kv is q else kv.clone().requires_grad_(True)
        y = module(x_q, x_kv, **kw)
        ops = _autograd_ops(y)
        uses_sdpa = any("ScaledDotProduct" in name for name in ops)
        assert uses_sdpa == (module is fused and case != "float_mask"), ops
        (y * torch.linspace(-1, 1, E)).sum().backward()
        outs.append(y.detach())
        grads.append(_grads(module, x_q, x_kv) if x_kv is not x_q else _grads(module, x_q))
    assert torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[1], outs[0], atol=TOL, rtol=TOL)
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(grads[1], grads[0], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)
    if case in ("causal_and_padding", "dead_rows"):
        dead_seq = 2 if case == "causal_and_padding" else 0
        assert torch.equal(outs[1][dead_seq], torch.zeros(T, E))  # zeros, not the out_proj bias
