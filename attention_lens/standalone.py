"""Self-contained views: chosen models, prompts and heads of a data dir, and the site itself, in one HTML document
that needs no server and no network (site/embed.js serves every file from memory).

    python standalone.py view.html                                   # every model, prompt and head
    python standalone.py view.html --models demo --prompts repeated --heads 'L1H*'
    from attention_lens.notebook import attention_view      # the same document, shown in a notebook cell

`build_index.py --html OUT.html` is an alias of this script.

The data is a data dir of just the chosen prompts (their prompt index and statistics tables rebuilt by
build_index.py's own writers), so every page reads it exactly as it reads a served one.
"""
import base64
import dataclasses
import json
import re
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from attention_lens import build_index, datadir, lens, prompt_index, storage

TEXT_SUFFIXES = (".html", ".js", ".css", ".json", ".jsonl")
HASH = re.compile(r"[0-9a-f]{6,}")
HASH_TERM = re.compile(r"[0-9a-f]{6,16}")  # site/data.js's HASH_TERM: a word that may start a hash


@dataclasses.dataclass
class View:
    files: dict[str, bytes]  # {path: bytes}: the site's files and a data dir of the chosen prompts
    models: list[str]  # model dirs
    hashes: list[str]  # the chosen prompts, of every model, in hash order
    heads: str | None  # the grid's spec; None: all


def view_files(save_path: Path, models: list[str] | None = None, prompts: str | list[str] | None = None,
               heads: str | None = None) -> View:
    """The site's files and a data dir of these models (default: all; those without a chosen prompt are left
    out), prompts (hashes or a search, as the grid's; default: all) and heads (a spec; default: all)."""
    save_path = lens.require_data_dir(save_path)
    figures = lens.load_figures_or_warn(build_index.rendered_figures_dir(save_path))
    names = chosen_models(save_path, models)
    with tempfile.TemporaryDirectory() as tmp:
        chosen = {name: write_model(save_path, Path(tmp), name, prompts, heads, figures) for name in names}
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    chosen = {name: hashes for name, hashes in chosen.items() if hashes}
    if not chosen:
        raise lens.UserError(f"--prompts {prompt_spec(prompts)}: no prompt of {', '.join(names)} matches")
    rows = [{**shareable_cfg(lens.read_model_cfg(save_path, name)), "model_dir": name, "n_prompts": len(hashes)}
            for name, hashes in chosen.items()]
    for name in chosen:  # the kinds, as measured in the data dir, with only the view's models' heads as neighbours
        kinds_of = datadir.heads_json_path(save_path, name)
        if kinds_of.is_file():
            path = datadir.heads_json_path(Path(), name).as_posix()
            files[path] = view_heads_json(kinds_of.read_bytes(), set(chosen))
    files[datadir.models_path(Path()).as_posix()] = lens.jsonl_bytes(rows)
    files[datadir.figures_path(Path()).as_posix()] = lens.jsonl_bytes(build_index.figure_records(figures))
    files[datadir.colormaps_path(Path()).as_posix()] = build_index.colormaps_json()
    files.update({p.name: p.read_bytes() for p in sorted(lens.SITE_DIR.iterdir())
                  if p.is_file() and not p.name.startswith(".")})
    return View(files, list(chosen), sorted(set().union(*chosen.values())), heads)


def view_heads_json(data: bytes, models: set[str]) -> bytes:
    """A model's heads.json for a view of `models`: each head's nearest heads and best matches only among them
    (the others are not in the file)."""
    info = json.loads(data)
    for row in info["heads"]:
        for head in row:
            head["nearest"] = [n for n in head.get("nearest", []) if n[0] in models]
            head["best"] = {m: b for m, b in head.get("best", {}).items() if m in models}
    return json.dumps(info, ensure_ascii=False, separators=(",", ":")).encode()


def write_model(src: Path, dst: Path, name: str, prompts: str | list[str] | None, heads: str | None,
                figures: dict[str, lens.Figure]) -> list[str]:
    """A model's chosen prompts into the view's data dir `dst`, with their prompt index and statistics tables
    (build_index.py's writers); returns their hashes (none: nothing written)."""
    cfg = lens.read_model_cfg(src, name)
    parts = storage.read_parts(src, name)
    chosen = chosen_records(prompt_index.prompt_index_records(src, name, parts), prompts)
    if not chosen:
        return []
    kept = lens.parse_heads(heads, cfg["n_layers"], cfg["n_heads"]) if heads else None
    for record in chosen:
        if record["stored"]:
            copy_prompt(src, dst, name, record["hash"], cfg, kept)
    hashes = [r["hash"] for r in chosen]
    build_index.index_model(dst, name, cfg, figures, [part_of(p, set(hashes)) for p in parts], remember=False)
    lens.write_json(datadir.model_cfg_path(dst, name), shareable_cfg(cfg))
    return hashes


