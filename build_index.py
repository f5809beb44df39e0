"""Write the indexes the site reads and copy the site next to the data.

    python build_index.py                    # for attn_data/
    python build_index.py --save-path DIR
    python build_index.py --import-pattern-lens --save-path DIR   # convert a pattern-lens data dir first

Writes models.jsonl (every <model>/model_cfg.json), <model>/prompts.jsonl (every finished
prompt.json, sorted by hash), figures.jsonl (the figure registry of the figures dir that
render_figures.py last rendered with, else figures/), colormaps.json (the tables the images
use, for the site's legends) and copies site/ into the data dir: it alone writes what the site
reads about figures. It only reads what is on disk, so it is idempotent and merges the outputs
of shards run on several machines once they are copied into one data dir.
compute_activations.py and render_figures.py run it when they finish.
"""
import contextlib
import os
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

import lens

SITE_DIR = Path(__file__).resolve().parent / "site"


def prompt_records(save_path: Path, model: str) -> tuple[list[dict], int]:
    """Every finished prompt of a model, sorted by hash, and how many were left out (a warning each) as unreadable."""
    records, unreadable = [], 0
    for h in lens.finished_prompts(save_path, model):
        try:
            records.append(lens.read_json(lens.prompt_json_path(save_path, model, h)))
        except lens.UserError as e:  # one bad prompt must not hide the others from the site
            print(f"build_index.py: warning: {e}; prompt left out of the index", file=sys.stderr)
            unreadable += 1
    return records, unreadable


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file alone, so its mtime (and browser caches) stay valid."""
    if not (path.is_file() and path.read_bytes() == data):
        lens.write_atomic(path, data)


def copy_site(save_path: Path) -> None:
    """Copy site/ (pages, scripts, styles) into the data dir, which serve.py serves as is."""
    for src in sorted(SITE_DIR.rglob("*")):
        if src.is_file() and not src.name.startswith("."):
            write_if_changed(Path(save_path) / src.relative_to(SITE_DIR), src.read_bytes())


def rendered_figures_dir(save_path: Path) -> Path:
    """The figures dir render_figures.py last rendered with (figures/ before any render, or if it is gone)."""
    record = lens.render_record_path(save_path)
    if not record.exists():
        return lens.FIGURES_DIR
    figures_dir = Path(lens.read_json(record).get("figures_dir", lens.FIGURES_DIR))
    if not figures_dir.is_dir():
        print(f"build_index.py: warning: {figures_dir} (rendered with, says {record}) is gone; "
              f"indexing {lens.FIGURES_DIR} (pass --figures-dir to choose)", file=sys.stderr)
        return lens.FIGURES_DIR
    return figures_dir


def colormaps_json() -> bytes:
    """{name: ["#rrggbb" x 256]} for the site's legends: the same tables the images use."""
    return lens.json_bytes({name: ["#" + bytes(rgb).hex() for rgb in lens.colormap_table(name)]
                            for name in lens.COLORMAPS})


def build_index(save_path: Path, figures_dir: Path | None = None) -> None:
    """Rebuild models.jsonl, each model's prompts.jsonl, figures.jsonl and colormaps.json, and copy the site."""
    save_path = lens.require_data_dir(save_path)
    names = lens.model_dirs(save_path)
    if not names:
        raise lens.UserError(f"{save_path}: no models (no <model>/model_cfg.json); run compute_activations.py first")
    models, n_prompts, n_unreadable = [], 0, 0
    for name in names:
        cfg = lens.read_json(lens.model_cfg_path(save_path, name))
        prompts, unreadable = prompt_records(save_path, name)
        write_if_changed(lens.prompts_path(save_path, name), lens.jsonl_bytes(prompts))
        models.append({**cfg, "model_dir": name, "n_prompts": len(prompts)})
        n_prompts += len(prompts)
        n_unreadable += unreadable
    write_if_changed(lens.models_path(save_path), lens.jsonl_bytes(models))

    figures, errors = lens.load_figures(figures_dir or rendered_figures_dir(save_path))
    for error in errors:
        print(f"build_index.py: warning: {error}", file=sys.stderr)
    write_if_changed(lens.figures_path(save_path), lens.jsonl_bytes(lens.figure_records(figures)))
    write_if_changed(lens.colormaps_path(save_path), colormaps_json())
    copy_site(save_path)
    print(f"build_index.py: {len(models)} model(s), {n_prompts} prompt(s), {len(figures)} figure function(s)"
          f" indexed in {save_path}" + (f" ({n_unreadable} unreadable prompt(s) left out, see the warnings)"
                                         if n_unreadable else "")
          + f"; view with: python serve.py --save-path {save_path}")


