"""Benchmark: vitlens's analyses against the usual way of doing the same computation.

Every comparison is measured side by side in one run on one machine, and each pair of sides is
checked to compute the same numbers (the run stops with an AssertionError if they do not), so a
ratio never compares two different computations. Times are the best of several interleaved
rounds, because a shared machine adds delays that only ever lengthen a run.

Comparisons (default sizes; ``--quick`` uses smaller ones):

1. Mean attention distance of 512 images: vitlens (streaming :func:`vitlens.attention_distance`)
   against timm's ``AttentionExtract`` keeping every layer's maps of every image, then a NumPy mean
   distance over the stored maps (the way the probing-vits notebooks compute it: prefix tokens
   dropped, rows not renormalised, so vitlens runs with ``prefix_tokens="discard"`` here). Wall
   time of the analysis and peak resident memory, each side in a fresh child process; the peak of a
   child that only loads the model and the images is subtracted, so the memory ratio is that of
   the analyses. A child running the plain forward pass gives the memory of the forward pass alone.
2. Attention rollout of 64 images: vitlens's batched rollout against a per-image loop in the style
   of vit-explain (forward hooks on ``attn_drop``, one image per forward pass, one matrix product
   per layer with torch CPU tensors as vit-explain does; the same loop with NumPy products is
   reported too).
3. Effective receptive field of 32 images: vitlens's batched :func:`effective_receptive_field`
   against a one-image-at-a-time loop (one forward per image, one backward per image and layer).
   The plain forward pass at batch 32 against batch 1 shows how much batching alone can gain on the
   machine, the ceiling for 2 and 3.
4. Cost of each vitlens analysis as throughput relative to a plain forward pass of the same model
   (timm's fused attention, no hooks) at the same batch size, in one process; and the
   ``vitlens distance`` command as a whole process against a process that loads the same model and
   runs the plain forward pass over the same image folder with the same ImageSet loading.
5. Flat memory: peak resident memory of the ``vitlens distance`` process at 2000 images against
   100 images, same batch size.
6. Rollout and ERF again on a small model (``--small-model``, the shipped 64 px ViT by default),
   where a forward pass of one image is too small to keep the cores busy.
7. CKA between the small ViT and the shipped ResNet: time against the two plain forward passes
   over the same images, and peak resident memory of the ``vitlens cka`` process at 2000 images
   against 100 (the Gram matrices are formed per minibatch and dropped).
8. Windowed attention on Swin-T at 224 px: ``attention_distance`` throughput against the plain forward
   pass with fused attention (window maps are reduced where they are captured).
9. High resolution: ``vitlens distance``'s analysis on DINOv2-B/14 (``vit_base_patch14_dinov2``) at
   224 and 518 px and SAM-B (``samvit_base_patch16``) at 1024 px, random weights, random images.
   Four child processes per configuration beside a load-only one: the plain fused forward pass, the
   chunked path (each block's rows formed from its own q and k within ``--attention-memory`` MB),
   today's full-map path (every block's ``[batch, head, N, N]`` map), and storing every layer's maps
   of every image (skipped, and said so, where they would exceed ``--max-store-gib``). Peak RSS
   above the load-only process (on CUDA: peak allocated above the loaded model and images) and
   throughput, side by side; chunked and full-map results must agree.
   ``--resolution-only`` runs only these rows; ``--skip-resolution`` leaves them out.

Peak memory is the child's ``VmHWM`` from ``/proc/self/status``. ``getrusage().ru_maxrss`` is not
used: on Linux a child started with fork/vfork + exec inherits the parent's high-water mark in
``ru_maxrss``, so it reports at least the parent's peak.

Models are randomly initialised (seeded, identical in every process; no download). Images are the
generated shapes data set (:mod:`vitlens.data.shapes`) written to a temporary folder.

    python analyses/benchmark.py                  # about 8 minutes on 2 CPU cores
    python analyses/benchmark.py --quick          # about 1.5 minutes
    python analyses/benchmark.py --device cuda --out results/   # also writes benchmark.json and .md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FULL = {"distance": 512, "rollout": 64, "erf": 32, "cost": 128, "cli": 512, "flat_lo": 100, "flat_hi": 2000,
        "cka": 512, "swin": 32}
QUICK = {"distance": 64, "rollout": 16, "erf": 4, "cost": 32, "cli": 64, "flat_lo": 32, "flat_hi": 192, "cka": 64, "swin": 8}
CKA_CNN = "vitlens/resnet-tiny-shapes"  # CKA's second model: the shipped ResNet, beside the small ViT
SWIN = "swin_tiny_patch4_window7_224"      # windowed attention, random init
#: High-resolution rows: (label, timm name, build kwargs, input px, target memory ratio, target throughput ratio).
RESOLUTION = [("DINOv2-B/14, 224 px", "vit_base_patch14_dinov2", {"img_size": 224}, 224, None, 0.70),
              ("DINOv2-B/14, 518 px", "vit_base_patch14_dinov2", {}, 518, 1.5, None),
              ("SAM-B, 1024 px", "samvit_base_patch16", {}, 1024, None, None)]
#: (images, batch) per resolution row, full and quick.
RESOLUTION_SIZES = {False: [(32, 8), (16, 8), (4, 2)], True: [(8, 8), (8, 8), (1, 1)]}
MIB = 1024 * 1024


# --------------------------------------------------------------------------- helpers

sys.path.insert(0, str(REPO / "tests"))      # the baselines: beside the tests' reference implementations
sys.path.insert(0, str(REPO / "analyses"))   # the process harness

from harness import (CLI_PROCESS, PLAIN_PROCESS, RESOLUTION_TASKS, build_model, child_main, run_child,  # noqa: E402
                     run_process)
from reference import erf_per_image, plain_forward, rollout_per_image, sync  # noqa: E402

# --------------------------------------------------------------------------- the benchmark

def machine_info(device: str) -> dict:
    import timm
    import torch

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "os": platform.platform(), "device": device}
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def row(measurement, vitlens, baseline, ratio, target, met, **raw) -> dict:
    return {"measurement": measurement, "vitlens": vitlens, "baseline": baseline, "ratio": ratio,
            "target": target, "met": met, "raw": raw}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _agree(name: str, a, b, rtol: float, atol: float, checks: dict) -> None:
    """Assert that both sides computed the same numbers; record the largest difference."""
    import numpy as np
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{name}: shapes differ, {a.shape} vs {b.shape}"
    assert np.isfinite(b).all() and np.abs(b).max() > 0, f"{name}: the baseline result is empty or not finite"
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name}: vitlens and baseline disagree")
    diff = np.abs(a - b)
    checks[name] = {"max_abs_diff": float(diff.max()), "max_rel_diff": float((diff / np.maximum(np.abs(b), 1e-300)).max()),
                    "rtol": rtol, "atol": atol, "shape": list(a.shape)}


def _timed_rounds(jobs: dict, rounds: int, device: str, label: str, light: tuple = (),
                  light_rounds: int | None = None) -> tuple[dict, dict, dict]:
    """Run every job once per round, interleaved, so that both sides of a ratio see the same spells
    of load; jobs named in ``light`` (the quick ones) run ``light_rounds`` rounds, the rest
    ``rounds``. Returns (best seconds, all seconds, last outputs)."""
    times: dict[str, list[float]] = {k: [] for k in jobs}
    out: dict = {}
    total = max(rounds, light_rounds or rounds)
    for rep in range(total):
        for key, fn in jobs.items():
            if rep >= ((light_rounds or rounds) if key in light else rounds):
                continue
            sync(device)
            t0 = time.perf_counter()
            out[key] = fn()
            sync(device)
            times[key].append(time.perf_counter() - t0)
            _say(f"{label} round {rep + 1}/{total}: {key} {times[key][-1]:.2f} s")
    return {k: min(v) for k, v in times.items()}, times, out


def stored_map_bytes(name: str, kwargs: dict, size: int, n: int) -> int:
    """What keeping every attention block's probabilities of ``n`` images takes (float32)."""

    from vitlens.models.families.registry import adapter_for
    from vitlens.models.loading import load_model

    adapter = adapter_for(load_model(name, pretrained=False, device="cpu", **kwargs))
    blocks = adapter.attention_blocks()
    if hasattr(adapter, "window_layout"):
        lay = adapter.window_layout((size, size))
        per = sum(g.num_windows * g.window_tokens ** 2 * b.num_heads for g, b in zip(lay, blocks))
    else:
        t = adapter.token_layout((size, size)).num_tokens
        per = sum(t * t * b.num_heads for b in blocks)
    del adapter, blocks
    return per * 4 * n


