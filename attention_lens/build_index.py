"""Write the indexes the site reads and copy the site next to the data.

    python build_index.py                    # for attn_data/
    python build_index.py --save-path DIR
    python build_index.py --export-headvis DIR [--models MODEL]   # then one model as HeadVis's data/ (headvis.py)

Writes models.jsonl (every <model>/model_cfg.json), <model>/index/ (every prompt with statistics or
stored patterns, in chunks a page fetches as it needs them, and a word index to search them; a rerun
appends the prompts computed since and reads only them), the statistics' tables and aggregates,
figures.jsonl (the figure registry of the figures dir that render_figures.py last rendered with, else figures/),
colormaps.json (the tables the images use, for the site's legends) and copies site/ into the data
dir: it alone writes what the site reads about figures. It only reads what is on disk, so it is
idempotent and merges the outputs of shards run on several machines once they are copied into one
data dir. The prompt index is prompt_index.py's, the statistics' tables aggregate.py's.
compute_activations.py and render_figures.py run it when they finish; `--html` is an alias of standalone.py,
`--import-pattern-lens` of import_pattern_lens.py.
"""
import fcntl
import inspect
import sys
from contextlib import contextmanager
from pathlib import Path

from attention_lens import aggregate, datadir, head_pages, kinds, lens, prompt_index, storage


def figure_records(figures: dict[str, lens.Figure]) -> list[dict]:
    """One figures.jsonl row per registered function: what the site shows and needs to find images."""
    return [{"name": f.name, "kind": f.kind, "outputs": f.outputs,
             "doc": inspect.getdoc(f.func) or "", "source": f.source,
             "code": inspect.getsource(f.func), "options": f.options} for f in figures.values()]


def copy_site(save_path: Path) -> None:
    """Copy site/ (pages, scripts, styles) into the data dir, which serve.py serves as is; and .nojekyll, which
    tells a Jekyll host (GitHub Pages) to serve the files whose names start with "_" (word shards such as _3c.json)."""
    for src in sorted(lens.SITE_DIR.rglob("*")):
        if src.is_file() and not src.name.startswith("."):
            lens.write_if_changed(Path(save_path) / src.relative_to(lens.SITE_DIR), src.read_bytes())
    lens.write_if_changed(Path(save_path) / ".nojekyll", b"")


def rendered_figures_dir(save_path: Path) -> Path:
    """The figures dir render_figures.py last rendered with (figures/ before any render, or if it is gone)."""
    record = datadir.render_record_path(save_path)
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


def index_model(save_path: Path, model: str, cfg: dict, figures: dict[str, lens.Figure],
                parts: list[storage.Part] | None = None, remember: bool = True) -> tuple[prompt_index.Rows, int]:
    """One model's prompt index and statistics: the prompts new or changed since the last run (index/state.json)
    appended or rewritten, or all of them the first time. `parts`: only these (a view's data dir), from nothing;
    `remember`: keep the state for the next run. Returns the rows and the number of finished prompt dirs."""
    shape = (cfg["n_layers"], cfg["n_heads"])
    current = {name: lens.code_of(f) for name, f in figures.items() if f.kind == "statistic"}
    stored = prompt_index.StoredPrompts.read(save_path, model)
    old = prompt_index.read_index_state(save_path, model) if parts is None else None
    if old is not None and prompt_index.state_holds(save_path, model, old, stored, shape):
        update = prompt_index.plan_update(save_path, model, shape, stored, old, current=current)  # None: index anew
        try:
            if update is not None:
                return write_update(save_path, model, shape, figures, update, stored, remember)
        except (lens.UserError, ValueError) as e:  # the rows written before are damaged: index anew
            print(f"build_index.py: warning: {e}; indexing {model} anew", file=sys.stderr)
    update = prompt_index.plan_update(save_path, model, shape, stored, None, parts, current)
    return write_update(save_path, model, shape, figures, update, stored, remember)


def write_update(save_path: Path, model: str, shape: tuple[int, int], figures: dict[str, lens.Figure],
                 update: prompt_index.Update, stored: prompt_index.StoredPrompts,
                 remember: bool) -> tuple[prompt_index.Rows, int]:
    """Write one model's update: its statistics, then its index, then (`remember`) the state for the next run."""
    records = prompt_index.resolve_records(save_path, model, update.changes, update.n_old)
    aggregate.write_model_stats(save_path, model, shape, figures, update, records)
    head_pages.write_head_pages(save_path, model, shape, update.rows, stored.records)
    prompt_index.write_index(save_path, model, update.rows, update.n_old, records)
    if remember:  # after everything it describes: a killed run redoes this update
        prompt_index.write_index_state(save_path, model, update.rows)
        stored.save()
    return update.rows, stored.n_finished


@contextmanager
def data_dir_lock(save_path: Path, who: str):
    """Hold the data dir's lock (an advisory flock on datadir.lock_path) while writing what runs must not write at
    once: one build_index.py at a time, a second one waits, saying so. No lock where there can be none (a
    read-only data dir, a file system without flock): then the work goes on unlocked."""
    path = datadir.lock_path(save_path)
    try:
        f = open(path, "a+b")
    except OSError:
        yield
        return
    with f:  # closing the file lets the lock go
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{who}: waiting for another run writing {save_path} ({path})", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def start_prompt(records: list[dict]) -> dict:
    """{"start_prompt": hash} of the prompt the grid opens on: the probe's first stored repeated sequence (in hash
    order), where the heads' kinds show (a previous-token head's diagonal, an induction head's stripe); else {}."""
    repeats = [r["hash"] for r in records if r["stored"] and r["meta"].get("probe") == "repeat"]
    return {"start_prompt": min(repeats)} if repeats else {}


