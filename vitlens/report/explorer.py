"""The report's attention explorer: every head's attention from any patch, for a few images.

:func:`explorer_data` captures the exact attention of a ViT on a few preprocessed images
(:func:`vitlens.capture_attention`) and keeps, for every layer, head and query patch, that query's
attention over the patch keys: ``[image, layer, head, query, key]``, the probabilities as the model
formed them (prefix-token columns left out, rows not renormalised). Each row is stored as uint8
codes with its own scale: ``value = code * scale / 255``, ``scale`` the row's maximum (float32), so
a stored value is within ``scale / 510`` of the captured one. :func:`write_explorer_data` writes it
as a script beside the page (``data/explorer.js``, setting ``window.VITLENS_EXPLORER``), which the
page's viewer reads without a server or network. Layers and heads are 0-based in the data and
shown from 1 in the viewer, as everywhere on the page.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["explorer_data", "write_explorer_data", "decode_rows", "viewer_html", "EXPLORER_JS", "QUANTISATION"]

EXPLORER_JS = "data/explorer.js"
QUANTISATION = ("uint8 per row: value = code * scale / 255, scale = the row's maximum; error at most "
                "scale / 510")


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _quantise(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows [..., key]`` -> ``(codes uint8 [..., key], scale float32 [...])``."""
    scale = rows.max(axis=-1).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    codes = np.clip(np.round(rows / safe * 255), 0, 255).astype(np.uint8)
    return codes, scale


def decode_rows(data: dict, image: int) -> np.ndarray:
    """The stored attention of one image back as float ``[layer, head, query, key]``."""
    L, H, P = data["num_layers"], data["num_heads"], data["num_patches"]
    entry = data["images"][image]
    codes = np.frombuffer(base64.b64decode(entry["codes"]), dtype=np.uint8).reshape(L, H, P, P)
    scale = np.asarray(entry["scale"], dtype=np.float64).reshape(L, H, P)
    return codes * scale[..., None] / 255.0


@torch.no_grad()
def explorer_data(model: nn.Module, images: torch.Tensor, shown: Sequence[np.ndarray], names: Sequence[str], *,
                  head_distance: np.ndarray, distance_images: int, model_name: str = "") -> dict:
    """The viewer's data for ``images`` (preprocessed ``[image, 3, height, width]``).

    Args:
        model: the ViT.
        images: its inputs, at most a few (every head of every layer is stored for each).
        shown: the same images for display, ``[height, width, 3]`` in [0, 1].
        names: one key per image.
        head_distance: ``[layer, head]`` mean attention distance (px) over the report's images.
        distance_images: how many images ``head_distance`` averages.
        model_name: shown in the viewer.
    """
    from ..capture.attention import capture_attention
    from ..models.layout import token_layout

    layout = token_layout(model, tuple(images.shape[-2:]))
    cols = layout.patch_slice
    device = next(model.parameters()).device
    with capture_attention(model) as cap:
        model(images.to(device))
    att = torch.stack([m[:, :, cols, cols].float().cpu() for m in cap.maps], 1).numpy()  # [image, layer, head, q, k]
    entries = []
    for i in range(att.shape[0]):
        codes, scale = _quantise(att[i])
        entries.append({"name": str(names[i]), "image": _png(shown[i]),
                        "codes": base64.b64encode(codes.tobytes()).decode(), "scale": scale.ravel().tolist()})
    gh, gw = layout.grid_size
    return {"model": model_name, "num_layers": int(att.shape[1]), "num_heads": int(att.shape[2]),
            "num_patches": int(att.shape[3]), "grid": [int(gh), int(gw)],
            "input_size": [int(v) for v in layout.input_size], "patch_stride": [float(v) for v in layout.patch_stride],
            "head_distance_px": np.asarray(head_distance, dtype=float).round(4).tolist(),
            "distance_images": int(distance_images), "quantisation": QUANTISATION,
            "values": "post-softmax attention from each patch query to each patch key; prefix-token columns "
                      "left out, rows not renormalised", "images": entries}


def write_explorer_data(out: Path, data: dict) -> Path:
    """Write ``data`` as ``out/data/explorer.js`` (a script the page loads from disk); returns its path."""
    from ..runtime.io import write_text

    return write_text(Path(out) / EXPLORER_JS, "window.VITLENS_EXPLORER = " + json.dumps(data) + ";\n")