LOCAL_PATH = re.compile(r"(?<![\w.~])(?:~|/[^/\s\"']+)(?:/[^/\s\"']+)*/([^/\s\"']+)")


def shareable_cfg(cfg: dict) -> dict:
    """model_cfg.json as a shared file should hold it: a model named by a local checkpoint path is named by its
    dir instead (the path says where the checkpoint lies on this machine)."""
    name = cfg.get("model_name") or ""
    return {**cfg, "model_name": cfg["model_dir"]} if name.startswith(("/", "~", ".")) and "model_dir" in cfg else cfg


def without_local_paths(errors: bytes) -> bytes:
    """An errors.json with every absolute path in its tracebacks cut to the file's name."""
    return lens.json_bytes({k: LOCAL_PATH.sub(r"\1", v) for k, v in json.loads(errors).items()})


def grid_address(view: View, max_prompts: int = 100, **more: str) -> str:
    """The grid on the view's models, heads and (its first max_prompts) prompts; `more`: other grid parameters."""
    params = {"models": ",".join(view.models), "heads": view.heads or "",
              "prompts": ",".join(view.hashes[:max_prompts]), **more}
    return "index.html?" + urlencode({k: v for k, v in params.items() if v}, safe=",*")


def write_html(save_path: Path, out: Path, models: list[str] | None, prompts: str | None, heads: str | None,
               max_mb: float) -> None:
    """The view as one file, its size printed first; refused over max_mb."""
    if Path(out).is_dir():
        raise lens.UserError(f"{out}: a directory; name the file to write, e.g. {Path(out) / 'view.html'}")
    view = view_files(save_path, models, prompts, heads)
    html = view_document(view.files, [{"url": grid_address(view), "home": "index.html", "height": "100%"}]).encode()
    mb = len(html) / 1e6
    print(f"standalone.py: {out}: {mb:.1f} MB ({len(view.models)} model(s), {len(view.hashes)} prompt(s), "
          f"heads {heads or 'all'})")
    if mb > max_mb:
        raise lens.UserError(f"{out}: {mb:.1f} MB is over --max-size {max_mb:g} (MB); embed less with "
                             "--models, --prompts or --heads, or raise --max-size")
    try:
        lens.write_atomic(out, html)
    except OSError as e:
        raise lens.UserError(f"{out}: cannot write it ({e.strerror})") from None


def chosen_models(save_path: Path, models: list[str] | None) -> list[str]:
    names = lens.model_dirs(save_path)
    if not names:
        raise lens.UserError(f"{save_path}: no models (no <model>/model_cfg.json); run compute_activations.py first")
    if not models:
        return names
    wanted = [lens.model_dir_name(m) for m in models]
    unknown = [m for m, d in zip(models, wanted) if d not in names]
    if unknown:
        raise lens.UserError(f"--models {','.join(models)}: no model {unknown[0]} in {save_path} "
                             f"(it has {', '.join(names)})")
    return wanted


def prompt_spec(prompts: str | list[str] | None) -> str:
    return prompts if isinstance(prompts, str) else ",".join(prompts or [])


def chosen_records(records: list[dict], prompts: str | list[str] | None) -> list[dict]:
    """The records of a comma-separated list of hashes (or their first 6+ hex digits), else those a search finds
    as the grid's: every word of the query starts a word of the prompt's text or meta values, or, 6-16 hex
    digits, its hash."""
    spec = prompt_spec(prompts).strip().lower()
    if not spec:
        return records
    if "," in spec:
        starts = [h.strip() for h in spec.split(",") if h.strip()]
        bad = [h for h in starts if not HASH.fullmatch(h)]
        if bad:
            raise lens.UserError(f"--prompts {spec}: {bad[0]!r} is not a prompt hash (a search has no commas)")
        return [r for r in records if any(r["hash"].startswith(h) for h in starts)]
    terms = set(lens.WORD.findall(spec))
    return [r for r in records if all(finds(r, t) for t in terms)]


def finds(record: dict, term: str) -> bool:
    """Whether one search term finds a prompt (site/data.js termRows): a word starts with it (a one-character term:
    that word only, as the site reads the one word shard named after it), or it starts the hash."""
    if HASH_TERM.fullmatch(term) and record["hash"].startswith(term):
        return True
    return any(word.startswith(term) and (len(term) > 1 or word == term) for word in lens.search_words(record))