def resolution_rows(args, work: Path, rows: list, checks: dict, details: dict) -> None:
    """Section 9: the high-resolution rows (see the module docstring)."""
    import numpy as np

    sizes = RESOLUTION_SIZES[bool(args.quick)]
    details["resolution"] = {}
    for (label, name, kwargs, px, mem_target, thr_target), (n, bs) in zip(RESOLUTION, sizes):
        spec = {"model": name, "kwargs": kwargs, "size": px, "n": n, "batch_size": bs, "device": args.device,
                "seed": args.seed, "attention_memory": args.attention_memory}
        store = stored_map_bytes(name, kwargs, px, n)
        tasks = [t for t in RESOLUTION_TASKS if t != "res-store" or store <= args.max_store_gib * 2 ** 30]
        rep: dict[str, dict] = {}
        tag = f"-{name}-{px}"
        for task in tasks:
            _say(f"{label}, {n} images, batch {bs}: {task}")
            rep[task] = run_child(task, work, tag=tag, **spec)
            _say(f"  {rep[task]['seconds']:.1f} s, peak {rep[task]['peak_rss'] / MIB:.0f} MiB")
        cuda = args.device.startswith("cuda")
        load = rep["res-load"]["peak_rss"]
        above = {t: (r["cuda_peak_above_load"] if cuda else r["peak_rss"] - load) for t, r in rep.items()}
        values = {t: np.load(rep[t]["result"] + ".npz") for t in ("res-chunked", "res-full")}
        for key in ("distance", "entropy", "prefix_share"):
            a, b = values["res-chunked"][key], values["res-full"][key]
            ok = np.isfinite(b)
            if np.abs(b[ok]).max(initial=0) > 0:
                _agree(f"{label}: chunked vs full-map {key}", a[ok], b[ok], 1e-4, 1e-5, checks)
            else:                                 # no prefix tokens (SAM): both all zero
                assert (a[ok] == 0).all(), f"{label}: chunked {key} is not zero where the full-map one is"
        fwd, ch, fu = above["res-forward"], above["res-chunked"], above["res-full"]
        what = "peak allocated above the loaded model (CUDA)" if cuda else \
            f"peak RSS above the load-only process ({load / MIB:.0f} MiB)"
        r = ch / max(fwd, 1)
        rows.append(row(f"{label}: `distance` chunked, {what}, batch {bs}", f"{ch / MIB:.0f} MiB",
                        f"{fwd / MIB:.0f} MiB (plain fused forward)", r,
                        f"<= {mem_target:g}" if mem_target else "(info)", (r <= mem_target) if mem_target else None,
                        above=above, peak_rss={t: v["peak_rss"] for t, v in rep.items()},
                        attention_memory_mb=args.attention_memory))
        rows.append(row(f"{label}: `distance` full-map path, {what}, batch {bs}", f"{fu / MIB:.0f} MiB",
                        f"{fwd / MIB:.0f} MiB (plain fused forward)", fu / max(fwd, 1), "(today)", None))
        if "res-store" in rep:
            st = above["res-store"]
            rows.append(row(f"{label}: storing every layer's maps of {n} images, {what}", f"{st / MIB:.0f} MiB",
                            f"{fwd / MIB:.0f} MiB (plain fused forward)", st / max(fwd, 1), "(info)", None,
                            stored_bytes=rep["res-store"].get("stored_bytes")))
        else:
            rows.append(row(f"{label}: storing every layer's maps of {n} images: not run", f"{store / 2 ** 30:.1f} GiB "
                            "of maps", f"> --max-store-gib {args.max_store_gib:g}", float("nan"), "(not run)", None))
        tf, tc, tl = (rep[t]["seconds"] for t in ("res-forward", "res-chunked", "res-full"))
        r = tf / tc
        target = thr_target if thr_target and not cuda else None
        rows.append(row(f"{label}: `distance` chunked throughput / plain fused forward, {n} images (batch {bs})",
                        f"{n / tc:.2f} img/s", f"{n / tf:.2f} img/s", r, f">= {target:.2f}" if target else "(info)",
                        (r >= target) if target else None, seconds={t: v["seconds"] for t, v in rep.items()}))
        rows.append(row(f"{label}: `distance` full-map throughput / plain fused forward, {n} images (batch {bs})",
                        f"{n / tl:.2f} img/s", f"{n / tf:.2f} img/s", tf / tl, "(today)", None))
        details["resolution"][label] = {k: {kk: vv for kk, vv in v.items() if kk != "result"} for k, v in rep.items()}


