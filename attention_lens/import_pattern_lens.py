"""Convert a pattern-lens data dir into ours, in place, then index it.

    python import_pattern_lens.py --save-path old_data
    python render_figures.py --save-path old_data && python serve.py --save-path old_data

Each prompt's activations (activations.npz or a stacked .npy) become patterns.bin, its per-head images
(L<l>/H<h>/<name>.png|svg|svgz) one pack per figure name, `pattern-lens.<name>`, its prompt.json ours (our
hash, BOS in the tokens); a prompt that fails is a warning and the others go on. docs/pattern-lens.md.
"""
import base64
import contextlib
import gzip
import re
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from attention_lens import datadir, lens, storage
from attention_lens.build_index import build_index

BOS_LABEL = "<bos>"  # pattern-lens stores tokens without the BOS its patterns include


def pattern_lens_prompts(save_path: Path) -> dict[str, list[Path]]:
    """{model dir: its prompt dirs holding pattern-lens activations (activations.npz or a stacked .npy)}."""
    found = {}
    for model in lens.model_dirs(save_path):
        dirs = sorted({p.parent for p in datadir.prompts_dir(save_path, model).glob("*/activations*.np[yz]")})
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


PATTERN_LENS_FIGURE = re.compile(r"L(\d+)/H(\d+)/([A-Za-z0-9_.-]+)\.(png|svg|svgz)")

IMPORTED_PACK = "pattern-lens.{}"  # a pack name no figure function can have (not an identifier): render keeps it


def pattern_lens_figures(old_dir: Path, n_layers: int, n_heads: int) -> dict[str, dict[tuple[int, int], Path]]:
    """pattern-lens's per-head images, L<l>/H<h>/<name>.<fmt>, as {name: {(layer, head): file}} (the first
    format of a name per head; files of heads the model lacks are not figures of it)."""
    found = {}
    for src in sorted(old_dir.glob("L*/H*/*")):
        m = PATTERN_LENS_FIGURE.fullmatch(src.relative_to(old_dir).as_posix())
        if m and src.is_file() and int(m[1]) < n_layers and int(m[2]) < n_heads:
            found.setdefault(m[3], {}).setdefault((int(m[1]), int(m[2])), src)
    return found


EMBEDDED_PNG = re.compile(rb"data:image/png;base64,([A-Za-z0-9+/=\s]+)")


def figure_png(src: Path) -> bytes:
    """A pattern-lens figure file as the PNG our packs hold: a .png as it is; an .svg or .svgz, the one PNG it
    embeds (pattern-lens draws its figures so), and nothing else of it: a script an SVG carries never reaches
    the site."""
    data = src.read_bytes()
    if src.suffix != ".png":
        try:
            svg = gzip.decompress(data) if src.suffix == ".svgz" else data
        except (OSError, EOFError) as e:
            raise lens.UserError(f"{src}: unreadable ({e})") from None
        found = EMBEDDED_PNG.findall(svg)
        if len(found) != 1:
            raise lens.UserError(f"{src}: an SVG without one embedded PNG; packs hold PNG only")
        data = base64.b64decode(b"".join(found[0].split()))
    if not data.startswith(storage.PNG_SIGNATURE):
        raise lens.UserError(f"{src}: not a PNG image; packs hold PNG only")
    return data


def write_imported_packs(save_path: Path, model: str, phash: str, figures: dict, cfg: dict) -> None:
    """One pack per pattern-lens figure name, pattern-lens.<name>.pack, of each head's PNG (figure_png)."""
    for name, files in figures.items():
        pack = storage.PackWriter(datadir.figure_pack_path(save_path, model, phash, IMPORTED_PACK.format(name)),
                                  cfg["n_layers"], cfg["n_heads"])
        try:
            for (layer, head), src in sorted(files.items()):
                pack.add(layer, head, figure_png(src))
            pack.close()
        finally:
            pack.abort()


def import_prompt(save_path: Path, model: str, old_dir: Path, cfg: dict) -> None:
    """Convert one pattern-lens prompt dir into ours (patterns.bin, figure packs, prompt.json last)."""
    activations = sorted(old_dir.glob("activations*.np[yz]"))
    patterns = read_activations(activations[0], cfg["n_layers"], cfg["n_heads"])
    old_json = datadir.prompt_json_path(save_path, model, old_dir.name)
    info = converted_prompt(old_json, patterns.shape[-1])
    figures = pattern_lens_figures(old_dir, cfg["n_layers"], cfg["n_heads"])
    lens.write_atomic(datadir.patterns_path(save_path, model, info["hash"]), storage.encode_patterns(patterns))
    write_imported_packs(save_path, model, info["hash"], figures, cfg)
    lens.write_json(datadir.prompt_json_path(save_path, model, info["hash"]), info)
    for path in [*activations, old_json, *(src for files in figures.values() for src in files.values())]:
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
        cfg = lens.read_json(datadir.model_cfg_path(save_path, model))
        if not all(isinstance(cfg.get(k), int) for k in ("n_layers", "n_heads")):
            raise lens.UserError(f"{datadir.model_cfg_path(save_path, model)}: no n_layers and n_heads")
        for old_dir in dirs:
            try:
                import_prompt(save_path, model, old_dir, cfg)
                imported += 1
            except (lens.UserError, OSError) as e:
                print(f"import_pattern_lens.py: warning: {e}; prompt not imported", file=sys.stderr)
                failed += 1
        if "model_dir" not in cfg:  # pattern-lens's config: keep what ours holds
            lens.write_json(datadir.model_cfg_path(save_path, model), {
                "model_name": cfg.get("model_name", model), "model_dir": model,
                **{k: cfg.get(k) for k in lens.MODEL_CFG_KEYS}, "imported_from": "pattern-lens"})
    print(f"import_pattern_lens.py: imported {imported} pattern-lens prompt(s) of {len(found)} model(s)"
          + (f"; {failed} failed (see the warnings)" if failed else ""))
    if not imported:
        raise lens.UserError(f"{save_path}: none of the {failed} pattern-lens prompt(s) could be imported")
    return imported


def main() -> None:
    parser = lens.script_parser(__doc__)
    parser.add_argument("--save-path", type=lens.save_path_arg, default=lens.DEFAULT_SAVE_PATH,
                        help="the pattern-lens data dir, converted in place (default: %(default)s)")
    parser.add_argument("--figures-dir", type=Path, help="figure plug-ins to index (default: figures/)")
    args = parser.parse_args()
    import_pattern_lens(args.save_path)
    build_index(args.save_path, args.figures_dir)


if __name__ == "__main__":
    lens.run_main(main, "each prompt is converted whole or not at all; run the same command again")
