"""The README's offline Python example runs as written, on a shipped model and generated images."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_offline_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    block = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README has no marked Python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing in it may need the network
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([4, 4, 65, 65])" in out
    assert (tmp_path / "shapes" / "images").is_dir()


def test_the_sweep_paragraph_is_the_sweeps_numbers():
    import pandas as pd

    text = " ".join(README.read_text().split())
    runs = pd.read_csv(README.parent / "figures" / "locality_sweep.csv").drop_duplicates("run")
    g8, g16 = runs[runs.grid == 8].sort_values("distinct_images"), runs[runs.grid == 16]
    assert (runs.local_heads_lower == 0).all() and (runs.local_heads_upper == 0).all()  # "No run grows a local head"
    lo, hi = g8.mean_distance_lower_px.min(), g8.mean_distance_lower_px.max()
    assert f"stays between {lo:.1f} and {hi:.1f} px against {g8.uniform_px.iloc[0]:.1f} px" in text
    first, best = g8.iloc[0], g8.loc[g8.accuracy.idxmax()]
    assert f"from {100 * first.accuracy:.0f}% with {first.distinct_images:,} images to {100 * best.accuracy:.0f}% " \
           f"with {best.distinct_images:,}" in text
    last = g8.iloc[-1]
    assert f"from {first.pe_border_contrast:.2f} with {first.distinct_images:,} images to " \
           f"{last.pe_border_contrast:.2f} with {last.distinct_images:,}" in text
    assert f"(at most {100 * g16.accuracy.max():.0f}% held out)" in text