# ---- Importing a pattern-lens data dir ----------------------------------------------------

# model_cfg.json keys we keep: TransformerLens's config names, which pattern-lens stores with all the others
MODEL_CFG_KEYS = ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab", "act_fn",
                  "default_prepend_bos", "positional_embedding_type", "original_architecture")
BOS_LABEL = "<bos>"  # pattern-lens stores tokens without the BOS its patterns include


def pattern_lens_prompts(save_path: Path) -> dict[str, list[Path]]:
    """{model dir: its prompt dirs holding pattern-lens activations (activations.npz or a stacked .npy)}."""
    found = {}
    for model in lens.model_dirs(save_path):
        dirs = sorted({p.parent for p in lens.prompts_dir(save_path, model).glob("*/activations*.np[yz]")})
        if dirs:
            found[model] = dirs
    return found


def load_activations(path: Path, n_layers: int) -> np.ndarray:
    """An npz (blocks.{l}.attn.hook_pattern, [1, heads, n, n] each) or a stacked npy as [n_layers, heads, n, n]."""
    if path.suffix == ".npy":
        patterns = np.load(path, mmap_mode="r")
        return patterns.reshape(patterns.shape[-4:]) if patterns.ndim == 5 else patterns
    with np.load(path) as npz:  # one layer decompressed at a time, straight into the result
        shape = npz["blocks.0.attn.hook_pattern"].shape[-3:]
        patterns = np.empty((n_layers, *shape), np.float32)
        for l in range(n_layers):
            patterns[l] = npz[f"blocks.{l}.attn.hook_pattern"].reshape(shape)
    return patterns


def read_activations(path: Path, n_layers: int, n_heads: int) -> np.ndarray:
    """A pattern-lens prompt's float32 [n_layers, n_heads, n, n] patterns; a UserError naming the file if unusable."""
    try:
        patterns = load_activations(path, n_layers)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise lens.UserError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if patterns.ndim != 4 or patterns.shape[:2] != (n_layers, n_heads) or patterns.shape[2] != patterns.shape[3]:
        raise lens.UserError(f"{path}: shape {patterns.shape}, expected [{n_layers}, {n_heads}, n, n]")
    if not np.isfinite(patterns).all():
        raise lens.UserError(f"{path}: holds NaN or infinite values")
    return patterns


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE: the printable character each byte is written as inside a token string."""
    printable = [*range(0x21, 0x7f), *range(0xa1, 0xad), *range(0xae, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def readable_tokens(tokens: list[str], text: str) -> list[str]:
    """Byte-level BPE token strings ("\u0120world") decoded as our prompt.json has them (" world"),
    only when the decoded tokens spell the text exactly; other tokenizers' strings are kept."""
    alphabet = _byte_level_alphabet()
    if not all(c in alphabet for t in tokens for c in t):
        return tokens
    raw = [bytes(alphabet[c] for c in t) for t in tokens]
    if b"".join(raw) != text.encode("utf-8"):
        return tokens
    return [r.decode("utf-8", errors="replace") for r in raw]


def converted_prompt(path: Path, n: int) -> dict:
    """Our prompt.json from pattern-lens's: our hash, BOS in tokens and n_tokens, every other field kept."""
    old = lens.read_json(path)
    if not isinstance(old.get("text"), str):
        raise lens.UserError(f"{path}: no text")
    tokens = readable_tokens(old.get("tokens") or [], old["text"])
    if len(tokens) == n - 1:
        tokens = [BOS_LABEL] + tokens
    if len(tokens) != n:
        raise lens.UserError(f"{path}: {len(tokens)} tokens, but the patterns have {n}")
    rest = {k: v for k, v in old.items() if k not in ("text", "hash", "tokens", "n_tokens", "meta")}
    return {"text": old["text"], "hash": lens.prompt_hash(old["text"]), "tokens": tokens, "n_tokens": n,
            "meta": old.get("meta", {}), **rest, "pattern_lens_hash": old.get("hash")}


