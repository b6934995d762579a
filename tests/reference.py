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


# --------------------------------------------------------------------------- CKA, written out literally

def hsic1_literal(K, L) -> float:
    """Unbiased HSIC (Song et al. 2012) of two ``[n, n]`` Gram matrices, with explicit loops:
    ``[tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``."""
    n = len(K)
    Kt = [[0.0 if i == j else float(K[i][j]) for j in range(n)] for i in range(n)]
    Lt = [[0.0 if i == j else float(L[i][j]) for j in range(n)] for i in range(n)]
    trace = sum(Kt[i][j] * Lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(Kt[i][j] for i in range(n) for j in range(n))
    sum_l = sum(Lt[i][j] for i in range(n) for j in range(n))
    ones_kl_ones = sum(Kt[i][j] * Lt[j][k] for i in range(n) for j in range(n) for k in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * ones_kl_ones / (n - 2)) / (n * (n - 3))


def hsic0_literal(K, L) -> float:
    """The biased HSIC estimator ``tr(K H L H) / (n - 1)^2`` with ``H = I - 11'/n``, with loops."""
    n = len(K)
    H = [[(1.0 if i == j else 0.0) - 1.0 / n for j in range(n)] for i in range(n)]

    def mm(A, B):
        return [[sum(A[i][k] * B[k][j] for k in range(n)) for j in range(n)] for i in range(n)]

    M = mm(mm(mm([[float(v) for v in row] for row in K], H), [[float(v) for v in row] for row in L]), H)
    return sum(M[i][i] for i in range(n)) / (n - 1) ** 2


def linear_gram_literal(X) -> list[list[float]]:
    """``K[i][j] = sum_f X[i][f] X[j][f]`` for features ``X`` ``[n, features]``."""
    rows = [[float(v) for v in x] for x in X]
    return [[sum(a * b for a, b in zip(ri, rj)) for rj in rows] for ri in rows]


def minibatch_cka_literal(batches_a, batches_b, hsic=hsic1_literal) -> float:
    """Minibatch CKA of one layer pair: ``batches_a``, ``batches_b`` are lists of per-minibatch
    features ``[n, features]`` (the same images in the same order);
    ``mean_k hsic(K_k, L_k) / sqrt(mean_k hsic(K_k, K_k) mean_k hsic(L_k, L_k))``."""
    kl = kk = ll = 0.0
    for xa, xb in zip(batches_a, batches_b):
        K, L = linear_gram_literal(xa), linear_gram_literal(xb)
        kl += hsic(K, L)
        kk += hsic(K, K)
        ll += hsic(L, L)
    m = len(batches_a)
    return (kl / m) / ((kk / m) * (ll / m)) ** 0.5
