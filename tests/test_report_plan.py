"""What ``vitlens report`` runs: the sections chosen, and a cost section sized to the models, the
images and the machine (asserted on the plan the report makes, not on time)."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from vitlens.cli import main
from vitlens.report.build import SECTIONS, report_plan
from vitlens.report.cost_plan import plan_cost


@pytest.fixture(scope="module")
def real_size():
    """DeiT-S and ResNet-18 at 224 px with random weights (no download)."""
    torch.manual_seed(0)
    return (timm.create_model("deit_small_patch16_224", pretrained=False).eval(),
            timm.create_model("resnet18", pretrained=False).eval())


def test_cost_plan_for_224px_models_on_a_cpu_stays_bounded(real_size):
    vit, cnn = real_size
    plan = report_plan([vit], [cnn], n_images=8, batch_size=32, device="cpu")["cost"]
    assert plan.sizes[0] == 224 and max(plan.sizes) <= 448  # never 896 px on a CPU
    assert 1 <= plan.batch_size <= 8  # never more than the report's images
    assert 1 <= plan.repeats <= 3 and plan.estimated_seconds <= plan.budget_seconds
    # the price grows with what is measured: a larger batch or more sizes would not fit
    assert plan_cost([vit, cnn], ["vit", "cnn"], ["v", "c"], 224, n_images=8, batch_size=32,
                     sizes=[224, 448, 896]).batch_size <= plan.batch_size


def test_cost_plan_keeps_what_the_user_chose(real_size):
    vit, cnn = real_size
    plan = plan_cost([vit], ["vit"], ["v"], 224, n_images=200, batch_size=32, sizes=[320, 224], repeats=5)
    assert plan.sizes == (224, 320) and plan.repeats == 5 and plan.chosen == ("sizes", "repeats")
    assert plan.budget_seconds >= 0 and plan.batch_size >= 1


def test_plan_of_chosen_sections_counts_only_their_steps(real_size):
    vit, cnn = real_size
    p = report_plan([vit], [cnn], n_images=8, sections="posembed")
    assert p["sections"] == ("posembed",) and p["cost"] is None
    assert p["steps"] == {"images": 1, "distance": 0, "posembed": 1, "rollout": 0, "locality": 0, "cka": 0,
                          "skip": 0, "localization": 0, "probes": 0, "cost": 0, "page": 1}
    assert report_plan([vit], [cnn], n_images=8, sections=["locality"])["steps"]["distance"] == 1


def test_report_runs_only_the_sections_chosen(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["report", "--out", str(out), "--num-images", "4", "--batch-size", "4", "--sections", "posembed",
               "--random-init", "--seed", "3"])
    assert rc == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["sections_run"] == ["posembed"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["position_embeddings.png"]
    assert not (out / "data" / "cost.csv").exists() and "cost_plan" not in rec
    assert all(m["initialisation"] for m in rec["models"])  # --random-init reached the models
    page = (out / "index.html").read_text()
    for name in SECTIONS:
        if name != "posembed":
            assert f"add {name} to run it" in page, name


def test_unknown_section_is_refused(tmp_path, capsys):
    rc = main(["report", "--out", str(tmp_path / "r"), "--sections", "distance,costs"])
    err = capsys.readouterr().err
    assert rc == 2 and "costs is not a report section" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "index.html").exists()
