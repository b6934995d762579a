"""Slow, literal reference implementations used only by the tests.

Attention is recomputed from each attention module's own input and parameters, independently of
vitlens's hooks: softmax(q k^T * scale + bias) per head, with BEiT's relative position bias and
EVA's rotary embedding applied exactly as those papers define them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import apply_rot_embed_cat


def _qk(module, x):
    B, N, _ = x.shape
    H = module.num_heads
    if getattr(module, "qkv", None) is not None:
        bias = module.qkv.bias
        if getattr(module, "q_bias", None) is not None:
            bias = torch.cat((module.q_bias, module.k_bias, module.v_bias))
        qkv = F.linear(x, module.qkv.weight, bias).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
    else:
        q = module.q_proj(x).reshape(B, N, H, -1).transpose(1, 2)
        k = module.k_proj(x).reshape(B, N, H, -1).transpose(1, 2)
    q_norm = getattr(module, "q_norm", None)
    k_norm = getattr(module, "k_norm", None)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    return q, k


def attention_from_inputs(module, x: torch.Tensor, rope=None, shared_rel_pos_bias=None) -> torch.Tensor:
    """[batch, head, query, key] probabilities of one timm attention module for input x."""
    q, k = _qk(module, x)
    if rope is not None:
        npt = module.num_prefix_tokens
        half = getattr(module, "rotate_half", False)
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * module.scale
    if getattr(module, "relative_position_bias_table", None) is not None:
        scores = scores + module._get_rel_pos_bias()
    if shared_rel_pos_bias is not None:
        scores = scores + shared_rel_pos_bias
    return torch.exp(scores - scores.amax(-1, keepdim=True)) / \
        torch.exp(scores - scores.amax(-1, keepdim=True)).sum(-1, keepdim=True)


def recompute_attention(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Run the model once and recompute every attention module's probabilities from its inputs."""
    from vitlens.capture import attention_modules

    out, handles = [], []

    def hook(module, args, kwargs):
        xin = args[0]
        rope = kwargs.get("rope", args[1] if len(args) > 1 and type(module).__name__ == "EvaAttention" else None)
        shared = kwargs.get("shared_rel_pos_bias")
        out.append(attention_from_inputs(module, xin, rope=rope, shared_rel_pos_bias=shared).detach())

    for _, m in attention_modules(model):
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out
