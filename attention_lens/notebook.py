"""Attention patterns inline in a notebook: the grid and the single view in the cell's output, with no server and
no network (the site's own pages and the data in one document, standalone.py, shown in a srcdoc iframe).

    from attention_lens.notebook import attention_view
    attention_view(model, "When Mary and John went to the store, John gave a drink to")   # compute, render, show
    attention_view("demo", save_path="attn_data", prompts="repeated", heads="L1H*")     # a data dir's prompts

Untrusted notebooks (a colleague's copy, one run by nbconvert) and GitHub's preview strip the iframe: the same
output holds a static picture of the grid, which the live view covers where it runs.
"""
import base64
import html
import json
import math
import struct
import tempfile
import warnings
import zlib
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from attention_lens import datadir, lens, standalone, storage

TRUST = ("trust the notebook (Trust Notebook in JupyterLab's command palette or Notebook 7's File menu; or "
         "jupyter trust NAME.ipynb, then open it again) or save the view as a file: view.save(\"view.html\")")
TILE_PX = 128  # a tile's largest side: longer prompts are drawn one pixel per block of cells (their max)
PICTURE_COLUMNS = 12  # the picture is as wide as this many tiles of TILE_PX at most: more heads get smaller tiles
GAP_PX = 4
GAP_RGB = (232, 232, 232)
GRID_COLUMNS = (4, 12)  # the grid pane's columns: a layer per row, one or two heads no wider than a quarter
GRID_ROWS = 12  # the grid pane is as tall as this many rows of tiles at most; more scroll inside it
# The grid page's layout (site/style.css, index.html with its controls folded), measured in Debian's chromium: the
# bar and summary line above the tiles (81 px), the grid's padding, a tile's caption and border (37 px), the gap
# between tiles; the bar and each caption get a few px more for other fonts.
GRID_TOP, GRID_PAD_X, GRID_PAD_Y, CAPTION, TILE_GAP = 86, 14, 10, 39, 8


class AttentionView:
    """What a notebook shows: an iframe holding the whole document (where the output is trusted: JupyterLab,
    Notebook and VS Code run it) on top of a static PNG of the grid and how to see it live (what an untrusted
    notebook or GitHub's preview keeps); save() writes the document as a file that opens on its own."""

    def __init__(self, document: str, height: str, picture: bytes, about: str, pictured: str):
        self.document, self.height = document, height  # height: CSS, of the iframe
        self.picture, self.about, self.pictured = picture, about, pictured  # pictured: what the PNG shows

    def __repr__(self) -> str:
        return f"<attention view of {self.about}: live where the notebook is trusted; else {TRUST}>"

    def _repr_html_(self) -> str:
        """The line and the picture in the flow, the iframe in the same grid cell over them (opaque, as tall as
        they are or taller): a sanitizer that strips the iframe leaves them (JupyterLab's also drops grid-area and
        max-height, so the picture shows whole)."""
        picture = base64.b64encode(self.picture).decode("ascii")
        return (f'<div style="display: grid; container-type: inline-size">'
                f'<div style="grid-area: 1 / 1; max-height: {self.height}; overflow: hidden">'
                f'<p style="margin: 0 0 6px">A static picture of {html.escape(self.pictured)} (layers as rows, heads '
                f'as columns): the live attention view shows where the notebook is trusted. To see it, '
                f'{html.escape(TRUST)}.</p>'
                f'<img src="data:image/png;base64,{picture}" alt="attention patterns of {html.escape(self.pictured)}"'
                f' style="max-width: 100%"></div>'
                f'<iframe srcdoc="{html.escape(self.document, quote=True)}" title="attention lens" '
                f'style="grid-area: 1 / 1; width: 100%; height: {self.height}; border: 0; background: #fff">'
                f'</iframe></div>')

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        """text/html (the live view over the picture), image/png (the picture) and text/plain (the repr), for
        each front end to pick from; IPython applies include and exclude."""
        return {"text/html": self._repr_html_(), "image/png": base64.b64encode(self.picture).decode("ascii"),
                "text/plain": repr(self)}

    def save(self, path: Path | str) -> None:
        lens.write_atomic(Path(path), self.document)


