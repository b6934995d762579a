"""Hugging Face transformers vision models: ViT, DeiT (distilled), DINOv2 (with or without
registers), CLIP and SigLIP vision towers (alone or inside CLIPModel / SiglipModel), and BEiT.

Attention: each model's attention module computes its probabilities in the function chosen by
``config._attn_implementation``. The eager one (``eager_attention_forward`` in each modeling file)
forms ``softmax(q k^T * scale + mask)`` explicitly and the module returns
``(output, attn_weights)``; the SDPA and flash ones form nothing. On entry every config object of
the model is switched to ``"eager"``, and a forward hook on each attention module (the class the
model declares in ``_can_record_outputs["attentions"]``, the same modules ``output_attentions``
reads) takes the weights the module returned. In eval mode the attention dropout is zero, so
those are the probabilities before dropout; a module in training mode with attention dropout
raises instead of giving post-dropout weights. On exit hooks are removed and every config's
implementation is restored, also when the body raises.
"""

from __future__ import annotations

import inspect
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from ...runtime.errors import ModelLoadError, UnsupportedModelError
from ...runtime.sizes import size_pair
from ..tokens import TokenLayout
from ._residual import no_residual_blocks, site, transformer_block
from .base import (
    AttentionBlock,
    EmitAttention,
    EmitQueryKey,
    FamilyAdapter,
    PositionTable,
    Preprocessing,
    ResidualBlock,
    ResidualSite,
    kept_blocks,
)
from .registry import register_family

__all__ = ["TransformersAdapter", "load", "SUPPORTED_MODEL_TYPES", "DEFAULT_PREPROCESSING", "returned_weights_capture",
           "processor_config", "from_processor"]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Eval preprocessing per model type when no processor config is available locally: the defaults
#: of the model type's image processor in transformers (ViTImageProcessor, CLIPImageProcessor,
#: SiglipImageProcessor, BeitImageProcessor), and for DeiT and DINOv2 the published
#: facebook/deit-* and facebook/dinov2-* processor configs (DINOv2 has no processor class of its
#: own; DeiTImageProcessor's class default mean/std of 0.5 is not what its checkpoints use).
#: The input size is always the model config's ``image_size``; ``crop_pct`` keeps the ratio.
_SQUASH = dict(crop_mode="squash", resize_shortest=False)
_SHORTEST = dict(crop_mode="center", resize_shortest=True)
_STANDARD = dict(mean=IMAGENET_STANDARD_MEAN, std=IMAGENET_STANDARD_STD)
_IMAGENET = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
DEFAULT_PREPROCESSING: dict[str, dict] = {
    "vit": dict(interpolation="bilinear", crop_pct=1.0, **_STANDARD, **_SQUASH),
    "deit": dict(interpolation="bicubic", crop_pct=224 / 256, **_IMAGENET, **_SQUASH),
    "dinov2": dict(interpolation="bicubic", crop_pct=224 / 256, **_IMAGENET, **_SHORTEST),
    "clip": dict(interpolation="bicubic", crop_pct=1.0, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, **_SHORTEST),
    "siglip": dict(interpolation="bicubic", crop_pct=1.0, **_STANDARD, **_SQUASH),
    "beit": dict(interpolation="bicubic", crop_pct=1.0, **_STANDARD, **_SQUASH),
}
DEFAULT_PREPROCESSING["dinov2_with_registers"] = DEFAULT_PREPROCESSING["dinov2"]
SUPPORTED_MODEL_TYPES = tuple(DEFAULT_PREPROCESSING)

_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _vision_config(model: nn.Module):
    cfg = model.config
    return getattr(cfg, "vision_config", None) or cfg


def _model_type(model: nn.Module) -> str:
    return str(getattr(_vision_config(model), "model_type", "")).removesuffix("_vision_model")


def _declared(model: nn.Module, key: str) -> tuple[type, ...]:
    """Module classes the model declares for ``output_attentions`` / ``output_hidden_states``."""
    spec = (getattr(type(model), "_can_record_outputs", None) or {}).get(key)
    specs = [s if isinstance(s, type) else getattr(s, "target_class", None)
             for s in (spec if isinstance(spec, (list, tuple)) else [spec])]
    return tuple(c for c in specs if isinstance(c, type))


def _impl_attr(cfg) -> str:
    # The internal attribute, on each config object separately: exact to restore, no validation
    # or re-dispatch to sub-configs (every config of the model is switched anyway).
    return "_attn_implementation_internal" if hasattr(cfg, "_attn_implementation_internal") \
        else "_attn_implementation"


