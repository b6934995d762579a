"""Hugging Face transformers Swin and Swin-V2 (``SwinModel``, ``SwinForImageClassification``,
``Swinv2Model``, ``Swinv2ForImageClassification``, ...).

Swin's ``SwinAttention`` dispatches on ``config._attn_implementation``; its eager function forms
``softmax(q k^T * scale + relative bias + shift mask)`` and the module returns
``(output, weights [batch * window, head, query, key])``. Inside
:meth:`TransformersWindowedAdapter.exact_attention` every config of the model is switched to
``"eager"`` and a forward hook takes those weights (in eval mode the attention dropout is zero, so
they are the probabilities before dropout; a module in training mode with attention dropout raises).
Swin-V2's ``Swinv2SelfAttention`` always forms ``softmax(cos(q, k) * logit scale + 16 sigmoid(cpb)
+ mask)`` and then calls its ``dropout``, whose input a pre-hook reads. On exit hooks are removed
and every config restored, also when the body raises.

transformers pads each block's map to a multiple of the window first and shifts the padded map
(timm shifts first), so :meth:`TransformersWindowedAdapter.window_layout` marks its blocks
``pad_before_shift``.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from ...runtime.errors import UnsupportedModelError
from ...runtime.sizes import size_pair
from ..tokens import TokenLayout
from ..windows import BlockGeometry, WindowLayout
from .base import AttentionBlock, EmitAttention, FamilyAdapter, PositionTable, Preprocessing, kept_blocks
from .registry import register_family

__all__ = ["TransformersWindowedAdapter", "DEFAULT_WINDOWED_PREPROCESSING"]

#: Eval preprocessing when no processor config is available locally: the published
#: microsoft/swin-* and microsoft/swinv2-* processor configs (ViTImageProcessor resizing both
#: sides to the model's size, bicubic, ImageNet mean and std).
DEFAULT_WINDOWED_PREPROCESSING = dict(interpolation="bicubic", crop_pct=1.0, mean=(0.485, 0.456, 0.406),
                                      std=(0.229, 0.224, 0.225), crop_mode="squash", resize_shortest=False)


@register_family
class TransformersWindowedAdapter(FamilyAdapter):
    """transformers Swin and Swin-V2 models."""

    family = "transformers-windowed"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.config = model.config
        self.v2 = model.config.model_type == "swinv2"
        self.root = getattr(model, "base_model", model)
        names = {id(m): n for n, m in model.named_modules()}
        self.prefix = names[id(self.root)] + "." if names.get(id(self.root)) else ""

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("transformers."):
            return False
        cfg = getattr(model, "config", None)
        return getattr(cfg, "model_type", None) in ("swin", "swinv2") and \
            hasattr(getattr(model, "base_model", model), "encoder")

    # -- geometry ------------------------------------------------------------------------------
    def _stages(self):
        return list(self.root.encoder.layers)

    def window_layout(self, input_size: int | Sequence[int] | None = None) -> WindowLayout:
        """Every block's geometry for inputs of ``input_size`` (default: the config's ``image_size``).

        Swin clamps a block's window to the map (and drops its shift) on every forward when the map
        is no larger than the window; Swin-V2 fixed both when it was built."""
        size = size_pair(self.config.image_size) if input_size is None else size_pair(input_size)
        patch = size_pair(self.config.patch_size)
        grid = tuple(-(-s // p) for s, p in zip(size, patch))   # the input is padded to whole patches
        stride = tuple(float(p) for p in patch)
        out = []
        for i, stage in enumerate(self._stages()):
            for j, layer in enumerate(stage.blocks):
                w, s = int(layer.window_size), int(layer.shift_size)
                if not self.v2 and min(grid) <= w:
                    w, s = min(grid), 0
                out.append(BlockGeometry(grid_size=grid, stride=stride, window_size=(w, w), shift=(s, s),
                                         input_size=size, stage=i, block=j, pad_before_shift=True))
            if stage.downsample is not None:
                grid = tuple((g + 1) // 2 for g in grid)
                stride = tuple(2 * v for v in stride)
        return WindowLayout(tuple(out), size)

    def token_layout(self, input_size: int | Sequence[int] | None = None) -> TokenLayout:
        from .timm_windowed import no_token_layout
        raise no_token_layout(self.model)

    # -- attention -----------------------------------------------------------------------------
    def _layers(self) -> list[tuple[str, nn.Module]]:
        return [(f"{self.prefix}encoder.layers.{i}.blocks.{j}", layer)
                for i, stage in enumerate(self._stages()) for j, layer in enumerate(stage.blocks)]

    def attention_blocks(self) -> list[AttentionBlock]:
        out = []
        for d, (name, layer) in enumerate(self._layers()):
            if self.v2:
                mod, sub = layer.attention.self, "attention.self"
            else:
                mod, sub = layer.attention, "attention"
            out.append(AttentionBlock(name=f"{name}.{sub}", module=mod, num_heads=int(mod.num_attention_heads),
                                      depth=d))
        return out

    def exact_attention(self, blocks: Sequence[int], emit: EmitAttention):
        """Inside: ``emit(i, attn)`` with ``attn`` ``[batch * window, head, query, key]`` for each
        block index in ``blocks``. Swin returns its eager weights; Swin-V2's cosine attention is read
        at the input of its attention dropout."""
        from .transformers import returned_weights_capture

        all_blocks = self.attention_blocks()
        if not self.v2:
            return returned_weights_capture(all_blocks, blocks, emit, self._configs())
        return self._dropout_input_capture(all_blocks, blocks, emit)

    @contextmanager
    def _dropout_input_capture(self, all_blocks, blocks: Sequence[int], emit: EmitAttention) -> Iterator[None]:
        keep = kept_blocks(blocks, len(all_blocks))
        ran, fired, handles = dict.fromkeys(keep, 0), dict.fromkeys(keep, 0), []

        def probs_hook(i: int):
            def hook(_module, args):
                fired[i] += 1
                emit(i, args[0])

            def ran_hook(_module, _args, _output):
                ran[i] += 1
            return hook, ran_hook

        try:
            for i in keep:
                b = all_blocks[i]
                on_probs, on_ran = probs_hook(i)
                handles.append(b.module.dropout.register_forward_pre_hook(on_probs))
                handles.append(b.module.register_forward_hook(on_ran))
            yield
        finally:
            for h in handles:
                h.remove()
        for i in keep:
            if ran[i] > fired[i]:
                b = all_blocks[i]
                raise UnsupportedModelError(
                    f"attention module {b.name} ({type(b.module).__name__}) ran without forming its "
                    "probabilities where vitlens reads them; this transformers version is not one vitlens knows.")

    def _configs(self) -> list:
        from transformers import PretrainedConfig
        seen: dict[int, object] = {}
        for c in [self.model.config] + [getattr(m, "config", None) for m in self.model.modules()]:
            if isinstance(c, PretrainedConfig):
                seen.setdefault(id(c), c)
        return list(seen.values())

    # -- tables, outputs, filters, preprocessing -----------------------------------------------
    def position_table(self, input_size: int | Sequence[int] | None = None, *,
                       interpolation: str = "bicubic", antialias: bool = False) -> PositionTable | None:
        """The absolute table of a model built with ``use_absolute_embeddings`` on the first
        stage's grid ``[grid_h, grid_w, dim]`` (resampled by the model's own
        ``interpolate_pos_encoding``); None otherwise (relative bias only, Swin's default)."""
        e = self.root.embeddings
        table = getattr(e, "position_embeddings", None)
        if not isinstance(table, torch.Tensor):
            return None
        gh, gw = self.window_layout(input_size)[0].grid_size
        own = self.window_layout()[0].grid_size
        with torch.no_grad():
            if (gh, gw) == own:
                patches = table[0]
            else:
                size = self.window_layout(input_size).input_size
                probe = table.new_zeros(1, gh * gw, table.shape[-1])  # only its shape is read
                patches = e.interpolate_pos_encoding(probe, *size)[0]
        return PositionTable(patches=patches.detach().reshape(gh, gw, -1).clone(), prefix_entries=0,
                             trainable=bool(table.requires_grad),
                             resampling=f"transformers {type(e).__name__}.interpolate_pos_encoding")

    def residual_blocks(self):
        """Refused: see :func:`~vitlens.models.families._residual.windowed_refusal`."""
        from ._residual import windowed_refusal
        raise windowed_refusal(self.model)

    def block_outputs(self) -> list[str]:
        """Every block (``SwinLayer``), in forward order; each returns tokens ``[batch, h * w, channel]``
        of its stage's map (:meth:`feature_map` lays them out)."""
        return [name for name, _ in self._layers()]

    def stage_outputs(self) -> list[str]:
        """Every stage, whose output is after its patch merging (the next stage's map)."""
        return [f"{self.prefix}encoder.layers.{i}" for i in range(len(self._stages()))]

    def feature_map(self, name: str, output: torch.Tensor, input_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """A block's token output ``[batch, h * w, channel]`` as the feature map ``[batch, channel, h, w]``."""
        names = self.block_outputs()
        if name not in names:
            raise UnsupportedModelError(f"{name} is not a block of {type(self.model).__name__}")
        h, w = self.window_layout(input_size)[names.index(name)].grid_size
        return output.reshape(output.shape[0], h, w, -1).permute(0, 3, 1, 2)

    def embedding_parameters(self) -> list[str]:
        """Every parameter of ``embeddings`` (patch projection and norm, mask token, an absolute table)."""
        return [f"{self.prefix}embeddings.{n}" for n, _ in self.root.embeddings.named_parameters()]

    def image_tower(self) -> list[str]:
        return [""]

    def output_layout(self, name: str) -> str:
        """Blocks and stages give tokens ``[batch, h * w, channel]`` (:meth:`feature_map` lays them out)."""
        return "tokens"

    def patch_filters(self) -> torch.Tensor | None:
        conv = getattr(getattr(self.root.embeddings, "patch_embeddings", None), "projection", None)
        return conv.weight.detach().clone() if isinstance(conv, nn.Conv2d) else None

    def preprocessing(self) -> Preprocessing:
        from .transformers import from_processor, processor_config
        proc = processor_config(str(getattr(self.config, "_name_or_path", "") or ""))
        size = size_pair(self.config.image_size)
        if proc is None:
            return Preprocessing(input_size=size, **DEFAULT_WINDOWED_PREPROCESSING)
        return from_processor(proc, size, DEFAULT_WINDOWED_PREPROCESSING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, else the pooled output, else the last hidden state."""
        m = self.model
        params = inspect.signature(m.forward).parameters
        resize = tuple(x.shape[-2:]) != size_pair(self.config.image_size) and "interpolate_pos_encoding" in params \
            and getattr(self.root.embeddings, "position_embeddings", None) is not None
        out = m(pixel_values=x, **({"interpolate_pos_encoding": True} if resize else {}))
        if isinstance(out, torch.Tensor):
            return out
        for key in ("logits", "pooler_output", "last_hidden_state"):
            if isinstance(getattr(out, key, None), torch.Tensor):
                return getattr(out, key)
        raise UnsupportedModelError(f"{type(m).__name__} returned no tensor vitlens can use.")
