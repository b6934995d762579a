"""Regenerate ``figures/`` (the figures the README shows) from the shipped models, offline.

Runs the same code as ``vitlens report`` (the shipped ViTs and CNN over generated held-out shapes
images) in a temporary folder and keeps its figures and key numbers:

    python analyses/make_figures.py                  # 200 images, about a minute on 2 cores
    python analyses/make_figures.py --num-images 500 --out figures

Writes ``<out>/*.png`` and ``<out>/summary.json`` (the numbers quoted in the README, with the
command and versions that produced them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from vitlens.report import run_report
from vitlens.runtime.io import versions, write_json

FIGURES = ["attention_distance.png", "position_embeddings.png", "rollout.png", "rollout_mask_share.png",
           "locality.png", "receptive_field.png", "less_data.png", "cka.png", "skip.png", "localization.png",
           "probes.png", "cost.png"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "figures"), help="folder to write")
    p.add_argument("--num-images", type=int, default=200, help="generated held-out images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_report(Path(tmp) / "report", num_images=args.num_images, seed=args.seed, batch_size=args.batch_size,
                   command=f"python analyses/make_figures.py --num-images {args.num_images} --seed {args.seed}")
        rep = Path(tmp) / "report"
        for name in FIGURES:
            shutil.copyfile(rep / "figures" / name, out / name)
        record = json.loads((rep / "run.json").read_text())
        scores = pd.read_csv(rep / "data" / "rollout_scores.csv")
        dist = pd.read_csv(rep / "data" / "attention_distance.csv")
        local = {}
        for m, g in dist.groupby("model", sort=False):
            u = record["summary"][m]["uniform_attention_px"]
            L = int(g.layer.max()) + 1
            low = g[g.layer < max(1, L // 2)]
            local[m] = {"local_fraction": record["local_fraction"], "lower_layers": max(1, L // 2),
                        "local_heads_lower_layers": int((low.distance_px < record["local_fraction"] * u).sum()),
                        "min_head_px": float(g.distance_px.min()), "uniform_px": u}
        rollout = {m: {"mask_share": float(g.mask_share.mean()), "mask_area": float(g.mask_area.mean()),
                       "pointing_hit": float(g.pointing_hit.mean()), "correct": float(g.correct.mean())}
                   for m, g in scores.groupby("model", sort=False)}
        keys = ("distance_correlation_all", "distance_correlation_interior", "border_contrast", "row_column_score")
        posembed = {e["model"]: {k: e[k] for k in keys}
                    for e in json.loads((rep / "data" / "position_embeddings.json").read_text())}
        cka = _cka_numbers(pd.read_csv(rep / "data" / "cka.csv"))
        cost = json.loads((rep / "data" / "cost.json").read_text())["reading"]
        representations = _representation_numbers(rep / "data")
    write_json(out / "summary.json", {
        "command": " ".join(["python", "analyses/make_figures.py", *(argv if argv is not None else sys.argv[1:])]),
        "images": record["images"], "locality": record["summary"], "rollout": rollout, "local_heads": local,
        "position_embeddings": posembed, "cka": cka, "cost_reading": cost, **representations,
        "models": [{k: m.get(k) for k in ("name", "weights", "held_out_accuracy")} for m in record["models"]],
        "versions": versions()})
    print(f"wrote {len(FIGURES)} figures and summary.json to {out}")
    return 0


def _representation_numbers(data: Path) -> dict:
    """The skip-ratio, localisation and probe numbers the README quotes, per model."""
    skip = pd.read_csv(data / "skip_ratio.csv")
    out: dict = {"skip": {}, "localization": {}, "probes": {}}
    for m, g in skip.groupby("model", sort=False):
        n = int(g.block.max()) + 1
        first, second = g[g.block < n // 2], g[g.block >= n - n // 2]
        entry = {"mean": float(g.ratio.mean()),
                 "by_sublayer": {k: float(v.ratio.mean()) for k, v in g.groupby("sublayer", sort=False)}}
        if (g.token_kind == "prefix").any():
            entry.update({f"{kind}_{half}": float(h[h.token_kind == kind].ratio.mean())
                          for half, h in (("first", first), ("second", second)) for kind in ("prefix", "patch")})
        out["skip"][m] = entry
    loc = pd.read_csv(data / "localization.csv")
    for _, r in loc.iterrows():
        out["localization"][r.model] = {k: (float(r[k]) if k != "layer" else r[k])
                                        for k in ("layer", "own_patch_share", "cka_own", "cka_other")}
    probes = pd.read_csv(data / "probe.csv")
    for (m, rep), g in probes.groupby(["model", "representation"], sort=False):
        g = g.sort_values("depth_fraction")
        out["probes"].setdefault(m, {})[rep] = {"first": float(g.accuracy.iloc[0]), "last": float(g.accuracy.iloc[-1])}
    return out


def _cka_numbers(frame: pd.DataFrame) -> dict:
    """The CKA numbers the README quotes: neighbouring-block and end-to-end similarity of the ViT
    with itself, and the highest CKA between the ViT and the CNN."""
    out = {}
    for (a, b), g in frame.groupby(["model_a", "model_b"], sort=False):
        m = g.pivot(index="layer_a", columns="layer_b", values="cka").loc[list(dict.fromkeys(g.layer_a)),
                                                                           list(dict.fromkeys(g.layer_b))]
        c = m.to_numpy()
        if a == b:
            out["self"] = {"model": a, "adjacent_mean": float(sum(c[i, i + 1] for i in range(len(c) - 1)) /
                                                              max(len(c) - 1, 1)), "first_last": float(c[0, -1])}
        else:
            i, j = divmod(int(c.argmax()), c.shape[1])
            out["cross"] = {"model_a": a, "model_b": b, "max": float(c[i, j]), "layer_a": m.index[i],
                            "layer_b": m.columns[j]}
    return out


if __name__ == "__main__":
    sys.exit(main())