def attention_view(model, texts: str | list[str] | None = None, *, save_path: Path | str | None = None,
                   prompts: str | list[str] | None = None, heads: str | None = None, layer: int | None = None,
                   head: int | None = None, cell: tuple[int, int] | None = None, figures: str = "*",
                   height: int = 540, **compute) -> AttentionView:
    """The grid (above, as tall as its heads need) and the single view (below, `height` px) of `texts` run through
    `model` (anything compute_activations() accepts, or a model name it loads), computed into `save_path` (default:
    a temporary dir, removed after) and rendered with `figures`; without texts, the `prompts` (hashes or a search)
    of model dir(s) `model` in the data dir `save_path`. `heads`: the grid's spec (with texts, only those are
    stored); `layer`, `head`: the single view's head (default: the first shown); `cell`: its pinned (query, key);
    `compute`: compute_activations()'s."""
    if texts is None:
        if save_path is None:
            raise lens.UserError("attention_view: give texts to compute, or save_path= a data dir to show")
        models = [model] if isinstance(model, str) else list(model)
        view = standalone.view_files(Path(save_path), models, prompts, heads)
        return view_of(view, Path(save_path), layer=layer, head=head, cell=cell, height=height)
    texts = [texts] if isinstance(texts, str) else list(texts)
    with nullcontext(save_path) if save_path is not None else tempfile.TemporaryDirectory() as where:
        model_dir = compute_and_render(model, texts, Path(where), heads, figures, compute)
        view = standalone.view_files(Path(where), [model_dir], [lens.prompt_hash(t) for t in texts], heads)
        return view_of(view, Path(where), layer=layer, head=head, cell=cell, height=height,
                       prompt=lens.prompt_hash(texts[0]))


def compute_and_render(model, texts: list[str], save_path: Path, heads: str | None, figures: str,
                       compute: dict) -> str:
    """compute_activations() then render_figures(), as the command lines run them; returns the model dir."""
    from attention_lens.compute_activations import compute_activations
    from attention_lens.render_figures import render_figures
    if isinstance(model, str):
        compute.setdefault("model_name", model)
        model = load_quietly(model, compute.pop("device", None), compute.pop("dtype", "float32"))
    done = compute_activations(texts, model, save_path, heads=heads, progress=False, **compute)
    render_figures(save_path, [done["model_dir"]], figures, progress=False)
    return done["model_dir"]


def load_quietly(name: str, device: str | None, dtype: str):
    """forward.load_model without the progress bars transformers draws and the warning tqdm gives where ipywidgets
    is missing: in a cell they stand above the view, saying nothing (errors still raise)."""
    with warnings.catch_warnings():
        from tqdm import TqdmWarning
        warnings.simplefilter("ignore", TqdmWarning)
        from transformers.utils import logging as transformers_logging

        from attention_lens import forward
        was_on = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            return forward.load_model(name, forward.pick_device(device, None), dtype)
        finally:
            if was_on:
                transformers_logging.enable_progress_bar()


def view_of(view: standalone.View, save_path: Path, *, layer: int | None, head: int | None,
            cell: tuple[int, int] | None, height: int, prompt: str | None = None) -> AttentionView:
    """The grid (its controls folded, a layer per row, tall enough for its heads) and the single view on `prompt`
    (default: the first) and the chosen head (default: the first the grid shows), over the picture of that
    prompt's grid (read from `save_path`)."""
    model, prompt = view.models[0], prompt or view.hashes[0]
    cfg = json.loads(view.files[f"{model}/model_cfg.json"])
    shown = lens.parse_heads(view.heads or "L*H*", cfg["n_layers"], cfg["n_heads"])
    if layer is None or head is None:
        layer, head = shown[0]
    params = {"model": model, "prompt": prompt, "layer": layer, "head": head}
    if cell is not None:
        params.update(q=cell[0], k=cell[1])
    cols = min(GRID_COLUMNS[1], max(GRID_COLUMNS[0], *Counter(l for l, _ in shown).values()))
    rows = min(GRID_ROWS, math.ceil(len(shown) / cols))
    panes = [{"url": standalone.grid_address(view, controls="hide", cols=str(cols)), "home": "index.html",
              "height": grid_height(rows, cols, "vw")},
             {"url": f"single.html?{urlencode(params)}", "home": "single.html", "height": f"{height}px"}]
    text = lens.read_json(datadir.prompt_json_path(save_path, model, prompt))["text"]
    heads = f"heads {view.heads or 'L*H*'} ({len(shown)})"
    about = f"{', '.join(view.models)}, {len(view.hashes)} prompt{'s' * (len(view.hashes) != 1)}, {heads}"
    pictured = f'{model}\'s {heads} on "{one_line(text)}"'
    return AttentionView(standalone.view_document(view.files, panes), grid_height(rows, cols, "cqw", height),
                         grid_picture(save_path, model, prompt, shown), about, pictured)


