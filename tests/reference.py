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
    from vitlens.capture.attention import attention_modules

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


def windowed_full_map_literal(attn: torch.Tensor, geometry) -> torch.Tensor:
    """Scatter one windowed block's maps ``[batch * window, head, query, key]`` back into its
    full un-shifted map: ``[batch, head, H * W, H * W]``, the probability of every counted pair at
    (query token, key token) of the un-shifted map, zero elsewhere.

    Token ids follow the library's own operations on an id map: ``torch.roll`` by the negative
    shift and bottom/right padding with -1 (in the block's order), row-major windows; the
    shift-mask regions are timm's slices ``(0, -w), (-w, -s), (-s, None)`` of the padded map.
    """
    H, W = geometry.grid_size
    wh, ww = geometry.window_size
    sh, sw = geometry.shift
    ph, pw = (-H) % wh, (-W) % ww
    ids = torch.arange(H * W).reshape(1, 1, H, W)

    def pad(t):
        return F.pad(t, (0, pw, 0, ph), value=-1)

    def roll(t):
        return torch.roll(t, shifts=(-sh, -sw), dims=(2, 3)) if (sh or sw) else t

    ids = roll(pad(ids)) if geometry.pad_before_shift else pad(roll(ids))
    ids = ids[0, 0]
    Hp, Wp = ids.shape
    label = torch.zeros(Hp, Wp, dtype=torch.long)
    if sh or sw:
        cnt = 0
        for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
            for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
                label[hs, ws] = cnt
                cnt += 1
    win_ids = ids.reshape(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    win_lab = label.reshape(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    nw = win_ids.shape[0]
    a = attn.double().reshape(-1, nw, attn.shape[1], wh * ww, wh * ww)
    full = torch.zeros(a.shape[0], a.shape[2], H * W, H * W, dtype=torch.float64)
    for w in range(nw):
        for qi in range(wh * ww):
            q = int(win_ids[w, qi])
            if q < 0:
                continue
            for ki in range(wh * ww):
                k = int(win_ids[w, ki])
                if k < 0 or win_lab[w, qi] != win_lab[w, ki]:
                    continue
                full[:, :, q, k] = a[:, w, :, qi, ki]
    return full


def windowed_distance_literal(attn: torch.Tensor, geometry, units: str = "px") -> torch.Tensor:
    """``[batch, head]`` mean attention distance of one windowed block: its full-map matrix
    (:func:`windowed_full_map_literal`) read with the global definition over the un-shifted map."""
    from vitlens.analyses.attention.distance import mean_attention_distance
    from vitlens.models.tokens import TokenLayout

    full = windowed_full_map_literal(attn, geometry)
    layout = TokenLayout(prefix_kinds=(), grid_size=tuple(geometry.grid_size),
                         patch_stride=tuple(float(s) for s in geometry.stride),
                         input_size=tuple(geometry.input_size))
    return mean_attention_distance(full, layout, prefix_tokens="renormalize", units=units).double()


# --------------------------------------------------------------------------- the usual way
# The baselines analyses/benchmark.py measures vitlens against: stored maps with timm's
# AttentionExtract and NumPy, per-image rollout and receptive-field loops. tests/test_reference_baselines.py
# checks that vitlens agrees with each of them, so the benchmark compares like with like.

import time  # noqa: E402


def sync(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def set_fused(model, flag: bool) -> list:
    """Set every attention module's ``fused_attn``; returns what to restore."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in saved:
        m.fused_attn = flag
    return saved


def probing_vits_distance_matrix(patch_size: int, length: int):
    """Pixel distance between patch centres of a ``length x length`` grid (probing-vits's
    ``compute_distance_matrix``, written with array operations instead of its double loop)."""
    import numpy as np
    ij = np.stack(np.divmod(np.arange(length * length), length), -1).astype(np.float64)
    return patch_size * np.sqrt(((ij[:, None, :] - ij[None, :, :]) ** 2).sum(-1))


def probing_vits_mean_distance(attention_weights, distance_matrix, num_prefix: int):
    """probing-vits's ``compute_mean_attention_dist``: drop prefix rows and columns, weight by
    distance, sum over keys, mean over queries. ``[image, head, q, k]`` -> ``[image, head]``."""
    import numpy as np
    attention_weights = attention_weights[..., num_prefix:, num_prefix:]
    h, w = distance_matrix.shape
    mean_distances = attention_weights * distance_matrix.reshape((1, 1, h, w))
    mean_distances = np.sum(mean_distances, axis=-1)
    return np.mean(mean_distances, axis=-1)


def timm_distance(model, x, batch_size: int, device: str):
    """Store every layer's attention maps of every image with ``timm.utils.AttentionExtract``,
    then compute the mean distance per layer and head in NumPy. Returns ``([layer, head],
    seconds)``. In the baseline's favour: the one-time fx trace is not timed, and the maps go
    straight into preallocated arrays (appending batches and concatenating them holds the maps
    twice and, measured here, more than doubled the peak)."""
    import numpy as np
    import torch
    from timm.utils import AttentionExtract

    set_fused(model, False)  # with fused attention the traced graph has no softmax node to extract
    extractor = AttentionExtract(model)  # fx, nodes '*attn.softmax'
    sync(device)
    t0 = time.perf_counter()
    stored: dict = {}  # every layer's maps of all images: [image, head, token, token], filled in place
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            out = extractor(x[i:i + batch_size].to(device))
            for k, v in out.items():
                if k not in stored:
                    stored[k] = np.empty((x.shape[0], *v.shape[1:]), dtype=np.float32)
                stored[k][i:i + v.shape[0]] = v.cpu().numpy()
    gh, gw = model.patch_embed.grid_size
    assert gh == gw, "probing-vits assumes a square grid"
    dm = probing_vits_distance_matrix(int(model.patch_embed.patch_size[0]), gh)
    per_layer = [probing_vits_mean_distance(stored[k], dm, model.num_prefix_tokens).mean(0)
                 for k in extractor.names]
    seconds = time.perf_counter() - t0
    return np.stack(per_layer), seconds


def rollout_per_image(model, x, device: str, products: str = "torch"):
    """vit-explain's ``VITAttentionRollout`` (mean head fusion, no discard): a forward hook on every
    ``attn_drop`` keeps one image's maps; per layer ``a = (A + I) / 2`` with rows renormalised,
    ``result = a @ result``; the map is the class token's row over the patches. ``products`` is
    ``"torch"`` (CPU tensors, as vit-explain does) or ``"numpy"`` (NumPy arrays). Both in float64,
    as vitlens computes rollout."""
    import numpy as np
    import torch

    attentions: list = []

    def get_attention(module, inputs, output):
        attentions.append(output.cpu())

    saved = set_fused(model, False)
    handles = [m.register_forward_hook(get_attention) for n, m in model.named_modules() if n.endswith("attn_drop")]
    gh, gw = model.patch_embed.grid_size
    npt = model.num_prefix_tokens
    maps = []
    try:
        with torch.no_grad():
            for i in range(x.shape[0]):
                attentions.clear()
                model(x[i:i + 1].to(device))
                n = attentions[0].shape[-1]
                if products == "torch":
                    eye = torch.eye(n, dtype=torch.float64)
                    result = eye
                    for attention in attentions:
                        fused = attention[0].double().mean(dim=0)
                        a = (fused + eye) / 2
                        a = a / a.sum(dim=-1, keepdim=True)
                        result = torch.matmul(a, result)
                    maps.append(result[0, npt:].reshape(gh, gw).numpy())
                else:
                    eye = np.eye(n)
                    result = eye
                    for attention in attentions:
                        fused = attention[0].numpy().astype(np.float64).mean(axis=0)
                        a = (fused + eye) / 2
                        a = a / a.sum(axis=-1, keepdims=True)
                        result = a @ result
                    maps.append(result[0, npt:].reshape(gh, gw))
    finally:
        for h in handles:
            h.remove()
        for m, flag in saved:
            m.fused_attn = flag
    return np.stack(maps)


def erf_per_image(model, x, device: str):
    """Input-gradient ERF one image at a time: per image one forward pass with hooks on every
    block, then per block one ``autograd.grad`` of the centre patch token's channel sum; ``|grad|``
    summed over colour channels, averaged over images. Returns ``[layer, height, width]`` float64."""
    import numpy as np
    import torch

    names = [f"blocks.{i}" for i in range(len(model.blocks))]
    mods = dict(model.named_modules())
    outs: dict = {}
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n in names]
    gh, gw = model.patch_embed.grid_size
    token = model.num_prefix_tokens + (gh // 2) * gw + gw // 2
    sums = np.zeros((len(names), x.shape[-2], x.shape[-1]))
    try:
        with torch.enable_grad():
            for i in range(x.shape[0]):
                xi = x[i:i + 1].to(device).requires_grad_(True)
                outs.clear()
                model(xi)
                for li, n in enumerate(names):
                    (g,) = torch.autograd.grad(outs[n][:, token, :].sum(), xi, retain_graph=li < len(names) - 1)
                    sums[li] += g.abs().sum(1)[0].double().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return sums / x.shape[0]


def plain_forward(model, x, batch_size: int, device: str) -> None:
    import torch
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            model(x[i:i + batch_size].to(device))
