"""The public API speaks one vocabulary: exports, argument names, plots, read-only results."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest
import torch
from conftest import batch, build

import vitlens


def _modules():
    for info in pkgutil.walk_packages(vitlens.__path__, "vitlens."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_top_level_exports_exactly_the_public_names():
    assert "__version__" in vitlens.__all__
    for name in vitlens.__all__:
        assert hasattr(vitlens, name), name
        assert not name.startswith("_") or name == "__version__"
    public = {n for n, v in vars(vitlens).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public <= set(vitlens.__all__), public - set(vitlens.__all__)


def test_every_module_lists_only_its_own_public_names():
    for module in _modules():
        names = getattr(module, "__all__", None)
        if names is None or module.__file__.endswith("__init__.py"):
            continue  # packages re-export their modules' names
        for n in names:
            assert not n.startswith("_"), f"{module.__name__}.{n}"
            v = getattr(module, n)
            home = getattr(v, "__module__", module.__name__)
            if inspect.isclass(v) or inspect.isfunction(v):
                assert home == module.__name__, f"{module.__name__} lists {n} from {home}"


def test_plots_take_ax_and_figures_return_figures():
    for module in _modules():
        for n, f in vars(module).items():
            if not inspect.isfunction(f) or f.__module__ != module.__name__ or n.startswith("_"):
                continue
            if n.startswith("plot_"):
                p = inspect.signature(f).parameters
                assert "ax" in p and p["ax"].default is None, f"{module.__name__}.{n}"


ANALYSES = ["attention_distance", "attention_rollout", "effective_receptive_field", "layer_cka", "token_norms",
            "linear_probes"]


@pytest.mark.parametrize("name", ANALYSES)
def test_image_analyses_share_their_argument_names(name):
    p = inspect.signature(getattr(vitlens, name)).parameters
    for arg in ("batch_size", "workers", "progress", "precision"):
        assert arg in p, f"{name} lacks {arg}"
    for old in ("num_workers", "model_name", "show_progress"):
        assert old not in p


def test_result_arrays_are_read_only():
    model = build("vit")
    x = batch("vit", n=2)
    results = [vitlens.attention_distance(model, x), vitlens.attention_rollout(model, x),
               vitlens.effective_receptive_field(model, x), vitlens.position_embedding_similarity(model)]
    for r in results:
        arrays = [v for v in vars(r).values() if isinstance(v, np.ndarray)]
        assert arrays, type(r).__name__
        for a in arrays:
            assert not a.flags.writeable, type(r).__name__
            with pytest.raises(ValueError):
                a.flat[0] = 0


def test_declared_dependencies_are_imported():
    from pathlib import Path

    import tomllib

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    module_of = {"scikit-learn": "sklearn", "pillow": "PIL"}
    source = "\n".join(p.read_text() for p in Path(vitlens.__file__).parent.rglob("*.py"))
    for d in deps:
        name = d.split(">")[0].split("=")[0].split("<")[0].strip().lower()
        mod = module_of.get(name, name)
        assert f"import {mod}" in source or f"from {mod}" in source, name