def part_of(part: storage.Part, hashes: set[str]) -> storage.Part:
    """A statistics part with only the rows of these prompts."""
    keep = [i for i, row in enumerate(part.rows) if row["hash"] in hashes]
    return dataclasses.replace(part, rows=[part.rows[i] for i in keep], values=part.values[keep])


def copy_prompt(src: Path, dst: Path, model: str, phash: str, cfg: dict, heads: list[tuple[int, int]] | None) -> None:
    """A prompt dir into the view's data dir; with `heads`, its patterns and figure images only of those heads."""
    pdir = datadir.prompt_dir(src, model, phash)
    for path in sorted(pdir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            data = path.read_bytes()
            lens.write_atomic(datadir.prompt_dir(dst, model, phash) / path.name,
                              without_local_paths(data) if path.name.endswith(".errors.json") else data)
    if heads is None:
        return
    patterns = storage.load_patterns(src, model, phash)
    kept = [h for h in heads if patterns.stored(*h)]
    if patterns.scale == storage.PATTERN_SCALE:  # the heads' zlib streams are copied as they are
        writer = storage.PatternWriter(datadir.patterns_path(dst, model, phash), patterns.n_layers, patterns.n_heads,
                                    patterns.n_tokens, patterns.layout, kept)
        with open(patterns.path, "rb") as f:
            for l, h in kept:
                start, size = patterns.chunks[l * patterns.n_heads + h]
                f.seek(start)
                writer.add([f.read(size)])
        writer.close()
        info = lens.read_json(datadir.prompt_json_path(src, model, phash))
        lens.write_json(datadir.prompt_json_path(dst, model, phash),
                        {**info, "heads": lens.format_heads(kept, cfg["n_layers"], cfg["n_heads"])})
    for pack in sorted(pdir.glob("*.pack")):
        writer = storage.PackWriter(datadir.prompt_dir(dst, model, phash) / pack.name, cfg["n_layers"], cfg["n_heads"])
        for l, h in heads:
            image = storage.read_pack_image(pack, l, h)
            if image is not None:
                writer.add(l, h, image)
        writer.close()


def view_document(files: dict[str, bytes], panes: list[dict]) -> str:
    """One HTML document holding `files` and site/embed.js, showing `panes` ([{url, home, height}]: the page each
    pane opens with, the page file links open in it, its CSS height)."""
    text, binary = {}, {}
    for path, data in files.items():
        if path.endswith(TEXT_SUFFIXES):
            text[path] = data.decode("utf-8")
        else:
            binary[path] = base64.b64encode(data).decode("ascii")
    embed = (lens.SITE_DIR / "embed.js").read_text()
    if "</script" in embed.lower():
        raise ValueError("site/embed.js: holds '</script', which would end its inline <script>")
    return DOCUMENT.format(files=script_json({"text": text, "base64": binary}), panes=script_json(panes), embed=embed)


def script_json(obj) -> str:
    """JSON safe inside a <script> element: no '<' (so no '</script>' or '<!--' in any string)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


DOCUMENT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>attention lens</title>
<link rel="icon" href="data:,">
<style>html, body {{ margin: 0; height: 100%; }}
.attn-pane iframe {{ border: 0; width: 100%; height: 100%; display: block; }}
.attn-pane + .attn-pane {{ border-top: 2px solid #8888; box-sizing: border-box; }}</style>
</head>
<body>
<script type="application/json" id="attn-files">{files}</script>
<script type="application/json" id="attn-panes">{panes}</script>
<script type="module">
{embed}
</script>
</body>
</html>
"""


def model_list(spec: str | None) -> list[str] | None:
    """--models: comma-separated model dirs (None: all)."""
    return [m.strip() for m in spec.split(",") if m.strip()] if spec else None


def main() -> None:
    parser = lens.script_parser(__doc__)
    parser.add_argument("out", type=Path, metavar="OUT.html", help="the file to write")
    parser.add_argument("--save-path", type=lens.save_path_arg, default=lens.DEFAULT_SAVE_PATH,
                        help="data dir (default: %(default)s)")
    parser.add_argument("--models", help="model dirs, comma separated (default: all)")
    parser.add_argument("--prompts", help="prompt hashes, comma separated, or a search as the grid's (default: all)")
    parser.add_argument("--heads", help="heads as the grid's spec, e.g. L0-3H*,L5H1 (default: all)")
    parser.add_argument("--max-size", type=float, default=50, metavar="MB",
                        help="refuse to write a file larger than this (default: %(default)s MB)")
    args = parser.parse_args()
    write_html(args.save_path, args.out, model_list(args.models), args.prompts, args.heads, args.max_size)


if __name__ == "__main__":
    lens.run_main(main, "the file is written whole or not at all; run the same command again")