def _get_impl(cfg):
    return getattr(cfg, _impl_attr(cfg), None)


def _set_impl(cfg, value) -> None:
    object.__setattr__(cfg, _impl_attr(cfg), value)


def _dropout_rate(module: nn.Module) -> float:
    for attr in ("attention_dropout", "dropout"):
        v = getattr(module, attr, None)
        if isinstance(v, nn.Dropout):
            return float(v.p)
        if isinstance(v, (int, float)):
            return float(v)
    return 0.0


@register_family
class TransformersAdapter(FamilyAdapter):
    """Vision models built by Hugging Face transformers (see :data:`SUPPORTED_MODEL_TYPES`)."""

    family = "transformers"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.model_type = _model_type(model)
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{type(model).__name__} is a transformers model of type '{self.model_type}', which "
                f"vitlens does not read; supported types: {', '.join(SUPPORTED_MODEL_TYPES)}.")
        self.config = _vision_config(model)
        vm = getattr(model, "vision_model", None)
        self.root = vm if isinstance(vm, nn.Module) else getattr(model, "base_model", model)
        names = {id(m): n for n, m in model.named_modules()}
        self.prefix = names[id(self.root)] + "." if names.get(id(self.root)) else ""
        self.embeddings = self.root.embeddings

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("transformers."):
            return False
        from transformers import PreTrainedModel
        return isinstance(model, PreTrainedModel)

    # -- tokens and attention --------------------------------------------------------------
    def _prefix_kinds(self) -> tuple[str, ...]:
        e = self.embeddings  # sequence order: [cls, dist | registers..., patches]
        cls = getattr(e, "cls_token", None) is not None or getattr(e, "class_embedding", None) is not None
        reg = getattr(e, "register_tokens", None)
        return (("cls",) * cls + ("dist",) * (getattr(e, "distillation_token", None) is not None)
                + ("reg",) * (int(reg.shape[1]) if reg is not None else 0))

    def token_layout(self, input_size: int | Sequence[int] | None = None) -> TokenLayout:
        default = size_pair(self.config.image_size)
        size = default if input_size is None else size_pair(input_size)
        if size != default and not hasattr(self.embeddings, "interpolate_pos_encoding"):
            raise UnsupportedModelError(
                f"{type(self.model).__name__} was built for {default[0]} x {default[1]} inputs and "
                f"cannot resample its position embedding to {size[0]} x {size[1]}.")
        ph, pw = size_pair(self.config.patch_size)
        return TokenLayout(prefix_kinds=self._prefix_kinds(), grid_size=(size[0] // ph, size[1] // pw),
                           patch_stride=(float(ph), float(pw)), input_size=size)

    def _named(self, key: str) -> list[tuple[str, nn.Module]]:
        classes = _declared(self.model, key)
        if not classes:
            import transformers
            raise UnsupportedModelError(
                f"{type(self.model).__name__} (transformers {transformers.__version__}) does not declare "
                "its attention and layer modules (_can_record_outputs); vitlens reads transformers "
                "releases whose models dispatch attention through config._attn_implementation.")
        return [(self.prefix + n, m) for n, m in self.root.named_modules() if isinstance(m, classes)]

    def attention_blocks(self) -> list[AttentionBlock]:
        found = self._named("attentions")
        if not found:
            raise UnsupportedModelError(f"{type(self.model).__name__} has no attention module vitlens knows.")
        heads = int(self.config.num_attention_heads)
        return [AttentionBlock(name=n, module=m, depth=i,
                               num_heads=int(getattr(m, "num_heads", None) or getattr(m, "num_attention_heads", heads)))
                for i, (n, m) in enumerate(found)]

    def _configs(self) -> list:
        from transformers import PretrainedConfig
        seen: dict[int, object] = {}
        stack = [self.model.config] + [getattr(m, "config", None) for m in self.model.modules()]
        while stack:
            c = stack.pop()
            if isinstance(c, PretrainedConfig) and id(c) not in seen:
                seen[id(c)] = c
                stack += [getattr(c, k, None) for k in (getattr(c, "sub_configs", None) or {})]
        return list(seen.values())

    def exact_attention(self, blocks: Sequence[int], emit: EmitAttention):
        """Inside: ``emit(i, attn)`` with ``attn`` ``[batch, head, query, key]`` for each block in
        ``blocks``, the eager path's own probabilities."""
        return returned_weights_capture(self.attention_blocks(), blocks, emit, self._configs())

    def exact_query_key(self, blocks: Sequence[int], emit: EmitQueryKey):
        """Inside: ``emit(i, qk)`` with the q, k, scale and mask each attention module passes to
        ``scaled_dot_product_attention``: every config is switched to ``"sdpa"`` (the fast path) on
        entry and restored on exit. BEiT's relative position bias is not passed that way in every
        transformers release, so BEiT is read as full maps."""
        if self.model_type == "beit":
            raise UnsupportedModelError(
                "transformers' BEiT adds its relative position bias outside the attention call in some "
                "releases, so its queries and keys alone do not give its probabilities; its full maps are read.")
        from ._sdpa import sdpa_query_key

        all_blocks = self.attention_blocks()
        keep = kept_blocks(blocks, len(all_blocks))
        return _switched(self._configs(), "sdpa", sdpa_query_key(all_blocks, keep, emit,
                                                                 "this transformers version's attention"))

    # -- tables, outputs, filters, preprocessing ---------------------------------------------
    def _table(self) -> torch.Tensor | None:
        """The stored absolute table ``[1, entry, dim]``, or None."""
        e = self.embeddings
        if isinstance(getattr(e, "position_embedding", None), nn.Embedding):  # CLIP, SigLIP
            return e.position_embedding.weight.unsqueeze(0)
        table = getattr(e, "position_embeddings", None)  # ViT, DeiT, DINOv2; None in BEiT
        return table if isinstance(table, torch.Tensor) else None

    def position_table(self, input_size: int | Sequence[int] | None = None, *,
                       interpolation: str = "bicubic", antialias: bool = False) -> PositionTable | None:
        """The learned table on the grid, resampled by the model's own ``interpolate_pos_encoding``
        (its fixed filter; ``interpolation`` and ``antialias`` are not used). None for BEiT's
        relative position bias."""
        table = self._table()
        if table is None:
            return None
        native = self.token_layout().grid_size
        prefix = int(table.shape[1]) - native[0] * native[1]
        layout = self.token_layout(input_size)
        gh, gw = layout.grid_size
        with torch.no_grad():
            if layout.grid_size == native:
                patches = table[0, prefix:]
            else:
                probe = table.new_zeros(1, prefix + gh * gw, table.shape[-1])  # only its shape is read
                patches = self.embeddings.interpolate_pos_encoding(probe, *layout.input_size)[0, prefix:]
        return PositionTable(patches=patches.detach().reshape(gh, gw, -1).clone(), prefix_entries=prefix,
                             trainable=bool(table.requires_grad),
                             resampling=f"transformers {type(self.embeddings).__name__}.interpolate_pos_encoding")

    def block_outputs(self) -> list[str]:
        return [n for n, _ in self._named("hidden_states")]

    def residual_blocks(self) -> list[ResidualBlock]:
        """Every encoder layer (the modules ``output_hidden_states`` reads). The residual sums sit
        inside each layer's forward, so the branches are read where they enter them: DINOv2's
        ``layer_scale1`` / ``layer_scale2``; BEiT's shared ``drop_path`` (after ``lambda_1`` /
        ``lambda_2``), first and second call; CLIP's and SigLIP's ``self_attn`` (its first output)
        and ``mlp``; ViT's and DeiT's shared ``dropout``, first and second call. Each layer's output
        is checked against the sums of the parts on every pass."""
        out = []
        for i, (name, layer) in enumerate(self._named("hidden_states")):
            pair = _branch_sites(name, layer)
            if pair is None:
                raise no_residual_blocks(self.model, f"its layer {name} ({type(layer).__name__}) is not one "
                                                     "whose residual branches vitlens knows")
            out.append(transformer_block(i, name, layer, *pair))
        if not out:
            raise no_residual_blocks(self.model)
        return out

    def embedding_parameters(self) -> list[str]:
        """Every parameter of the vision model's ``embeddings`` module (patch projection, position
        table, class, distillation and register tokens, mask token)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        root = names[id(self.embeddings)]
        return [f"{root}.{n}" for n, _ in self.embeddings.named_parameters()]

    def image_tower(self) -> list[str]:
        """The vision model and its projection in a CLIP-like model (not the text tower); else the
        whole model."""
        if not hasattr(self.model, "text_model"):
            return [""]
        names = {id(m): n for n, m in self.model.named_modules()}
        proj = getattr(self.model, "visual_projection", None)
        return [names[id(self.root)]] + ([names[id(proj)]] if isinstance(proj, nn.Module) else [])

    def output_layout(self, name: str) -> str:
        return "tokens"

    def patch_filters(self) -> torch.Tensor | None:
        e = self.embeddings
        conv = getattr(getattr(e, "patch_embeddings", None), "projection", None) or getattr(e, "patch_embedding", None)
        return conv.weight.detach().clone() if isinstance(conv, nn.Conv2d) else None

    def preprocessing(self) -> Preprocessing:
        proc = processor_config(str(getattr(self.model.config, "_name_or_path", "") or ""))
        size = size_pair(self.config.image_size)
        if proc is None:
            return Preprocessing(input_size=size, **DEFAULT_PREPROCESSING[self.model_type])
        return from_processor(proc, size, DEFAULT_PREPROCESSING[self.model_type])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, projected image features (CLIPModel, SiglipModel) or the pooled output."""
        m = self.model
        fn = m.get_image_features if hasattr(m, "text_model") and hasattr(m, "get_image_features") else m
        params = inspect.signature(fn.forward if isinstance(fn, nn.Module) else fn).parameters
        resize = tuple(x.shape[-2:]) != size_pair(self.config.image_size) and "interpolate_pos_encoding" in params
        out = fn(pixel_values=x, **({"interpolate_pos_encoding": True} if resize else {}))  # DINOv2 always resamples
        if isinstance(out, torch.Tensor):
            return out
        for key in ("logits", "image_embeds", "pooler_output", "last_hidden_state"):
            if isinstance(getattr(out, key, None), torch.Tensor):
                return getattr(out, key)
        raise UnsupportedModelError(f"{type(m).__name__} returned no tensor vitlens can use.")


def _branch_sites(name: str, layer: nn.Module) -> tuple[ResidualSite, ResidualSite] | None:
    """Where the attention and MLP branches of a transformers encoder layer enter the stream."""
    def has(attr):
        return isinstance(getattr(layer, attr, None), nn.Module)

    if has("layer_scale1") and has("layer_scale2"):                       # DINOv2 (with registers)
        return site(name, "layer_scale1", layer.layer_scale1), site(name, "layer_scale2", layer.layer_scale2)
    if hasattr(layer, "lambda_1") and has("drop_path"):                    # BEiT: drop_path(lambda * f)
        return site(name, "drop_path", layer.drop_path), site(name, "drop_path", layer.drop_path, call=1)
    if has("self_attn") and has("mlp") and has("layer_norm1"):             # CLIP, SigLIP
        return site(name, "self_attn", layer.self_attn), site(name, "mlp", layer.mlp)
    if has("attention") and has("dropout") and has("mlp"):                 # ViT, DeiT
        return site(name, "dropout", layer.dropout), site(name, "dropout", layer.dropout, call=1)
    return None


# --------------------------------------------------------------------------- preprocessing

def processor_config(name: str) -> dict | None:
    """``preprocessor_config.json`` from a local directory or the hub cache, without network."""
    path = Path(name) / "preprocessor_config.json" if name else None
    if path is not None and not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache
            found = try_to_load_from_cache(name, "preprocessor_config.json")
        except Exception:  # not a repo id, or no cache
            found = None
        path = Path(found) if isinstance(found, (str, os.PathLike)) else None
    try:
        return json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None


def _hw(s) -> tuple[int, int] | None:
    if isinstance(s, int):
        return (s, s)
    return (int(s["height"]), int(s["width"])) if isinstance(s, dict) and "height" in s and "width" in s else None


def from_processor(p: dict, model_size: tuple[int, int], defaults: dict) -> Preprocessing:
    """An image processor's config as a Preprocessing: resize (shortest edge, or both sides),
    optional centre crop, resample filter, mean and std (rescaling by 1/255 assumed)."""
    size, crop = p.get("size"), p.get("crop_size")
    do_crop = bool(p.get("do_center_crop", False)) and crop is not None
    norm = p.get("do_normalize", True)
    mean = tuple(float(v) for v in p.get("image_mean", defaults["mean"])) if norm else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in p.get("image_std", defaults["std"])) if norm else (1.0, 1.0, 1.0)
    common = dict(mean=mean, std=std, interpolation=_PIL_FILTERS.get(p.get("resample"), defaults["interpolation"]))
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    final = (_hw(crop) if do_crop else _hw(size)) or model_size
    if shortest is not None:
        return Preprocessing(input_size=final, crop_pct=min(final) / float(shortest), **common, **_SHORTEST)
    resized = _hw(size) or final
    return Preprocessing(input_size=final, crop_pct=final[0] / float(resized[0]), **common, **_SQUASH)