_VIEWER = """
<div id="explorer" class="explorer">
<p>
<label>image <select id="ex-image"></select></label>
<label>layer <select id="ex-layer"></select></label>
<label>head <select id="ex-head"></select></label>
<span id="ex-query"></span>
</p>
<div style="display:flex;align-items:stretch;gap:6px">
<canvas id="ex-canvas" width="320" height="320" style="cursor:crosshair;border:1px solid #ddd"></canvas>
<canvas id="ex-bar" width="14" height="320" style="border:1px solid #ddd"></canvas>
<div style="display:flex;flex-direction:column;justify-content:space-between;font-size:12px">
<span id="ex-top"></span><span id="ex-bar-label" style="writing-mode:vertical-rl;color:#555">attention
weight from the query (this query's largest at the top)</span><span>0</span></div>
</div>
<p id="ex-stats" class="v"></p>
<pre id="ex-values" hidden></pre>
</div>
<script src="%(src)s"></script>
<script>
(function () {
  var D = window.VITLENS_EXPLORER, body = document.body;
  if (!D) { document.getElementById('ex-stats').textContent = 'explorer data missing: %(src)s';
            body.setAttribute('data-explorer', 'missing'); return; }
  var L = D.num_layers, H = D.num_heads, P = D.num_patches, gh = D.grid[0], gw = D.grid[1];
  var codes = D.images.map(function (e) {
    var s = atob(e.codes), a = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { a[i] = s.charCodeAt(i); }
    return a;
  });
  var pics = D.images.map(function (e) { var im = new Image(); im.src = e.image; return im; });
  var sel = {image: 0, layer: 0, head: 0, query: Math.floor(gh / 2) * gw + Math.floor(gw / 2)};
  var m = /explorer=(\\d+),(\\d+),(\\d+),(\\d+)/.exec(location.hash);
  if (m) { sel = {image: +m[1], layer: +m[2] - 1, head: +m[3] - 1, query: +m[4]}; }
  function fill(id, n, label) {
    var s = document.getElementById(id);
    for (var i = 0; i < n; i++) { var o = document.createElement('option'); o.value = i;
      o.textContent = label(i); s.appendChild(o); }
    return s;
  }
  var si = fill('ex-image', D.images.length, function (i) { return D.images[i].name; });
  var sl = fill('ex-layer', L, function (i) { return String(i + 1); });
  var sh = fill('ex-head', H, function (i) { return String(i + 1); });
  var canvas = document.getElementById('ex-canvas'), ctx = canvas.getContext('2d');
  // inferno, as in the report's rollout figures: dark for little attention, bright yellow for the most
  var STOPS = [[0, 0, 4], [27, 12, 65], [74, 12, 107], [120, 28, 109], [165, 44, 96], [207, 68, 70],
               [237, 105, 37], [251, 155, 6], [252, 255, 164]];
  function colour(t) {
    var x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
    return STOPS[i].map(function (c, j) { return Math.round(c + f * (STOPS[i + 1][j] - c)); });
  }
  (function () {  // the colour bar, bottom 0 to top the query's largest weight
    var bar = document.getElementById('ex-bar'), b = bar.getContext('2d');
    for (var y = 0; y < bar.height; y++) { var c = colour(1 - y / (bar.height - 1));
      b.fillStyle = 'rgb(' + c.join(',') + ')'; b.fillRect(0, y, bar.width, 1); }
  })();
  function row() {
    var e = D.images[sel.image], base = ((sel.layer * H + sel.head) * P + sel.query) * P;
    var scale = e.scale[(sel.layer * H + sel.head) * P + sel.query], out = [];
    for (var k = 0; k < P; k++) { out.push(codes[sel.image][base + k] * scale / 255); }
    return out;
  }
  function draw() {
    si.value = sel.image; sl.value = sel.layer; sh.value = sel.head;
    var v = row(), top = Math.max.apply(null, v) || 1, cw = canvas.width / gw, ch = canvas.height / gh;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    var pic = pics[sel.image];
    if (pic.complete) { ctx.drawImage(pic, 0, 0, canvas.width, canvas.height); } else { pic.onload = draw; }
    var best = 0, total = 0;
    for (var k = 0; k < P; k++) {  // opacity grows with the weight: the image shows where attention is low
      total += v[k]; if (v[k] > v[best]) { best = k; }
      var t = v[k] / top;
      ctx.fillStyle = 'rgba(' + colour(t).join(',') + ',' + (0.35 + 0.55 * t).toFixed(3) + ')';
      ctx.fillRect((k %% gw) * cw, Math.floor(k / gw) * ch, cw, ch);
    }
    document.getElementById('ex-top').textContent = top.toFixed(3);
    ctx.strokeStyle = '#56B4E9'; ctx.lineWidth = 3;
    ctx.strokeRect((sel.query %% gw) * cw + 1, Math.floor(sel.query / gw) * ch + 1, cw - 2, ch - 2);
    var q = 'query patch: row ' + (Math.floor(sel.query / gw) + 1) + ', column ' + (sel.query %% gw + 1);
    document.getElementById('ex-query').textContent = q + ' (click the image to choose another)';
    var dist = D.head_distance_px[sel.layer][sel.head];
    document.getElementById('ex-stats').textContent = 'layer ' + (sel.layer + 1) + ', head ' + (sel.head + 1) +
      ': mean attention distance ' + dist.toFixed(1) + ' px over ' + D.distance_images + ' images. From this ' +
      'query its largest weight is ' + v[best].toFixed(3) + ', on the patch in row ' + (Math.floor(best / gw) + 1) +
      ', column ' + (best %% gw + 1) + '; its weights on patches sum to ' + total.toFixed(3) +
      ' (the rest is on prefix tokens).';
    document.getElementById('ex-values').textContent = JSON.stringify({image: sel.image, layer: sel.layer,
      head: sel.head, query: sel.query, values: v});
    body.setAttribute('data-explorer', 'ready');
  }
  si.onchange = function () { sel.image = +si.value; draw(); };
  sl.onchange = function () { sel.layer = +sl.value; draw(); };
  sh.onchange = function () { sel.head = +sh.value; draw(); };
  canvas.onclick = function (ev) {
    var r = canvas.getBoundingClientRect();
    var j = Math.floor((ev.clientX - r.left) / r.width * gw), i = Math.floor((ev.clientY - r.top) / r.height * gh);
    sel.query = Math.min(gh - 1, Math.max(0, i)) * gw + Math.min(gw - 1, Math.max(0, j)); draw();
  };
  draw();
})();
</script>
"""


def viewer_html(src: str = EXPLORER_JS) -> str:
    """The viewer's HTML and script, reading the data script at ``src`` (relative to the page)."""
    return _VIEWER % {"src": src}
