"""Cost figures: FLOPs, peak memory and throughput by input size; a ViT's attention share of FLOPs by tokens."""

from __future__ import annotations

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_flops", "plot_memory", "plot_attention_share", "plot_throughput", "cost_figure"]


def _colors(profile) -> dict[str, str]:
    return {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(profile.models)}


def _marker(profile, model: str) -> str:
    return "o" if profile.kind_of(model) == "vit" else "s"


def _label(profile, model: str) -> str:
    return f"{model} ({'ViT' if profile.kind_of(model) == 'vit' else 'CNN'})"


def _px_axis(ax, profile) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(profile.input_px.tolist()))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("input side (px)")
    ax.grid(alpha=0.3, which="both")


def plot_flops(profile, ax=None):
    """x = input side (px, log), y = FLOPs of one image's forward pass (log); one line per model
    (ViTs circles, CNNs squares). Returns the axes."""
    ax = new_axes(ax)
    for m, c in _colors(profile).items():
        px, _, f = profile.select(m, "flops", "total")
        ax.plot(px, f, color=c, marker=_marker(profile, m), lw=1.6, label=_label(profile, m))
    _px_axis(ax, profile)
    ax.set_yscale("log")
    ax.set_ylabel("FLOPs per image (forward)")
    ax.set_title("FLOPs vs input size", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_memory(profile, ax=None, batch_size: int | None = None):
    """x = input side (px, log), y = peak forward memory in MiB (log) at ``batch_size`` (default the
    largest measured); ViTs on the fused path (solid) and the explicit one (dashed). Returns the axes."""
    ax = new_axes(ax)
    b = int(profile.batch_size.max()) if batch_size is None else batch_size
    for m, c in _colors(profile).items():
        px, _, v = profile.select(m, "peak_memory", batch_size=b)
        ax.plot(px, v / 2**20, color=c, marker=_marker(profile, m), lw=1.6, label=_label(profile, m))
        px, _, v = profile.select(m, "peak_memory_explicit", batch_size=b)
        if len(px):
            ax.plot(px, v / 2**20, color=c, ls="--", marker=".", lw=1.2, label=f"{m}, explicit attention maps")
    _px_axis(ax, profile)
    ax.set_yscale("log")
    ax.set_ylabel(f"peak forward memory (MiB), batch {b}")
    ax.set_title(f"Peak memory vs input size ({profile.memory_method})", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_attention_share(profile, ax=None):
    """x = tokens N (log), y = share of a ViT's FLOPs: attention products (solid) and the linear layers
    of its blocks (dashed); a dotted line where they cross, when the sizes measured bracket it.
    Returns the axes."""
    ax = new_axes(ax)
    for m, c in _colors(profile).items():
        if profile.kind_of(m) != "vit":
            continue
        s = profile.flop_shares(m)
        ax.plot(s["tokens"], s["attention"], color=c, marker="o", lw=1.6, label=f"{m}: attention (q k^T, attn v)")
        ax.plot(s["tokens"], s["linear"], color=c, marker="^", ls="--", lw=1.6, label=f"{m}: qkv, proj, MLP")
        n = profile.attention_crossing(m)
        if n is not None:
            ax.axvline(n, color=c, ls=":", lw=1)
            ax.annotate(f"cross at ~{n:.0f} tokens", xy=(n, 0.03), xytext=(4, 0), textcoords="offset points",
                        fontsize=7, color=c)
    ax.set_xscale("log")
    ticks = sorted({int(t) for t in profile.tokens.tolist() if t > 0})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("tokens N")
    ax.set_ylabel("share of forward FLOPs")
    ax.set_title("Where attention FLOPs overtake the linear layers", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_throughput(profile, ax=None):
    """x = input side (px, log), y = images per second (log) at the batch size measured: the best of
    the interleaved rounds, with a bar down to the slowest round. Returns the axes."""
    ax = new_axes(ax)
    for m, c in _colors(profile).items():
        px, _, best = profile.select(m, "throughput", "best")
        if not len(px):
            continue
        lo = profile.select(m, "throughput", "min")[2]
        ax.errorbar(px, best, yerr=np.vstack([best - lo, 0 * best]), color=c, marker=_marker(profile, m), lw=1.6,
                    capsize=3, label=_label(profile, m))
    _px_axis(ax, profile)
    ax.set_yscale("log")
    where = f"{profile.device}, {profile.threads} threads" if profile.device.startswith("cpu") else profile.device
    ax.set_ylabel(f"images/s, batch {int(profile.batch_size.max())}")
    ax.set_title(f"Throughput ({where}, {profile.precision})", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return ax


def cost_figure(profile):
    """The four cost panels on one figure (FLOPs, memory, attention share, throughput). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    plot_flops(profile, ax=axes[0, 0])
    plot_memory(profile, ax=axes[0, 1])
    plot_attention_share(profile, ax=axes[1, 0])
    plot_throughput(profile, ax=axes[1, 1])
    fig.tight_layout()
    return fig