def run_benchmark(args) -> dict:
    import numpy as np
    import torch

    from vitlens.analyses.attention.rollout import attention_rollout
    from vitlens.analyses.attention.streaming import attention_distance
    from vitlens.analyses.fields.effective import effective_receptive_field
    from vitlens.data.images import ImageSet
    from vitlens.data.shapes import save_images

    sizes = dict(QUICK if args.quick else FULL)
    rounds = args.repeat if args.repeat is not None else (2 if args.quick else 3)
    child_rounds = 1 if args.quick else min(rounds, 2)
    dev, bs, seed, name = args.device, args.batch_size, args.seed, args.model
    info = machine_info(dev)
    info["load_average_start"] = list(os.getloadavg())
    rows, checks = [], {}
    details = {"sizes": sizes, "rounds": rounds, "child_rounds": child_rounds, "batch_size": bs, "model": name,
               "small_model": args.small_model or None}
    work = Path(tempfile.mkdtemp(prefix="vitlens-bench-"))
    if args.resolution_only:
        try:
            resolution_rows(args, work, rows, checks, details)
        finally:
            shutil.rmtree(work, ignore_errors=True) if not args.keep else _say(f"kept {work}")
        info["load_average_end"] = list(os.getloadavg())
        return {"command": "python analyses/benchmark.py " + shlex.join(sys.argv[1:]), "machine": info,
                "details": details, "rows": rows, "checks": checks}
    try:
        # ---------------------------------------------------------------- images
        n_files = max(sizes["flat_hi"], sizes["cli"], sizes["distance"])
        t0 = time.perf_counter()
        save_images(work / "shapes", n_files, seed=seed)
        folder = work / "shapes" / "images"
        _say(f"wrote {n_files} images in {time.perf_counter() - t0:.1f} s to {folder}")
        model = build_model(name, dev, seed)
        n_tensor = max(sizes["distance"], sizes["cost"], sizes["rollout"], sizes["erf"])
        x = torch.cat([xb for xb, _ in ImageSet.for_model(model, folder, num_images=n_tensor).batches(bs)])
        torch.save(x, work / "images.pt")
        _say(f"preprocessed {tuple(x.shape)} with {name}'s eval transform")
        spec = {"model": name, "device": dev, "seed": seed, "batch_size": bs, "images": str(work / "images.pt")}

        # ---------------------------------------------------------------- 1. distance vs AttentionExtract
        n = sizes["distance"]
        reports: dict[str, list[dict]] = {"load": [], "forward": [], "vitlens-distance": [], "timm-distance": []}
        for rep in range(child_rounds):
            for task in reports:
                if task == "load" and rep:
                    continue
                _say(f"distance, {n} images, child round {rep + 1}/{child_rounds}: {task}")
                c = run_child(task, work, n=n, **spec)
                reports[task].append(c)
                _say(f"  {c.get('seconds', 0):.1f} s, peak {c['peak_rss'] / MIB:.0f} MiB")
                if task.endswith("distance"):
                    c["value"] = np.load(c["result"])
        _agree("attention distance [layer, head], px", reports["vitlens-distance"][-1]["value"],
               reports["timm-distance"][-1]["value"], 1e-4, 1e-4, checks)
        tv = min(c["seconds"] for c in reports["vitlens-distance"])
        tb = min(c["seconds"] for c in reports["timm-distance"])
        tf = min(c["seconds"] for c in reports["forward"])
        r = tb / tv
        rows.append(row(f"attention distance, {n} images: time", f"{tv:.1f} s", f"{tb:.1f} s", r, ">= 2x faster",
                        r >= 2, vitlens_s=[c["seconds"] for c in reports["vitlens-distance"]],
                        baseline_s=[c["seconds"] for c in reports["timm-distance"]],
                        forward_s=[c["seconds"] for c in reports["forward"]]))
        rows.append(row(f"attention distance, {n} images: baseline time / plain fused forward time",
                        f"{tf:.1f} s (forward)", f"{tb:.1f} s", tb / tf, "(ceiling)", None))
        rows.append(row(f"distance throughput / plain fused forward, {n} images, one process each (batch {bs})",
                        f"{n / tv:.1f} img/s", f"{n / tf:.1f} img/s", tf / tv, ">= 0.70", tf / tv >= 0.70))
        peak = {k: max(c["peak_rss"] for c in v) for k, v in reports.items()}
        dv, db = peak["vitlens-distance"] - peak["load"], peak["timm-distance"] - peak["load"]
        r = db / max(dv, 1)
        rows.append(row(f"attention distance, {n} images: peak RSS above load-only process ({peak['load'] / MIB:.0f} MiB)",
                        f"{dv / MIB:.0f} MiB", f"{db / MIB:.0f} MiB", r, ">= 5x less", r >= 5,
                        peak_rss=peak, forward_above_load=peak["forward"] - peak["load"],
                        cuda_peak_allocated={k: v[-1].get("cuda_peak_allocated") for k, v in reports.items()}))
        details["distance_children"] = {k: [{kk: vv for kk, vv in c.items() if kk not in ("value", "result")}
                                            for c in v] for k, v in reports.items()}

        # ---------------------------------------------------------------- 2-4. in one process
        nc, nr, ne = sizes["cost"], sizes["rollout"], sizes["erf"]
        layers = len(model.blocks)
        jobs = {
            "forward": lambda: plain_forward(model, x[:nc], bs, dev),
            "forward_b1": lambda: plain_forward(model, x[:nr], 1, dev),
            "distance": lambda: attention_distance(model, x[:nc], batch_size=bs),
            "rollout": lambda: attention_rollout(model, x[:nr], batch_size=bs),
            "rollout_per_image": lambda: rollout_per_image(model, x[:nr], dev),
            "rollout_per_image_numpy": lambda: rollout_per_image(model, x[:nr], dev, products="numpy"),
            "erf": lambda: effective_receptive_field(model, x[:ne], batch_size=bs, progress=False),
            "erf_per_image": lambda: erf_per_image(model, x[:ne], dev),
        }
        _say("in-process: warm-up")
        _timed_rounds({
            "forward": lambda: plain_forward(model, x[:2], bs, dev),
            "distance": lambda: attention_distance(model, x[:2], batch_size=bs),
            "rollout": lambda: attention_rollout(model, x[:2], batch_size=bs),
            "rollout_per_image": lambda: rollout_per_image(model, x[:2], dev),
            "rollout_per_image_numpy": lambda: rollout_per_image(model, x[:2], dev, products="numpy"),
            "erf": lambda: effective_receptive_field(model, x[:2], batch_size=bs, progress=False),
            "erf_per_image": lambda: erf_per_image(model, x[:1], dev)}, 1, dev, "warm-up")
        light = ("forward", "forward_b1", "distance", "rollout", "rollout_per_image")
        best, times, out = _timed_rounds(jobs, rounds, dev, "in-process", light, 2 * rounds - 1)
        details["in_process_s"] = times
        _agree("rollout maps [image, grid_h, grid_w]", out["rollout"].maps, out["rollout_per_image"], 1e-4, 1e-9, checks)
        _agree("rollout maps, NumPy products", out["rollout"].maps, out["rollout_per_image_numpy"], 1e-4, 1e-9, checks)
        emaps = out["erf"].maps
        _agree("ERF maps [layer, height, width]", emaps, out["erf_per_image"], 1e-3, 1e-6 * float(np.abs(emaps).max()),
               checks)
        r = best["rollout_per_image"] / best["rollout"]
        rows.append(row(f"rollout, {nr} images: time", f"{best['rollout']:.2f} s", f"{best['rollout_per_image']:.2f} s",
                        r, ">= 3x faster", r >= 3, vitlens_s=times["rollout"], baseline_s=times["rollout_per_image"]))
        r = best["rollout_per_image_numpy"] / best["rollout"]
        rows.append(row(f"rollout, {nr} images: time, per-image loop with NumPy products", f"{best['rollout']:.2f} s",
                        f"{best['rollout_per_image_numpy']:.2f} s", r, "(info)", None,
                        baseline_s=times["rollout_per_image_numpy"]))
        r = best["erf_per_image"] / best["erf"]
        rows.append(row(f"ERF, {ne} images x {layers} layers: time", f"{best['erf']:.2f} s",
                        f"{best['erf_per_image']:.2f} s", r, ">= 3x faster", r >= 3,
                        vitlens_s=times["erf"], baseline_s=times["erf_per_image"]))
        fwd, fwd1 = nc / best["forward"], nr / best["forward_b1"]
        rows.append(row(f"plain fused forward, batch {bs} / batch 1 (throughput)", f"{fwd:.1f} img/s",
                        f"{fwd1:.1f} img/s", fwd / fwd1, "(ceiling)", None, forward_s=times["forward"],
                        forward_b1_s=times["forward_b1"]))
        for key, count, target in (("distance", nc, 0.70), ("rollout", nr, None), ("erf", ne, None)):
            thr = count / best[key]
            r = thr / fwd
            rows.append(row(f"{key if key != 'erf' else 'ERF'} throughput / plain fused forward, {count} images, "
                            f"in process (batch {bs})",
                            f"{thr:.1f} img/s", f"{fwd:.1f} img/s", r,
                            f">= {target:.2f}" if target else "(cost)", (r >= target) if target else None,
                            vitlens_img_s=thr, forward_img_s=fwd, images=count))

        # ---------------------------------------------------------------- 4b. whole process
        ncli = sizes["cli"]
        cli_common = ["--model", name, "--random-init", "--seed", str(seed), "--images", str(folder),
                      "--batch-size", str(bs), "--device", dev]
        walls: dict[str, list[float]] = {"cli": [], "plain": []}
        cpus: dict[str, list[float]] = {"cli": [], "plain": []}
        peaks: dict[int, int] = {}

        def cli(count: int, tag: str, cpu: list | None = None) -> float:
            rep_path = work / f"cli-{tag}.json"
            wall = run_process([sys.executable, "-c", CLI_PROCESS, str(rep_path), "distance", *cli_common,
                                "--num-images", str(count), "--out", str(work / f"out-{tag}")], work / f"cli-{tag}.log",
                               cpu)
            peaks[count] = max(peaks.get(count, 0), json.loads(rep_path.read_text())["peak_rss"])
            import csv
            with open(work / f"out-{tag}" / "attention_distance.csv") as f:
                used = {int(rw["n_images"]) for rw in csv.DictReader(f)}
            assert used == {count}, f"vitlens distance used {used} images, not {count}"
            return wall

        process_rounds = 1 if args.quick else rounds
        for rep in range(process_rounds):
            _say(f"whole process round {rep + 1}/{process_rounds}: vitlens distance over {ncli} files")
            walls["cli"].append(cli(ncli, f"{ncli}-{rep}", cpus["cli"]))
            _say(f"  {walls['cli'][-1]:.1f} s; plain-forward process over the same files")
            rep_path = work / f"plain-{rep}.json"
            walls["plain"].append(run_process([sys.executable, "-c", PLAIN_PROCESS, str(rep_path), name, str(folder),
                                               str(ncli), str(bs), dev, str(seed)], work / f"plain-{rep}.log",
                                              cpus["plain"]))
            _say(f"  {walls['plain'][-1]:.1f} s")
        tc, tp = min(walls["cli"]), min(walls["plain"])
        r = tp / tc
        rows.append(row(f"`vitlens distance` process / plain-forward process, {ncli} files (throughput)",
                        f"{tc:.1f} s", f"{tp:.1f} s", r, ">= 0.70", r >= 0.70,
                        cli_s=walls["cli"], plain_s=walls["plain"], cli_cpu_s=cpus["cli"], plain_cpu_s=cpus["plain"]))

        # ---------------------------------------------------------------- 5. flat memory
        lo, hi = sizes["flat_lo"], sizes["flat_hi"]
        for count in (lo, hi):
            _say(f"flat memory: vitlens distance over {count} files")
            wall = cli(count, f"flat-{count}")
            _say(f"  {wall:.1f} s, peak {peaks[count] / MIB:.0f} MiB")
        r = peaks[hi] / peaks[lo]
        rows.append(row(f"`vitlens distance` process peak RSS, {hi} vs {lo} images (batch {bs})",
                        f"{peaks[hi] / MIB:.0f} MiB", f"{peaks[lo] / MIB:.0f} MiB", r, "<= 1.10", r <= 1.10,
                        peaks={str(k): p for k, p in sorted(peaks.items())}))

        # ---------------------------------------------------------------- 6. a small model, where per-call overhead dominates
        if args.small_model:
            from vitlens.models.loading import load_model
            small = load_model(args.small_model, device=dev)
            xs = torch.cat([xb for xb, _ in ImageSet.for_model(small, folder, num_images=max(nr, ne)).batches(bs)])
            sjobs = {
                "forward": lambda: plain_forward(small, xs[:nr], bs, dev),
                "forward_b1": lambda: plain_forward(small, xs[:nr], 1, dev),
                "rollout": lambda: attention_rollout(small, xs[:nr], batch_size=bs),
                "rollout_per_image": lambda: rollout_per_image(small, xs[:nr], dev),
                "erf": lambda: effective_receptive_field(small, xs[:ne], batch_size=bs, progress=False),
                "erf_per_image": lambda: erf_per_image(small, xs[:ne], dev),
            }
            _timed_rounds({"rollout": lambda: attention_rollout(small, xs[:2], batch_size=bs),
                           "rollout_per_image": lambda: rollout_per_image(small, xs[:2], dev),
                           "erf": lambda: effective_receptive_field(small, xs[:2], batch_size=bs, progress=False),
                           "erf_per_image": lambda: erf_per_image(small, xs[:1], dev)}, 1, dev,
                          f"{args.small_model} warm-up")
            sbest, stimes, sout = _timed_rounds(sjobs, 2 * rounds - 1, dev, args.small_model)
            details["small_model_s"] = stimes
            _agree(f"{args.small_model} rollout maps", sout["rollout"].maps, sout["rollout_per_image"], 1e-4, 1e-9, checks)
            em = sout["erf"].maps
            _agree(f"{args.small_model} ERF maps", em, sout["erf_per_image"], 1e-3, 1e-6 * float(np.abs(em).max()), checks)
            tag = f"{args.small_model} ({xs.shape[-1]} px)"
            r = sbest["rollout_per_image"] / sbest["rollout"]
            rows.append(row(f"{tag}: rollout, {nr} images: time", f"{sbest['rollout']:.2f} s",
                            f"{sbest['rollout_per_image']:.2f} s", r, ">= 3x faster", r >= 3))
            r = sbest["erf_per_image"] / sbest["erf"]
            rows.append(row(f"{tag}: ERF, {ne} images x {len(small.blocks)} layers: time", f"{sbest['erf']:.2f} s",
                            f"{sbest['erf_per_image']:.2f} s", r, ">= 3x faster", r >= 3))
            f32, f1 = nr / sbest["forward"], nr / sbest["forward_b1"]
            rows.append(row(f"{tag}: plain fused forward, batch {bs} / batch 1 (throughput)", f"{f32:.0f} img/s",
                            f"{f1:.0f} img/s", f32 / f1, "(ceiling)", None))

        # ---------------------------------------------------------------- 7. CKA: cost and flat memory
        if args.small_model:
            from vitlens.analyses.representations.cka import layer_cka
            from vitlens.models.loading import load_model
            cnn = load_model(CKA_CNN, device=dev)
            vit = load_model(args.small_model, device=dev)
            nk = sizes["cka"]
            xk = torch.cat([xb for xb, _ in ImageSet.for_model(vit, folder, num_images=nk).batches(bs)])
            kjobs = {"forwards": lambda: (plain_forward(vit, xk, bs, dev), plain_forward(cnn, xk, bs, dev)),
                     "cka": lambda: layer_cka(vit, xk, cnn, batch_size=bs)}
            _timed_rounds(kjobs, 1, dev, "CKA warm-up")
            kbest, ktimes, _ = _timed_rounds(kjobs, 2 * rounds - 1, dev, "CKA")
            r = kbest["cka"] / kbest["forwards"]
            rows.append(row(f"CKA {args.small_model} x {CKA_CNN}, {nk} images: time / the two plain forward passes",
                            f"{kbest['cka']:.2f} s", f"{kbest['forwards']:.2f} s", r, "<= 1.15", r <= 1.15,
                            cka_s=ktimes["cka"], forwards_s=ktimes["forwards"]))
            kpeaks = {}
            for count in (sizes["flat_lo"], sizes["flat_hi"]):
                _say(f"flat memory: vitlens cka over {count} files")
                rep_path = work / f"cka-{count}.json"
                run_process([sys.executable, "-c", CLI_PROCESS, str(rep_path), "cka", "--model", args.small_model,
                             "--model", CKA_CNN, "--images", str(folder), "--num-images", str(count),
                             "--batch-size", str(bs), "--device", dev, "--out", str(work / f"cka-{count}")],
                            work / f"cka-{count}.log")
                kpeaks[count] = json.loads(rep_path.read_text())["peak_rss"]
            lo, hi = sizes["flat_lo"], sizes["flat_hi"]
            r = kpeaks[hi] / kpeaks[lo]
            rows.append(row(f"`vitlens cka` process peak RSS, {hi} vs {lo} images (batch {bs})",
                            f"{kpeaks[hi] / MIB:.0f} MiB", f"{kpeaks[lo] / MIB:.0f} MiB", r, "<= 1.10", r <= 1.10,
                            peaks={str(k): v for k, v in sorted(kpeaks.items())}))

        # ---------------------------------------------------------------- 8. windowed attention: Swin-T
        swin = build_model(SWIN, dev, seed)
        nw = sizes["swin"]
        xw = torch.cat([xb for xb, _ in ImageSet.for_model(swin, folder, num_images=nw).batches(bs)])
        wjobs = {"forward": lambda: plain_forward(swin, xw, bs, dev),
                 "distance": lambda: attention_distance(swin, xw, batch_size=bs)}
        _timed_rounds(wjobs, 1, dev, "Swin-T warm-up")
        wbest, wtimes, _ = _timed_rounds(wjobs, 2 * rounds - 1, dev, "Swin-T")
        r = wbest["forward"] / wbest["distance"]
        rows.append(row(f"{SWIN} (windowed): distance throughput / plain fused forward, {nw} images (batch {bs})",
                        f"{nw / wbest['distance']:.1f} img/s", f"{nw / wbest['forward']:.1f} img/s", r, ">= 0.70",
                        r >= 0.70, distance_s=wtimes["distance"], forward_s=wtimes["forward"]))

        # ---------------------------------------------------------------- 9. high resolution
        if not args.skip_resolution:
            resolution_rows(args, work, rows, checks, details)
    finally:
        if args.keep:
            _say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    info["load_average_end"] = list(os.getloadavg())
    return {"command": "python analyses/benchmark.py " + shlex.join(sys.argv[1:]), "machine": info,
            "details": details, "rows": rows, "checks": checks}


