"""``vitlens info`` lists the heads per block in forward order, whatever their number of digits."""

from __future__ import annotations

import re

from vitlens.jobs.info import model_info
from vitlens.models.families.registry import adapter_for
from vitlens.models.loading import load_model


def _heads_line(text: str) -> str:
    return re.search(r"heads per block: (.*?)\), first", text).group(1)


def test_swin_heads_are_listed_in_forward_order_with_their_blocks():
    text = model_info("swin_tiny_patch4_window7_224")
    blocks = adapter_for(load_model("swin_tiny_patch4_window7_224", pretrained=False)).attention_blocks()
    heads = [b.num_heads for b in blocks]
    assert heads == [3] * 2 + [6] * 2 + [12] * 6 + [24] * 2
    listed = _heads_line(text)
    assert listed == "3 (blocks 1-2), 6 (blocks 3-4), 12 (blocks 5-10), 24 (blocks 11-12)"


def test_one_head_count_is_listed_once():
    assert _heads_line(model_info("vitlens/vit-tiny-shapes")) == "4"
