"""Attention patterns inline in a notebook: the grid and the single view in the cell's output, with no server and
no network (the site's own pages and the data in one document, standalone.py, shown in a srcdoc iframe).

    from attention_lens.notebook import attention_view
    attention_view(model, "When Mary and John went to the store, John gave a drink to")   # compute, render, show
    attention_view("demo", save_path="attn_data", prompts="repeated", heads="L1H*")     # a data dir's prompts
"""
import html
import json
import tempfile
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlencode

from attention_lens import lens, standalone


class AttentionView:
    """What a notebook shows (_repr_html_: an iframe holding the whole document, as JupyterLab, classic Notebook
    and VS Code render it); save() writes the same document as a file that opens on its own."""

    def __init__(self, document: str, height: int):
        self.document, self.height = document, height

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.document, quote=True)}" title="attention lens" '
                f'style="width: 100%; height: {self.height}px; border: 0"></iframe>')

    def save(self, path: Path | str) -> None:
        lens.write_atomic(Path(path), self.document)


def attention_view(model, texts: str | list[str] | None = None, *, save_path: Path | str | None = None,
                   prompts: str | list[str] | None = None, heads: str | None = None, layer: int | None = None,
                   head: int | None = None, cell: tuple[int, int] | None = None, figures: str = "*",
                   height: int = 900, **compute) -> AttentionView:
    """The grid (above) and the single view (below) of `texts` run through `model` (anything compute_activations()
    accepts, or a model name it loads), computed into `save_path` (default: a temporary dir, removed after) and
    rendered with `figures`; without texts, the `prompts` (hashes or a search) of model dir(s) `model` in the data
    dir `save_path`. `heads`: the grid's spec (with texts, only those are stored); `layer`, `head`: the single
    view's head (default: the first shown); `cell`: its pinned (query, key); `compute`: compute_activations()'s."""
    if texts is None:
        if save_path is None:
            raise lens.UserError("attention_view: give texts to compute, or save_path= a data dir to show")
        models = [model] if isinstance(model, str) else list(model)
        view = standalone.view_files(Path(save_path), models, prompts, heads)
        return view_of(view, layer, head, cell, height)
    texts = [texts] if isinstance(texts, str) else list(texts)
    with nullcontext(save_path) if save_path is not None else tempfile.TemporaryDirectory() as where:
        model_dir = compute_and_render(model, texts, Path(where), heads, figures, compute)
        view = standalone.view_files(Path(where), [model_dir], [lens.prompt_hash(t) for t in texts], heads)
    return view_of(view, layer, head, cell, height, prompt=lens.prompt_hash(texts[0]))


def compute_and_render(model, texts: list[str], save_path: Path, heads: str | None, figures: str,
                       compute: dict) -> str:
    """compute_activations() then render_figures(), as the command lines run them; returns the model dir."""
    from attention_lens import forward
    from attention_lens.compute_activations import compute_activations
    from attention_lens.render_figures import render_figures
    if isinstance(model, str):
        compute.setdefault("model_name", model)
        model = forward.load_model(model, forward.pick_device(compute.pop("device", None), None),
                                   compute.pop("dtype", "float32"))
    done = compute_activations(texts, model, save_path, heads=heads, progress=False, **compute)
    render_figures(save_path, [done["model_dir"]], figures, progress=False)
    return done["model_dir"]


def view_of(view: standalone.View, layer: int | None, head: int | None, cell: tuple[int, int] | None,
            height: int, prompt: str | None = None) -> AttentionView:
    """The grid (its controls folded) and the single view on `prompt` (default: the first) and the chosen head
    (default: the first the grid shows)."""
    model = view.models[0]
    if layer is None or head is None:
        cfg = json.loads(view.files[f"{model}/model_cfg.json"])
        layer, head = lens.parse_heads(view.heads or "L*H*", cfg["n_layers"], cfg["n_heads"])[0]
    params = {"model": model, "prompt": prompt or view.hashes[0], "layer": layer, "head": head}
    if cell is not None:
        params.update(q=cell[0], k=cell[1])
    panes = [{"url": standalone.grid_address(view, controls="hide"), "home": "index.html", "height": "40%"},
             {"url": f"single.html?{urlencode(params)}", "home": "single.html", "height": "60%"}]
    return AttentionView(standalone.view_document(view.files, panes), height)