# --------------------------------------------------------------------------- output

def _fmt_ratio(r: float) -> str:
    if r != r:
        return "-"
    return f"{r:.2f}x" if r >= 0.995 or r < 0.1 else f"{r:.2f}"


def table(result: dict, markdown: bool = False) -> str:
    head = ["measurement", "vitlens", "baseline / reference", "ratio", "target", "met"]
    body = [[rw["measurement"], rw["vitlens"], rw["baseline"], _fmt_ratio(rw["ratio"]), rw["target"],
             "-" if rw["met"] is None else ("yes" if rw["met"] else "no")] for rw in result["rows"]]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def machine_line(m: dict) -> str:
    s = (f"{m['cpu']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, {m.get('memory_gib', '?')} GiB; "
         f"torch {m['torch']} ({m['torch_threads']} threads), timm {m['timm']}, Python {m['python']}; device {m['device']}")
    if "gpu" in m:
        s += f" ({m['gpu']})"
    return s


def report_text(result: dict) -> str:
    m = result["machine"]
    lines = [table(result), "", f"machine: {machine_line(m)}",
             f"load average (1, 5, 15 min) at start {m['load_average_start']}, at end {m['load_average_end']}",
             f"model: {result['details']['model']} (random init), batch {result['details']['batch_size']}, "
             f"best of {result['details']['rounds']} rounds (of {2 * result['details']['rounds'] - 1} for the "
             f"quick in-process jobs) and of {result['details']['child_rounds']} for the distance children",
             "agreement (vitlens vs baseline):"]
    lines += [f"  {k}: max abs diff {c['max_abs_diff']:.3g}, max rel diff {c['max_rel_diff']:.3g}"
              for k, c in result["checks"].items()]
    lines.append(f"command: {result['command']}")
    return "\n".join(lines)