def grid_height(rows: int, cols: int, unit: str, more: int = 0) -> str:
    """The CSS height of `rows` rows of `cols` square tiles sharing the width (100 `unit`: vw inside the document,
    cqw of the output's container outside it) on the grid page, plus `more` px."""
    fixed = GRID_TOP + 2 * GRID_PAD_Y + rows * (CAPTION + TILE_GAP) - TILE_GAP + more
    wrapped = f"clamp(0px, 620px - 100{unit}, 24px)"  # the bar is two lines high below about 600 px
    return (f"calc({fixed}px + {rows / cols:.6g} * (100{unit} - {2 * GRID_PAD_X + (cols - 1) * TILE_GAP}px) "
            f"+ {wrapped})")


def one_line(text: str, most: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[:most - 1] + "\u2026"


def grid_picture(save_path: Path, model: str, phash: str, heads: list[tuple[int, int]]) -> bytes:
    """A PNG of a prompt's stored patterns of `heads` (those not stored left blank): its layers as rows, its heads
    as columns, each tile the pattern in viridis at TILE_PX or less, with a light gap."""
    layers, columns = sorted({l for l, _ in heads}), sorted({h for _, h in heads})
    path = datadir.patterns_path(save_path, model, phash)
    patterns = storage.Patterns(path) if path.is_file() else None  # None: --patterns stored none of this prompt
    most = max(16, TILE_PX * PICTURE_COLUMNS // max(PICTURE_COLUMNS, len(columns)))
    n_tokens = patterns.n_tokens if patterns else most
    scale, block = tile_scale(n_tokens, most)
    tile = math.ceil(n_tokens / block) * scale
    rgb = np.empty((GAP_PX + len(layers) * (tile + GAP_PX), GAP_PX + len(columns) * (tile + GAP_PX), 3), np.uint8)
    rgb[:] = GAP_RGB
    viridis = lens.colormap_table("viridis")
    for l, h in heads:
        if patterns and patterns.stored(l, h):
            y, x = (GAP_PX + i * (tile + GAP_PX) for i in (layers.index(l), columns.index(h)))
            indices = lens.quantize(block_max(patterns.head(l, h), block))
            rgb[y:y + tile, x:x + tile] = viridis[indices.repeat(scale, 0).repeat(scale, 1)]
    return rgb_as_png(rgb)


def tile_scale(n_tokens: int, most: int) -> tuple[int, int]:
    """(scale, block) drawing n_tokens x n_tokens cells in at most `most` px: each cell `scale` px wide, or (block
    > 1) one px per block x block cells."""
    if n_tokens > most:
        return 1, math.ceil(n_tokens / most)
    return most // n_tokens, 1


def block_max(matrix: np.ndarray, block: int) -> np.ndarray:
    """The largest value of each block x block square (the last ones padded with zeros): a sparse pattern's few
    strong cells stay visible where a mean would fade them."""
    if block == 1:
        return matrix
    n = math.ceil(len(matrix) / block)
    padded = np.zeros((n * block, n * block), matrix.dtype)
    padded[:len(matrix), :len(matrix)] = matrix
    return padded.reshape(n, block, n, block).max(axis=(1, 3))


def rgb_as_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of a [height, width, 3] uint8 array (filter None: rows repeat, which zlib finds)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)
    return (storage.PNG_SIGNATURE + lens.png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + lens.png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + lens.png_chunk(b"IEND", b""))