def build_index(save_path: Path, figures_dir: Path | None = None) -> None:
    """Rebuild models.jsonl, each model's prompt index, figures.jsonl and colormaps.json, and copy the site."""
    save_path = lens.require_data_dir(save_path)
    if not lens.model_dirs(save_path):  # not a data dir: nothing written, not even the lock
        raise lens.UserError(f"{save_path}: no models (no <model>/model_cfg.json); run compute_activations.py first")
    with data_dir_lock(save_path, "build_index.py"):  # runs on one data dir index one after another
        index_all(save_path, figures_dir)


def index_all(save_path: Path, figures_dir: Path | None) -> None:
    """build_index's work, under the data dir's lock."""
    names = lens.model_dirs(save_path)
    figures = lens.load_figures_or_warn(figures_dir or rendered_figures_dir(save_path))
    models, n_prompts, n_unreadable, records_by_model = [], 0, 0, {}
    for name in names:
        cfg = lens.read_model_cfg(save_path, name)
        rows, n_finished = index_model(save_path, name, cfg, figures)
        records_by_model[name] = rows.light_records()
        models.append({**cfg, "model_dir": name, "n_prompts": len(rows.hashes),
                       **start_prompt(records_by_model[name])})
        n_prompts += len(rows.hashes)
        n_unreadable += n_finished - sum(rows.stored)
    # after every model's statistics: nearest heads span them all
    kinds.write_heads(save_path, records_by_model)
    lens.write_if_changed(datadir.models_path(save_path), lens.jsonl_bytes(models))
    lens.write_if_changed(datadir.figures_path(save_path), lens.jsonl_bytes(figure_records(figures)))
    lens.write_if_changed(datadir.colormaps_path(save_path), colormaps_json())
    copy_site(save_path)
    print(f"build_index.py: {len(models)} model(s), {n_prompts} prompt(s), {len(figures)} figure function(s)"
          f" indexed in {save_path}" + (f" ({n_unreadable} unreadable prompt(s) left out, see the warnings)"
                                         if n_unreadable else "")
          + f"; view with: python serve.py --save-path {save_path}")


def main() -> None:
    parser = lens.script_parser(__doc__)
    parser.add_argument("--save-path", type=lens.save_path_arg, default=lens.DEFAULT_SAVE_PATH,
                        help="data dir (default: %(default)s)")
    parser.add_argument("--figures-dir", type=Path,
                        help="figure plug-ins to index (default: the dir render_figures.py last rendered with, "
                        "else figures/ next to this script)")
    parser.add_argument("--import-pattern-lens", action="store_true",
                        help="first convert pattern-lens prompts (activations.npz/.npy) into ours, in place")
    parser.add_argument("--html", type=Path, metavar="OUT.html",
                        help="instead of indexing, write one self-contained file of the site and the data chosen by "
                        "--models, --prompts and --heads, which opens from disk with no server and no network")
    parser.add_argument("--export-headvis", type=Path, metavar="DIR",
                        help="after indexing, write one model's heads (--models) as the data tree Anthropic's HeadVis "
                        "frontend and Neuronpedia's loaders read: docs/headvis.md")
    parser.add_argument("--models", help="--html: model dirs, comma separated (default: all); --export-headvis: the "
                        "model (default: the data dir's only one)")
    parser.add_argument("--prompts",
                        help="--html: prompt hashes, comma separated, or a search as the grid's (default: all)")
    parser.add_argument("--heads", help="--html: heads as the grid's spec, e.g. L0-3H*,L5H1 (default: all)")
    parser.add_argument("--max-size", type=float, default=50, metavar="MB",
                        help="--html: refuse to write a file larger than this (default: %(default)s MB)")
    args = parser.parse_args()
    if args.html and args.export_headvis:
        raise lens.UserError("--html and --export-headvis: one at a time")
    if args.html:  # an alias of standalone.py, the one-file view's own script
        from attention_lens import standalone
        standalone.write_html(args.save_path, args.html, standalone.model_list(args.models), args.prompts, args.heads,
                              args.max_size)
        return
    if args.models is not None and not args.export_headvis:
        raise lens.UserError("--models: chooses what --html embeds or --export-headvis writes; add one of them")
    for flag, value in [("--prompts", args.prompts), ("--heads", args.heads)]:
        if value is not None:
            raise lens.UserError(f"{flag}: chooses what --html embeds; add --html OUT.html")
    if args.export_headvis:  # a target it may not write is told before the indexing
        from attention_lens import headvis
        headvis.check_target(args.save_path, args.export_headvis)
    if args.import_pattern_lens:  # an alias of import_pattern_lens.py
        from attention_lens import import_pattern_lens
        import_pattern_lens.import_pattern_lens(args.save_path)
    build_index(args.save_path, args.figures_dir)
    if args.export_headvis:
        with data_dir_lock(args.save_path, "build_index.py"):
            headvis.export_headvis(args.save_path, args.models, args.export_headvis,
                                   args.figures_dir or rendered_figures_dir(args.save_path))


if __name__ == "__main__":
    lens.run_main(main, "each file is written whole or not at all; run the same command again")
