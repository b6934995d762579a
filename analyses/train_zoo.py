"""Train the small models shipped in vitlens/zoo on the generated shapes data set, on CPU.

Three models, all timm architectures so that every analysis loads them like a hub model:

- ``vit-tiny-shapes``: a ViT with an 8 x 8 grid of 8 px patches and a class token;
- ``resnet-tiny-shapes``: a narrow ResNet-10-T (0.70 M weights; the ViT has 0.32 M);
- ``vit-tiny-shapes-10pct``: the same ViT trained on a tenth of the images, for the same number of
  optimiser steps (so it sees each image ten times as often). Raghu et al. (2021) found that ViTs
  pre-trained on less data do not learn local heads in their lower layers; this model lets one
  check that on a small scale.

Each run generates its training images from a fixed seed (``vitlens.data.shapes``), trains with
AdamW and a cosine schedule, measures accuracy on a held-out split that never overlaps the
training images, and writes ``<out>/<name>.safetensors``, ``<name>.json`` (read by
``vitlens.zoo_models``) and ``<name>.md`` (the model card). Every number in the JSON and the card
comes from this run.

    python analyses/train_zoo.py --model all     # the shipped models, about 70 min on 2 cores
    python analyses/train_zoo.py --model cnn     # one of them; the exact command is in its card

On two idle cores the ViT takes about 31 minutes, the CNN 7 and the 10pct ViT 34.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vitlens.data import shapes
from vitlens.data.shapes import CLASSES, data_config, generate, normalize

IMAGE_SIZE = 64
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Spec:
    """One zoo model: its timm architecture and how it is trained."""

    name: str
    architecture: str
    model_kwargs: dict
    description: str
    lr: float
    weight_decay: float
    epochs: int  # over the full training set, unless --epochs is given
    fraction: float = 1.0  # share of the training images used
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0
    notes: list[str] = field(default_factory=list)


VIT_KWARGS = dict(img_size=IMAGE_SIZE, patch_size=8, embed_dim=64, depth=6, num_heads=4)
SPECS = {
    "vit": Spec(
        name="vit-tiny-shapes", architecture="vit_tiny_patch16_224", model_kwargs=VIT_KWARGS,
        description="ViT, 8x8 grid of 8 px patches, class token, 6 blocks x 4 heads, on shapes",
        lr=1e-3, weight_decay=0.05, epochs=20),
    "cnn": Spec(
        name="resnet-tiny-shapes", architecture="resnet10t",
        model_kwargs=dict(channels=[24, 48, 96, 192], stem_width=16),
        description="ResNet-10-T, channels 24-192, on shapes",
        lr=2e-3, weight_decay=0.05, epochs=8),
    "vit-10pct": Spec(
        name="vit-tiny-shapes-10pct", architecture="vit_tiny_patch16_224", model_kwargs=VIT_KWARGS,
        description="the same ViT trained on a tenth of the images (same number of steps)",
        lr=1e-3, weight_decay=0.05, epochs=20, fraction=0.1,
        notes=["Trained on a tenth of the training images for ten times as many epochs, so it takes "
               "the same number of optimiser steps as vit-tiny-shapes: the two differ only in how many "
               "distinct images they saw. It is meant for comparing attention locality with "
               "vit-tiny-shapes (Raghu et al. 2021, section 5) and is not expected to reach the same "
               "accuracy."]),
}


def zoo_kwargs(spec: Spec) -> dict:
    """The ``timm.create_model`` kwargs stored in the zoo JSON (JSON types only).

    ``pretrained_cfg_overlay`` makes ``timm.data.resolve_data_config`` return the preprocessing used
    in training: 64 px input, the shapes mean and std, and ``crop_pct=1.0`` so that an image of
    native size is neither resized nor cropped.
    """
    cfg = data_config(IMAGE_SIZE)
    overlay = {
        "input_size": list(cfg["input_size"]), "test_input_size": list(cfg["input_size"]),
        "interpolation": cfg["interpolation"],
        "mean": list(cfg["mean"]), "std": list(cfg["std"]),
        "crop_pct": cfg["crop_pct"], "test_crop_pct": cfg["crop_pct"], "crop_mode": cfg["crop_mode"],
        "num_classes": len(CLASSES), "label_names": list(CLASSES),
    }
    return {**spec.model_kwargs, "num_classes": len(CLASSES), "pretrained_cfg_overlay": overlay}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and quarter turns, per image (every class is invariant to both)."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    turns = torch.randint(0, 4, (x.shape[0],), generator=g)
    out = x.clone()
    for k in (1, 2, 3):
        idx = (turns == k).nonzero().flatten()
        if len(idx):
            out[idx] = torch.rot90(x[idx], k, dims=(2, 3))
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 250,
             ) -> tuple[float, np.ndarray]:
    """Accuracy and confusion matrix [true, predicted] on uint8 images."""
    model.eval()
    preds = []
    for i in range(0, len(images), batch_size):
        preds.append(model(normalize(images[i:i + batch_size])).argmax(-1).numpy())
    pred = np.concatenate(preds)
    conf = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    np.add.at(conf, (labels, pred), 1)
    return float((pred == labels).mean()), conf


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def train(spec: Spec, args: argparse.Namespace, train_images: np.ndarray, train_labels: np.ndarray,
          test_images: np.ndarray, test_labels: np.ndarray, log) -> dict:
    seed_everything(args.seed)
    n_train = max(len(CLASSES), int(round(len(train_images) * spec.fraction)))
    images, labels = train_images[:n_train], torch.from_numpy(train_labels[:n_train])
    # equal number of optimiser steps whatever the fraction: smaller sets are seen more often
    epochs = int(round(args.epochs / spec.fraction))
    steps_per_epoch = n_train // args.batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the {n_train} training images")
    total = epochs * steps_per_epoch
    warmup = max(1, int(spec.warmup_epochs * (len(train_images) // args.batch_size)))

    model = timm.create_model(spec.architecture, pretrained=False, **zoo_kwargs(spec))
    n_params = sum(p.numel() for p in model.parameters())
    def decays(n: str, p: torch.Tensor) -> bool:  # weight matrices only: no biases, norms, tokens, positions
        return p.ndim > 1 and "pos_embed" not in n and "token" not in n

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(args.seed)
    log(f"== {spec.name}: {spec.architecture} {spec.model_kwargs}, {n_params / 1e6:.3f} M weights, "
        f"{n_train} training images, {epochs} epochs x {steps_per_epoch} steps of {args.batch_size}")

    t0, c0 = time.time(), time.process_time()
    step = 0
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=g)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x = augment(normalize(images[idx.numpy()]), g)
            y = labels[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, spec.lr)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_grad)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(idx)
        last = epoch == epochs - 1
        if last or (epoch + 1) % max(1, epochs // args.evals) == 0:
            acc, _ = evaluate(model, test_images, test_labels)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                            "held_out_accuracy": acc, "minutes": (time.time() - t0) / 60})
            log(f"  epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}  "
                f"held-out acc {acc:.4f}  {(time.time() - t0) / 60:.1f} min")
    train_minutes = (time.time() - t0) / 60
    cpu_minutes = (time.process_time() - c0) / 60
    acc, conf = evaluate(model, test_images, test_labels)
    return {"model": model, "accuracy": acc, "confusion": conf, "n_train": n_train, "epochs": epochs,
            "steps": total, "warmup_steps": warmup, "n_params": n_params, "train_minutes": train_minutes,
            "cpu_minutes": cpu_minutes,
            "history": history}


def write_outputs(spec: Spec, result: dict, args: argparse.Namespace, command: str, data_minutes: float,
                  log) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = result["model"]
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{spec.name}.safetensors"), metadata={"format": "pt", "name": spec.name})
    (out / f"{spec.name}.safetensors").chmod(0o644)  # package data: readable by everyone
    acc = round(result["accuracy"], 4)
    entry = {"name": f"vitlens/{spec.name}", "architecture": spec.architecture, "kwargs": zoo_kwargs(spec),
             "weights": f"{spec.name}.safetensors", "accuracy": acc, "card": f"{spec.name}.md",
             "description": spec.description}
    (out / f"{spec.name}.json").write_text(json.dumps(entry, indent=2) + "\n")
    (out / f"{spec.name}.md").write_text(model_card(spec, result, args, command, data_minutes))
    size = (out / f"{spec.name}.safetensors").stat().st_size
    log(f"  wrote {out / spec.name}.{{safetensors,json,md}} ({size / 1e6:.2f} MB); held-out accuracy {acc:.4f}")


def model_card(spec: Spec, r: dict, args: argparse.Namespace, command: str, data_minutes: float) -> str:
    cfg = data_config(IMAGE_SIZE)
    per_class = r["confusion"].diagonal() / r["confusion"].sum(1).clip(min=1)
    conf_rows = "\n".join(f"| {c} | " + " | ".join(str(int(v)) for v in row) + " |"
                          for c, row in zip(CLASSES, r["confusion"]))
    hist = "\n".join(f"| {h['epoch']} | {h['train_loss']:.4f} | {100 * h['train_accuracy']:.1f}% | "
                     f"{100 * h['held_out_accuracy']:.1f}% | {h['minutes']:.1f} |" for h in r["history"])
    kwargs = json.dumps(spec.model_kwargs)
    lines = [
        f"# vitlens/{spec.name}",
        "",
        f"{spec.description}. Trained from scratch on CPU by `analyses/train_zoo.py`; "
        f"load it with `vitlens.load_model(\"vitlens/{spec.name}\")` or `--model vitlens/{spec.name}`.",
        "",
        f"**Held-out accuracy: {100 * r['accuracy']:.2f}%** on {args.eval_size} images of the `test` split "
        f"(seed {args.seed}), which never overlaps the training images.",
        "",
        *[f"{n}\n" for n in spec.notes],
        "## Architecture",
        "",
        f"- timm `{spec.architecture}` with `{kwargs}` and {len(CLASSES)} classes; "
        f"{r['n_params']:,} weights, stored as float32 safetensors.",
        f"- Input: {IMAGE_SIZE} x {IMAGE_SIZE} RGB.",
        "",
        "## Data",
        "",
        "- `vitlens.data.shapes` (generated on the fly from a seed; no files): one object of class "
        + ", ".join(CLASSES) + f" at a random position, scale ({shapes.OBJECT_SCALE[0]:g} to "
        f"{shapes.OBJECT_SCALE[1]:g} px), rotation (up to {shapes.ROTATION:g} degrees either way) and light "
        f"colour (each channel at least {shapes.OBJECT_LEVEL:g}), over dark textured backgrounds (smooth "
        f"colour noise, stripes, checks; at most {shapes.BACKGROUND_LEVEL:g}) with {shapes.DISTRACTORS[0]} to "
        f"{shapes.DISTRACTORS[1]} distractors of any colour (segments, thin arcs, elongated blobs) and "
        "sensor noise. Classes are balanced.",
        f"- Training: images 0 to {r['n_train'] - 1} of the `train` split, seed {args.seed}"
        + (f" (a tenth of the {args.train_size} images the full model used)" if spec.fraction < 1 else "") + ".",
        f"- Held out: images 0 to {args.eval_size - 1} of the `test` split, seed {args.seed}.",
        f"- Preprocessing (the model's `pretrained_cfg`, so `timm.data.resolve_data_config` returns it): "
        f"input size {cfg['input_size']}, mean {cfg['mean']}, std {cfg['std']}, "
        f"interpolation {cfg['interpolation']}, crop_pct {cfg['crop_pct']} (a {IMAGE_SIZE} px image passes "
        "unchanged). Pixels are scaled to [0, 1] and normalised; training used exactly this.",
        "",
        "## Training",
        "",
        f"- {r['epochs']} epochs of {r['n_train']} images, batch {args.batch_size}: {r['steps']} steps.",
        f"- AdamW (betas 0.9, 0.99), peak learning rate {spec.lr}, weight decay {spec.weight_decay} "
        "(not on biases, norms, position embedding or class token), linear warm-up over "
        f"{r['warmup_steps']} steps then cosine decay to zero; label smoothing {spec.label_smoothing}; "
        f"gradient norm clipped at {spec.clip_grad}.",
        "- Augmentation: random horizontal flips and quarter turns (every class is invariant to both).",
        f"- Seed {args.seed}; torch {torch.__version__}, timm {timm.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}; {args.threads} CPU threads "
        f"({platform.processor() or platform.machine()}).",
        f"- Time: {r['train_minutes']:.1f} min of wall time for training ({r['cpu_minutes']:.1f} min of CPU time "
        f"over {args.threads} threads, i.e. about {r['cpu_minutes'] / args.threads:.1f} min on {args.threads} "
        f"otherwise idle cores), plus {data_minutes:.1f} min generating the images (shared by the models of one run).",
        "",
        "| epoch | train loss | train accuracy | held-out accuracy | minutes |",
        "|---|---|---|---|---|",
        hist,
        "",
        "## Held-out results",
        "",
        "Per class: " + ", ".join(f"{c} {100 * a:.1f}%" for c, a in zip(CLASSES, per_class)) + ".",
        "",
        "Confusion matrix (rows: true class, columns: predicted, in the same order):",
        "",
        "| true \\ predicted | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
        conf_rows,
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        "Float arithmetic on another CPU or library version can change the last digits of the result.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=[*SPECS, "all"], default="all", help="which model to train")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs over the full training set (default per model: vit 20, cnn 8, vit-10pct 20; "
                        "the 10pct model runs ten times as many over its tenth)")
    p.add_argument("--train-size", type=int, default=40000, help="training images (the full set)")
    p.add_argument("--eval-size", type=int, default=2000, help="held-out images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--evals", type=int, default=8, help="held-out evaluations during training")
    p.add_argument("--out", default=str(REPO / "vitlens" / "zoo"), help="output folder")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    names = list(SPECS) if args.model == "all" else [args.model]

    def command(key: str, epochs: int) -> str:
        return "python analyses/train_zoo.py " + " ".join(shlex.quote(a) for a in [
            "--model", key, "--epochs", str(epochs), "--train-size", str(args.train_size),
            "--eval-size", str(args.eval_size), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
            "--threads", str(args.threads)])

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.time()
    train_images, _, train_labels = generate(args.train_size, seed=args.seed, split="train", image_size=IMAGE_SIZE)
    test_images, _, test_labels = generate(args.eval_size, seed=args.seed, split="test", image_size=IMAGE_SIZE)
    data_minutes = (time.time() - t0) / 60
    log(f"generated {args.train_size} training and {args.eval_size} held-out images in {60 * data_minutes:.0f} s")

    for key in names:
        spec = SPECS[key]
        run = argparse.Namespace(**{**vars(args), "epochs": args.epochs or spec.epochs})
        result = train(spec, run, train_images, train_labels, test_images, test_labels, log)
        write_outputs(spec, result, run, command(key, run.epochs), data_minutes, log)
    log(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
