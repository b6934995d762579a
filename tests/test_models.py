"""load_model: hub names, local checkpoints (safe only), wrappers, clear errors, offline behaviour."""

from __future__ import annotations

import pickle
import time

import pytest
import torch
from safetensors.torch import save_file

import vitlens
from vitlens.models.checkpoints import read_state_dict

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _reference():
    return vitlens.load_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, **TINY)


def _same_outputs(a, b):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_random_init_records_its_source():
    m = vitlens.load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False, **TINY)
    assert not m.training
    assert m.vitlens_source["weights"] == "random"
    assert m.vitlens_source["tag"] == "augreg_in21k_ft_in1k"


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "wrapped_state_dict", "wrapped_model", "module_prefix"])
def test_checkpoint_round_trip(tmp_path, fmt):
    ref = _reference()
    sd = ref.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        obj = {"pth": sd, "wrapped_state_dict": {"state_dict": sd, "epoch": 3},
               "wrapped_model": {"model": sd, "optimizer": {}},
               "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[fmt]
        path = tmp_path / "w.pth"
        torch.save(obj, path)
    # num_classes is inferred from the checkpoint's classifier
    loaded = vitlens.load_model("vit_tiny_patch16_224", checkpoint=path, **TINY)
    assert loaded.vitlens_source["weights"] == f"checkpoint:{path}"
    _same_outputs(ref, loaded)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_code_running_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": _Evil()}}, f)
    with pytest.raises(vitlens.ModelLoadError, match="refused"):
        vitlens.load_model("vit_tiny_patch16_224", checkpoint=path, **TINY)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_checkpoint_of_another_architecture_names_keys(tmp_path):
    import timm
    cnn = timm.create_model("resnet18", num_classes=7)
    path = tmp_path / "cnn.safetensors"
    save_file(cnn.state_dict(), str(path))
    with pytest.raises(vitlens.ModelLoadError, match=r"missing \(first: .*unexpected \(first: "):
        vitlens.load_model("vit_tiny_patch16_224", checkpoint=path, **TINY)


def test_wrong_shapes_are_named(tmp_path):
    ref = _reference()
    path = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(path))
    with pytest.raises(vitlens.ModelLoadError,
                       match=r"fc1.weight is \(128, 32\) in the checkpoint but \(64, 32\) in the model"):
        vitlens.load_model("vit_tiny_patch16_224", checkpoint=path, mlp_ratio=2.0, **TINY)


def test_checkpoint_at_another_resolution_is_resampled_like_timm(tmp_path):
    ref = _reference()
    path = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(path))
    m = vitlens.load_model("vit_tiny_patch16_224", checkpoint=path, img_size=64, patch_size=8,
                           embed_dim=32, depth=2, num_heads=2)
    assert m.pos_embed.shape == (1, 65, 32)


def test_truncated_and_missing_checkpoints(tmp_path):
    ref = _reference()
    good = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(good))
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(vitlens.ModelLoadError, match="truncated"):
        read_state_dict(bad)
    cut_pth = tmp_path / "cut.pth"
    torch.save(ref.state_dict(), cut_pth)
    cut_pth.write_bytes(cut_pth.read_bytes()[:500])
    with pytest.raises(vitlens.ModelLoadError, match="could not be read"):
        read_state_dict(cut_pth)
    with pytest.raises(vitlens.ModelLoadError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


def test_unknown_name_lists_close_names():
    with pytest.raises(vitlens.ModelLoadError, match="vit_tiny_patch16_224"):
        vitlens.load_model("vit_tiny_patch16_22", pretrained=False)


def test_offline_error_is_fast_and_says_what_to_do(tmp_path, monkeypatch):
    # The hub endpoint points at a closed local port and the cache is empty: no network is used.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(vitlens.ModelLoadError) as err:
        vitlens.load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert time.perf_counter() - start < 15
    msg = str(err.value)
    assert "vit_tiny_patch16_224.augreg_in21k_ft_in1k" in msg
    assert "could not be downloaded" in msg and "checkpoint" in msg


def test_hub_probe_reports_unreachable(monkeypatch):
    from vitlens.models.loading import hub_reachable
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub_reachable(timeout=1.0) is False


def test_hub_repository_names_refuse_random_or_local_weights(tmp_path):
    for kwargs in (dict(pretrained=False), dict(checkpoint=tmp_path / "w.safetensors")):
        with pytest.raises(vitlens.ModelLoadError, match="names a repository of weights"):
            vitlens.load_model("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", **kwargs)


def _cache_with(tmp_path, hub_id: str, model) -> None:
    """A Hugging Face hub cache folder holding ``model``'s weights under ``hub_id``, as a download leaves it."""
    from safetensors.torch import save_file

    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))


def test_cached_pretrained_weights_load_with_the_hub_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as c
    import timm

    torch.manual_seed(3)
    weights = timm.create_model("test_vit", pretrained=False)
    _cache_with(tmp_path, "timm/test_vit.r160_in1k", weights)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = vitlens.load_model("test_vit.r160_in1k")
    assert model.vitlens_source["weights"] == "hub:timm/test_vit.r160_in1k"
    for k, v in weights.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(vitlens.ModelLoadError, match="no copy is in the local hub cache") as info:
        vitlens.load_model("vit_tiny_patch16_224.augreg_in21k")  # not in this cache
    assert str(tmp_path) in str(info.value) and "--checkpoint" in str(info.value)
