"""Running the command line from tests: in process with warnings hushed, or under torchrun."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import warnings

from vitlens.cli import main


def run(argv):
    """``vitlens argv`` in this process; a broken file's warning comes only once it is reached."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def torchrun(argv, nproc: int = 2, *, check: bool = True, env: dict | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc -m vitlens argv`` on a free port (parallel test runs do not
    meet), one thread per process; asserts it succeeded unless ``check`` is False."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("torchrun")
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run(cmd + ["--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port",
                              str(port), "-m", "vitlens", *argv], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r
