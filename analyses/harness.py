"""The benchmark's process harness: each measurement runs in a fresh process whose peak memory and
CPU time are read back, so one measurement's allocations never inflate another's."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the baselines live beside the tests' reference implementations

from reference import plain_forward, sync, timm_distance  # noqa: E402

__all__ = ["peak_rss", "build_model", "CLI_PROCESS", "PLAIN_PROCESS", "child_main", "run_process", "run_child",
           "RESOLUTION_TASKS", "resolution_child"]


def peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def build_model(name: str, device: str, seed: int):
    """The benchmark model: random weights drawn from ``seed`` (the same in every process)."""
    import torch

    from vitlens.models.loading import load_model

    torch.manual_seed(seed)
    return load_model(name, pretrained=False, device=device)


_REPORT = """
import json as _json, sys as _sys
def _report(path, **extra):
    hwm = 0
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                hwm = int(line.split()[1]) * 1024
    with open(path, 'w') as f:
        _json.dump({'peak_rss': hwm, **extra}, f)
"""

# The vitlens command line, exactly as `python -m vitlens ...` runs it, then its peak memory.
CLI_PROCESS = _REPORT + """
from vitlens.cli import main
rc = main(_sys.argv[2:])
_report(_sys.argv[1])
_sys.exit(rc)
"""

# A plain forward pass over an image folder: same model loading, same ImageSet, same batches.
PLAIN_PROCESS = _REPORT + """
import torch
from vitlens.data.images import ImageSet
from vitlens.models.loading import load_model
report, name, folder, n, bs, device, seed = _sys.argv[1:8]
torch.manual_seed(int(seed))
model = load_model(name, pretrained=False, device=device)
images = ImageSet.for_model(model, folder, num_images=int(n))
seen = 0
with torch.no_grad():
    for x, idx in images.batches(int(bs)):
        model(x.to(device))
        seen += len(idx)
if device.startswith('cuda'):
    torch.cuda.synchronize()
assert seen == int(n), seen
_report(report, n_images=seen)
"""


#: The high-resolution children: model and images only; the plain fused forward pass; ``vitlens
#: distance``'s analysis on the chunked path and on the full-map path; every layer's maps stored.
RESOLUTION_TASKS = ("res-load", "res-forward", "res-chunked", "res-full", "res-store")


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def resolution_child(task: str, spec: dict) -> dict:
    """One high-resolution measurement: the model built with ``spec["kwargs"]`` (random weights from
    the seed), ``n`` random images of ``size`` px, then ``task`` over them in batches of
    ``batch_size``. Reports the process's peak RSS, its RSS after loading, the time of the task and,
    on CUDA, the peak allocated above what the loaded model and images hold."""
    import numpy as np
    import torch

    from vitlens.models.loading import load_model

    device, bs, n, size = spec["device"], spec["batch_size"], spec["n"], spec["size"]
    torch.manual_seed(spec["seed"])
    model = load_model(spec["model"], pretrained=False, device=device, **spec.get("kwargs", {}))
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(spec["seed"])).to(device)
    report = {"task": task, "n_images": n, "rss_after_load": _rss_now()}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        report["cuda_after_load"] = int(torch.cuda.memory_allocated())
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    if task == "res-forward":
        plain_forward(model, x, bs, device)
    elif task in ("res-chunked", "res-full"):
        from vitlens.analyses.attention.streaming import attention_distance
        res = attention_distance(model, x, batch_size=bs, attention_path=task[4:],
                                 attention_memory=spec.get("attention_memory", 64.0))
        report["attention_path"] = res.attention_path
        np.savez(spec["result"], distance=res.distance, entropy=res.entropy, prefix_share=res.prefix_share)
    elif task == "res-store":
        from vitlens.capture.attention import capture_attention
        kept = []
        with torch.no_grad(), capture_attention(model) as cap:
            for i in range(0, n, bs):
                model(x[i:i + bs])
            kept = cap.maps                       # every layer's maps of every image, as a list of tensors
        report["stored_bytes"] = int(sum(m.numel() * m.element_size() for m in kept))
        del kept
    elif task != "res-load":
        raise ValueError(f"unknown child task {task!r}")
    sync(device)
    report["seconds"] = time.perf_counter() - t0
    report["peak_rss"] = peak_rss()
    if device.startswith("cuda"):
        report["cuda_peak_above_load"] = int(torch.cuda.max_memory_allocated()) - report["cuda_after_load"]
    return report


def child_main(task: str, spec_path: str) -> int:
    """One measurement in a fresh process: ``load`` (model and images only), ``forward`` (plain
    fused forward pass), ``vitlens-distance`` or ``timm-distance``. Writes a JSON report (and the
    result array) where the spec says."""
    import numpy as np
    import torch

    spec = json.loads(Path(spec_path).read_text())
    if task in RESOLUTION_TASKS:
        Path(spec["report"]).write_text(json.dumps(resolution_child(task, spec)))
        return 0
    device, bs = spec["device"], spec["batch_size"]
    model = build_model(spec["model"], device, spec["seed"])
    x = torch.load(spec["images"], weights_only=True)[: spec["n"]]
    report = {"task": task, "n_images": int(x.shape[0])}
    if task == "vitlens-distance":
        from vitlens.analyses.attention.streaming import attention_distance
        sync(device)
        t0 = time.perf_counter()
        res = attention_distance(model, x, batch_size=bs, prefix_tokens="discard")
        sync(device)
        report["seconds"] = time.perf_counter() - t0
        np.save(spec["result"], res.distance)
    elif task == "timm-distance":
        dist, report["seconds"] = timm_distance(model, x, bs, device)
        np.save(spec["result"], dist)
    elif task == "forward":
        sync(device)
        t0 = time.perf_counter()
        plain_forward(model, x, bs, device)
        sync(device)
        report["seconds"] = time.perf_counter() - t0
    elif task != "load":
        raise ValueError(f"unknown child task {task!r}")
    report["peak_rss"] = peak_rss()
    if device.startswith("cuda"):
        report["cuda_peak_allocated"] = int(torch.cuda.max_memory_allocated())
    Path(spec["report"]).write_text(json.dumps(report))
    return 0


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TQDM_DISABLE", "1")
    return env


def run_process(argv: list[str], log: Path, cpu: list | None = None) -> float:
    """Run ``argv`` to completion; returns its wall time and appends its CPU time (user + system)
    to ``cpu``. A failure raises with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = rc = os.waitstatus_to_exitcode(status)
            if cpu is not None:
                cpu.append(usage.ru_utime + usage.ru_stime)
        else:
            rc = p.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise RuntimeError(f"{shlex.join(argv)} exited with {rc}:\n{tail}")
    return wall


def run_child(task: str, work: Path, tag: str = "", **spec) -> dict:
    spec_path, report = work / f"{task}{tag}.spec.json", work / f"{task}{tag}.report.json"
    spec.update(report=str(report), result=str(work / f"{task}{tag}.npy"))
    spec_path.write_text(json.dumps(spec))
    run_process([sys.executable, str(REPO / "analyses" / "benchmark.py"), "--child", task, "--spec", str(spec_path)],
                work / f"{task}{tag}.log")
    out = json.loads(report.read_text())
    out["result"] = spec["result"]
    return out
