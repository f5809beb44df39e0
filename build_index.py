"""Write the indexes the site reads and copy the site next to the data.

    python build_index.py                    # for attn_data/
    python build_index.py --save-path DIR

Writes models.jsonl (every <model>/model_cfg.json), <model>/prompts.jsonl (every finished
prompt.json, sorted by hash), figures.jsonl (the figure registry of figures/) and copies
site/ into the data dir. It only reads what is on disk, so it is idempotent and merges the
outputs of shards run on several machines once they are copied into one data dir.
compute_activations.py and render_figures.py run it when they finish.
"""
import argparse
import json
import sys
from pathlib import Path

import lens

SITE_DIR = Path(__file__).resolve().parent / "site"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise lens.UserError(f"{path}: not valid JSON ({e.msg}); delete it and re-run its script") from None


def prompt_records(save_path: Path, model: str) -> list[dict]:
    """Every finished prompt of a model, sorted by hash."""
    return [read_json(lens.prompt_dir(save_path, model, h) / "prompt.json")
            for h in lens.finished_prompts(save_path, model)]


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file alone, so its mtime (and browser caches) stay valid."""
    if not (path.is_file() and path.read_bytes() == data):
        lens.write_atomic(path, data)


def copy_site(save_path: Path) -> None:
    """Copy site/ (pages, scripts, styles) into the data dir, which serve.py serves as is."""
    for src in sorted(SITE_DIR.rglob("*")):
        if src.is_file() and not src.name.startswith("."):
            write_if_changed(Path(save_path) / src.relative_to(SITE_DIR), src.read_bytes())


def build_index(save_path: Path, figures_dir: Path = lens.FIGURES_DIR) -> None:
    """Rebuild models.jsonl, each model's prompts.jsonl and figures.jsonl, and copy the site."""
    save_path = Path(save_path)
    if not save_path.is_dir():
        raise lens.UserError(f"data dir {save_path} does not exist (compute_activations.py writes it)")
    names = lens.model_dirs(save_path)
    if not names:
        raise lens.UserError(f"{save_path}: no models (no <model>/model_cfg.json); run compute_activations.py first")
    models, n_prompts = [], 0
    for name in names:
        prompts = prompt_records(save_path, name)
        write_if_changed(save_path / name / "prompts.jsonl", lens.jsonl_bytes(prompts))
        cfg = read_json(save_path / name / "model_cfg.json")
        models.append({**cfg, "model_dir": name, "n_prompts": len(prompts)})
        n_prompts += len(prompts)
    write_if_changed(save_path / "models.jsonl", lens.jsonl_bytes(models))

    figures, errors = lens.load_figures(figures_dir)
    for error in errors:
        print(f"build_index.py: warning: {error}", file=sys.stderr)
    write_if_changed(save_path / "figures.jsonl", lens.jsonl_bytes(lens.figure_records(figures)))
    copy_site(save_path)
    print(f"build_index.py: {len(models)} model(s), {n_prompts} prompt(s), {len(figures)} figure function(s)"
          f" indexed in {save_path}; view with: python serve.py --save-path {save_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-path", type=Path, default=lens.DEFAULT_SAVE_PATH,
                        help="data dir (default: attn_data)")
    parser.add_argument("--figures-dir", type=Path, default=lens.FIGURES_DIR,
                        help="figure plug-ins to index (default: figures/ next to this script)")
    args = parser.parse_args()
    try:
        build_index(args.save_path, args.figures_dir)
    except lens.UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
