"""bf16/fp16 forward passes: every analysis stays close to fp32, and the reductions over the
captured maps run in float32 however the model ran."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitlens.analyses.attention.distance import mean_attention_distance
from vitlens.analyses.attention.rollout import attention_rollout
from vitlens.analyses.attention.streaming import attention_distance
from vitlens.analyses.fields.effective import effective_receptive_field
from vitlens.capture.attention import capture_attention
from vitlens.data.shapes import generate, normalize
from vitlens.models.layout import token_layout
from vitlens.models.loading import load_model
from vitlens.runtime.precision import autocast


@pytest.fixture(scope="module")
def vit_and_images():
    model = load_model("vitlens/vit-tiny-shapes")
    images, _, _ = generate(6, seed=3, split="test")
    return model, normalize(images)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_analyses_close_to_fp32(vit_and_images, precision):
    model, x = vit_and_images
    a = attention_distance(model, x).distance
    b = attention_distance(model, x, precision=precision).distance
    np.testing.assert_allclose(b, a, rtol=0.03)
    e1 = effective_receptive_field(model, x, progress=False)
    e2 = effective_receptive_field(model, x, progress=False, precision=precision)
    np.testing.assert_allclose(e2.spread_px, e1.spread_px, rtol=0.05)
    # Plain rollout combines float32 maps whose rows are renormalised after the upcast: within 0.5%
    # of the largest value (measured: 0.11% bf16, 0.01% fp16). Gradient rollout multiplies by
    # gradients taken in the reduced precision: bf16's 8-bit mantissa leaves up to 6.5% there.
    tolerance = {("rollout", "bf16"): 0.005, ("rollout", "fp16"): 0.005,
                 ("grad-rollout", "bf16"): 0.08, ("grad-rollout", "fp16"): 0.01}
    for method in ("rollout", "grad-rollout"):
        r1 = attention_rollout(model, x, method=method).maps
        r2 = attention_rollout(model, x, method=method, precision=precision).maps
        assert r2.dtype == np.float64
        np.testing.assert_allclose(r2, r1, atol=tolerance[method, precision] * np.abs(r1).max())


def test_callback_reduces_in_float32_under_autocast(vit_and_images):
    """The accumulated distance equals the float64 distance of the very bf16 maps the model made:
    nothing after the capture is rounded to bf16."""
    model, x = vit_and_images
    layout = token_layout(model)
    maps = []
    with torch.no_grad(), capture_attention(model) as cap, autocast("cpu", "bf16"):
        model(x)
    maps = [m for m in cap.maps]
    assert maps[0].dtype == torch.bfloat16
    ref = np.stack([mean_attention_distance(m.double(), layout).numpy().mean(0) for m in maps])
    got = attention_distance(model, x, precision="bf16", attention_path="full").distance  # the maps read above
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_unknown_precision_is_refused(vit_and_images):
    model, x = vit_and_images
    with pytest.raises(ValueError, match="precision"):
        attention_rollout(model, x, precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        effective_receptive_field(model, x, progress=False, precision="int8")