def write_outputs(result: dict, out: str) -> list[Path]:
    p = Path(out)
    md = f"{table(result, markdown=True)}\n\nMachine: {machine_line(result['machine'])}\n\nCommand: `{result['command']}`\n"
    if p.suffix == ".json":
        targets = {p: json.dumps(result, indent=2, default=str)}
    elif p.suffix == ".md":
        targets = {p: md}
    else:
        targets = {p / "benchmark.json": json.dumps(result, indent=2, default=str), p / "benchmark.md": md}
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(targets)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller image counts, fewer rounds (about 1.5 minutes on 2 cores)")
    p.add_argument("--device", default="cpu", help="torch device for every side (cpu, cuda, cuda:1)")
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm ViT, random init (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, help="rounds R of the in-process and whole-process timings, best kept "
                                              "(default 3; with --quick 2, and 1 for whole processes); the quick "
                                              "in-process jobs take 2R - 1, the distance children up to 2 (1 with "
                                              "--quick)")
    p.add_argument("--small-model", default="vitlens/vit-tiny-shapes",
                   help="a second, small model for the batched-vs-per-image rows ('' to skip; default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights and images")
    p.add_argument("--out", help="write the results: a .json or .md file, or a folder for benchmark.json and .md")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (images, logs, reports)")
    p.add_argument("--resolution-only", action="store_true",
                   help="run only the high-resolution rows (DINOv2-B/14 at 224 and 518 px, SAM-B at 1024 px)")
    p.add_argument("--skip-resolution", action="store_true", help="leave the high-resolution rows out")
    p.add_argument("--attention-memory", type=float, default=64.0, metavar="MB",
                   help="the chunked path's memory budget in the high-resolution rows (default %(default)g)")
    p.add_argument("--max-store-gib", type=float, default=4.0,
                   help="run the store-every-map child only where the maps take at most this (default %(default)g)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    result = run_benchmark(args)
    print(report_text(result))
    if args.out:
        for path in write_outputs(result, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