# --------------------------------------------------------------------------- loading

def load(name: str, *, pretrained: bool = True, checkpoint: str | os.PathLike | None = None,
         device: str | torch.device = "cpu") -> nn.Module:
    """Build ``hf:<repo id or local directory>`` (saved with ``save_pretrained``) as the class its
    config names (``architectures``), or AutoModel's choice when it names none.

    Raises:
        ModelLoadError: transformers missing, an unknown repo, or no network and no cached copy.
    """
    from ..loading import hub_reachable
    from .common import finish_loading, load_strict
    ref = name.split(":", 1)[1]
    try:
        import transformers
    except ImportError as e:
        raise ModelLoadError(f"{name} needs transformers: pip install 'vitlens[hf]'.") from e
    local = Path(ref).is_dir()
    offline = local or not hub_reachable()
    try:
        config = transformers.AutoConfig.from_pretrained(ref, local_files_only=offline)
    except (OSError, ValueError) as e:
        why = ("no local copy is cached and the hub is not reachable from this machine" if offline and not local
               else str(e).splitlines()[0])
        raise ModelLoadError(f"cannot load {name}: {why}. Pass a local directory saved with "
                             "save_pretrained (hf:/path/to/dir) or check the repo id.") from e
    arch = (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(transformers, arch, None) or transformers.AutoModel
    if checkpoint is not None or not pretrained:
        model = cls.from_config(config) if cls is transformers.AutoModel else cls(config)
        if checkpoint is not None:
            load_strict(model, name, checkpoint)
        weights = f"checkpoint:{Path(checkpoint)}" if checkpoint is not None else "random"
    else:
        try:
            model = cls.from_pretrained(ref, local_files_only=offline)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the weights of {name}: {str(e).splitlines()[0]}") from e
        weights = f"local:{Path(ref).resolve()}" if local else f"hub:{ref}"
        if not offline:
            try:  # the processor config, so preprocessing() finds it in the cache
                from huggingface_hub import hf_hub_download
                hf_hub_download(ref, "preprocessor_config.json")
            except Exception:
                pass
    source = {"name": name, "architecture": type(model).__name__, "tag": None, "weights": weights,
              "model_type": _model_type(model)}
    return finish_loading(model, source, device)


@contextmanager
def _switched(configs: Sequence, implementation: str, inner) -> Iterator[None]:
    """Every config's attention implementation set to ``implementation`` around ``inner`` (a context),
    restored on exit, also when the body raises."""
    saved = [(c, _get_impl(c)) for c in configs]
    try:
        for c, _ in saved:
            _set_impl(c, implementation)
        with inner:
            yield
    finally:
        for c, value in saved:
            _set_impl(c, value)


@contextmanager
def returned_weights_capture(all_blocks: Sequence[AttentionBlock], blocks: Sequence[int], emit: EmitAttention,
                             configs: Sequence) -> Iterator[None]:
    """transformers' eager attention, read from the weights each attention module returns.

    Every config's attention implementation is set to ``eager`` on entry and restored on exit (also
    when the body raises); a forward hook on each kept block passes the probabilities it returns,
    ``[batch (x window), head, query, key]``, to ``emit(i, attn)``. A module in training mode with
    attention dropout is refused (its weights are after dropout); a block that ran without returning
    its probabilities is an error on exit.
    """
    keep = kept_blocks(blocks, len(all_blocks))
    saved = [(c, _get_impl(c)) for c in configs]
    ran, fired, handles = dict.fromkeys(keep, 0), dict.fromkeys(keep, 0), []

    def hook_for(index: int, name: str):
        def hook(module, _args, output):
            ran[index] += 1
            if module.training and _dropout_rate(module) > 0:
                raise UnsupportedModelError(
                    f"attention module {name} is in training mode with attention dropout "
                    f"p={_dropout_rate(module):g}, so the weights it returns are after dropout; call "
                    "model.eval() before capturing attention.")
            weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if isinstance(weights, torch.Tensor):
                fired[index] += 1
                emit(index, weights)
        return hook

    try:
        for c, _ in saved:
            _set_impl(c, "eager")
        handles += [all_blocks[i].module.register_forward_hook(hook_for(i, all_blocks[i].name)) for i in keep]
        yield
    finally:
        for h in handles:
            h.remove()
        for c, value in saved:
            _set_impl(c, value)
    for i in keep:
        if ran[i] > fired[i]:
            b = all_blocks[i]
            raise UnsupportedModelError(
                f"attention module {b.name} ({type(b.module).__name__}) ran on the eager path without "
                "returning its probabilities; this transformers version is not one vitlens knows.")
