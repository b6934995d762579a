"""The report's readings of skip ratios, localisation and probes follow their numbers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from vitlens.report.representations import cls_vs_patch, halves, localization_section, probe_section, skip_section


def _skip(model, kind, ratio, token_kinds=("prefix", "patch"), prefix_kinds=("cls",)):
    ratio = np.asarray(ratio, dtype=float)
    subl = ("attention", "mlp") if kind == "vit" else ("residual",)
    return SimpleNamespace(model=model, kind=kind, blocks=tuple(f"b{i}" for i in range(ratio.shape[0])),
                           sublayers=subl, token_kinds=token_kinds, prefix_kinds=prefix_kinds, ratio=ratio,
                           n_images=10)


def test_halves_leave_the_middle_block_out():
    assert halves(4) == (slice(0, 2), slice(2, 4))
    assert halves(5) == (slice(0, 2), slice(3, 5))


def test_skip_reading_says_the_paper_reversal_only_when_the_numbers_show_it():
    # class token above patch tokens in the first half, below in the second: the paper's pattern
    r = np.zeros((4, 2, 2))
    r[:2, :, 0], r[:2, :, 1], r[2:, :, 0], r[2:, :, 1] = 8, 2, 3, 9
    vit, cnn = _skip("vit", "vit", r), _skip("cnn", "cnn", np.full((3, 1, 1), 1.5), ("position",), ())
    assert cls_vs_patch(vit) == (8, 2, 3, 9)
    text = skip_section([vit, cnn]).reading[1]
    assert "the reversal the paper found" in text and "as Raghu et al. found" in text
    r2 = r.copy()
    r2[2:, :, 0] = 20  # no reversal
    text = skip_section([_skip("vit", "vit", r2), _skip("cnn", "cnn", np.full((3, 1, 1), 50.0), ("position",), ())]
                        ).reading[1]
    assert "does not appear" in text and "unlike Raghu et al." in text


def test_skip_reading_without_a_class_token_says_so():
    vit = _skip("gap", "vit", np.ones((2, 2, 1)), ("patch",), ())
    assert cls_vs_patch(vit) is None
    assert "no class token" in skip_section([vit]).reading[1]


def _loc(model, kind, own, other, grid=(4, 4)):
    return SimpleNamespace(model=model, kind=kind, layer="last", grid=grid, own_patch_share=0.5, cka_own=own,
                           cka_other=other, n_images=8, n_images_dropped=0, n_batches=2, batch_size=4)


def test_localization_reading_compares_own_patch_contrast():
    text = localization_section([_loc("v", "vit", 0.6, 0.1), _loc("c", "cnn", 0.3, 0.2)]).reading[1]
    assert "as the paper found" in text and "+0.50" in text and "+0.10" in text
    text = localization_section([_loc("v", "vit", 0.2, 0.15), _loc("c", "cnn", 0.3, 0.1, grid=(2, 2))]).reading[1]
    assert "does not appear" in text and "only 2 x 2" in text


def test_probe_reading_states_first_last_and_the_class_token_contrast():
    acc = np.array([[0.2, 0.1], [0.9, 0.5]])
    r = SimpleNamespace(model="v", kind="vit", representations=("cls", "gap"), accuracy=acc,
                        accuracy_std=np.full_like(acc, 0.01), depth_fraction=np.array([0.0, 1.0]), n_classes=4,
                        shots=5, repeats=3)
    text = probe_section([r]).reading[1]
    assert "cls 20% in the first layer and 90% in the last" in text and "chance 25.0%" in text
    assert "as Raghu et al. found" in text
    r.accuracy = np.array([[0.2, 0.1], [0.4, 0.5]])
    assert "does not appear" in probe_section([r]).reading[1]
    empty = probe_section([], skipped="no labels in photos/")
    assert empty.figures == [] and "no labels in photos/" in " ".join(empty.reading)