def import_prompt(save_path: Path, model: str, old_dir: Path, cfg: dict) -> None:
    """Convert one pattern-lens prompt dir into ours (patterns.bin, prompt.json last), figures moved along."""
    activations = sorted(old_dir.glob("activations*.np[yz]"))
    patterns = read_activations(activations[0], cfg["n_layers"], cfg["n_heads"])
    old_json = lens.prompt_json_path(save_path, model, old_dir.name)
    info = converted_prompt(old_json, patterns.shape[-1])
    new_dir = lens.prompt_dir(save_path, model, info["hash"])
    lens.write_atomic(lens.patterns_path(save_path, model, info["hash"]), lens.encode_patterns(patterns))
    for src in sorted(old_dir.glob("L*/H*/*")):
        if src.is_file():
            (new_dir / src.parent.relative_to(old_dir)).mkdir(parents=True, exist_ok=True)
            os.replace(src, new_dir / src.relative_to(old_dir))
    lens.write_json(lens.prompt_json_path(save_path, model, info["hash"]), info)
    for path in [*activations, old_json]:
        path.unlink()
    for d in [*sorted(old_dir.glob("L*/H*")), *sorted(old_dir.glob("L*")), old_dir]:
        with contextlib.suppress(OSError):  # a dir still holding files we do not know stays
            d.rmdir()


def import_pattern_lens(save_path: Path) -> int:
    """Convert a pattern-lens data dir into ours in place; a prompt that fails is a warning. Returns the count."""
    save_path = Path(save_path)
    found = pattern_lens_prompts(save_path) if save_path.is_dir() else {}
    if not found:
        raise lens.UserError(f"{save_path}: no pattern-lens prompts (<model>/prompts/<hash>/activations.npz)")
    imported, failed = 0, 0
    for model, dirs in found.items():
        cfg = lens.read_json(lens.model_cfg_path(save_path, model))
        if not all(isinstance(cfg.get(k), int) for k in ("n_layers", "n_heads")):
            raise lens.UserError(f"{lens.model_cfg_path(save_path, model)}: no n_layers and n_heads")
        for old_dir in dirs:
            try:
                import_prompt(save_path, model, old_dir, cfg)
                imported += 1
            except (lens.UserError, OSError) as e:
                print(f"build_index.py: warning: {e}; prompt not imported", file=sys.stderr)
                failed += 1
        if "model_dir" not in cfg:  # pattern-lens's config: keep what ours holds
            lens.write_json(lens.model_cfg_path(save_path, model), {
                "model_name": cfg.get("model_name", model), "model_dir": model,
                **{k: cfg.get(k) for k in MODEL_CFG_KEYS}, "imported_from": "pattern-lens"})
    print(f"build_index.py: imported {imported} pattern-lens prompt(s) of {len(found)} model(s)"
          + (f"; {failed} failed (see the warnings)" if failed else ""))
    if not imported:
        raise lens.UserError(f"{save_path}: none of the {failed} pattern-lens prompt(s) could be imported")
    return imported


def main() -> None:
    parser = lens.script_parser(__doc__)
    parser.add_argument("--save-path", type=Path, default=lens.DEFAULT_SAVE_PATH,
                        help="data dir (default: %(default)s)")
    parser.add_argument("--figures-dir", type=Path,
                        help="figure plug-ins to index (default: the dir render_figures.py last rendered with, "
                        "else figures/ next to this script)")
    parser.add_argument("--import-pattern-lens", action="store_true",
                        help="first convert pattern-lens prompts (activations.npz/.npy) into ours, in place")
    args = parser.parse_args()
    if args.import_pattern_lens:
        import_pattern_lens(args.save_path)
    build_index(args.save_path, args.figures_dir)


if __name__ == "__main__":
    lens.run_main(main, "each file is written whole or not at all; run the same command again")
