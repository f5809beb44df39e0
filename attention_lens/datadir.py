"""Every path of a data dir, one function per file, in the order and with the names site/data.js uses
(`models_path` here is `MODELS_URL` there, `model_cfg_path` is `modelCfgUrl`; tests/rules.json's "paths" table
holds both sides). `model` is a model's directory name (models.jsonl's "model_dir"). The files' formats are in
docs/data.md."""
from pathlib import Path

PATTERN_FILE = "patterns.bin"
VALUE_NORMS_FILE = "value_norms.f32"  # ||v_j W_O^h||: float32 [n_layers, n_heads, n_tokens], NaN where not stored


# ---- the data dir's own files (build_index.py) ----

def models_path(save_path: Path) -> Path:
    return Path(save_path) / "models.jsonl"


def figures_path(save_path: Path) -> Path:
    return Path(save_path) / "figures.jsonl"


def colormaps_path(save_path: Path) -> Path:
    return Path(save_path) / "colormaps.json"


def lock_path(save_path: Path) -> Path:
    """The lock runs on one data dir take around what they must not write at once (build_index.data_dir_lock)."""
    return Path(save_path) / "build_index.lock"


def render_record_path(save_path: Path) -> Path:
    """Which figures dir render_figures.py rendered with: build_index.py indexes that one (the site never reads it)."""
    return Path(save_path) / "render.json"


# ---- a model's files ----

def model_cfg_path(save_path: Path, model: str) -> Path:
    return Path(save_path) / model / "model_cfg.json"


def prompt_index_dir(save_path: Path, model: str) -> Path:
    """The prompt index (build_index.py): rows in the order first indexed, the statistics tables' row order."""
    return Path(save_path) / model / "index"


def prompt_index_path(save_path: Path, model: str) -> Path:
    """{count, chunk_size, text_chars, n_stored}: all a page reads before the rows it shows."""
    return prompt_index_dir(save_path, model) / "meta.json"


def index_hashes_path(save_path: Path, model: str) -> Path:
    """The names of the hash shards (by_hash/<shard>.json: {hash: row}), where the site looks a hash up."""
    return prompt_index_dir(save_path, model) / "hashes.json"


def index_hash_shard_path(save_path: Path, model: str, shard: str) -> Path:
    return prompt_index_dir(save_path, model) / "by_hash" / f"{shard}.json"


def index_rows_path(save_path: Path, model: str, chunk: int) -> Path:
    """Rows chunk * chunk_size ... of the index, one JSON object a line."""
    return prompt_index_dir(save_path, model) / "rows" / f"{chunk}.jsonl"


def index_words_path(save_path: Path, model: str, shard: str) -> Path:
    """{word: rows (first, then differences)} of the words starting with the shard's characters."""
    return prompt_index_dir(save_path, model) / "words" / f"{shard}.json"


def index_order_path(save_path: Path, model: str) -> Path:
    """uint32 row numbers sorted by n_tokens (ties in row order): the prompt table's token order."""
    return prompt_index_dir(save_path, model) / "by_tokens.u32"


def index_stored_path(save_path: Path, model: str) -> Path:
    """The rows of the prompts whose patterns are stored, ascending."""
    return prompt_index_dir(save_path, model) / "stored.json"


def index_shards_path(save_path: Path, model: str) -> Path:
    """The names of the word shards there are: a search never asks for one that does not exist."""
    return prompt_index_dir(save_path, model) / "shards.json"


def index_cache_path(save_path: Path, model: str) -> Path:
    """build_index.py's own record of the prompt.json files it read (the site never reads it)."""
    return prompt_index_dir(save_path, model) / "prompt_json_cache.jsonl"


def index_state_path(save_path: Path, model: str) -> Path:
    """build_index.py's record of the rows it wrote and how far it read each part (index/state.json): a rerun
    starts from it and writes only what the new prompts change (the site never reads it)."""
    return prompt_index_dir(save_path, model) / "state.json"


def stats_path(save_path: Path, model: str) -> Path:
    return Path(save_path) / model / "stats.json"


def stat_table_path(save_path: Path, model: str, stat: str) -> Path:
    return Path(save_path) / model / "stats" / f"{stat}.f32"


def stat_heads_path(save_path: Path, model: str, stat: str) -> Path:
    return Path(save_path) / model / "stats" / f"{stat}.heads.json"


def heads_json_path(save_path: Path, model: str) -> Path:
    return Path(save_path) / model / "heads.json"


def weight_scores_path(save_path: Path, model: str) -> Path:
    """Each head's scores from the weights alone, no prompts (compute_activations.py; kinds.py copies them into
    heads.json, which is what the site reads)."""
    return Path(save_path) / model / "weight_scores.json"


def examples_index_path(save_path: Path, model: str) -> Path:
    """Where each head's examples and each example prompt's tokens sit in examples.bin, and the sampling's settings
    (compute_activations.py writes both; see examples.py)."""
    return Path(save_path) / model / "examples.json"


def examples_path(save_path: Path, model: str) -> Path:
    """One JSON block per head (its examples with their sparse attention) and per example prompt (its tokens)."""
    return Path(save_path) / model / "examples.bin"


def projections_index_path(save_path: Path, model: str) -> Path:
    """The sample's settings and hooks, and where the points and each head's record sit in projections.bin
    (compute_activations.py writes both; see projections.py)."""
    return Path(save_path) / model / "projections.json"


def projections_path(save_path: Path, model: str) -> Path:
    """The sampled points with their prompts' tokens, then per head its 2-D PCA of queries, keys and outputs."""
    return Path(save_path) / model / "projections.bin"


def head_pages_index_path(save_path: Path, model: str) -> Path:
    """Where each head's block sits in head_pages.bin (build_index.py writes both; see head_pages.py)."""
    return Path(save_path) / model / "head_pages.json"


def head_pages_path(save_path: Path, model: str) -> Path:
    """One JSON block per head: every statistic's value, rank and histogram, its look-back and top tokens."""
    return Path(save_path) / model / "head_pages.bin"


def token_strings_path(save_path: Path, model: str) -> Path:
    """{token id: its string} of the tokens the runs' totals name (compute_activations.py adds to it)."""
    return Path(save_path) / model / "tokens.json"


def parts_dir(save_path: Path, model: str) -> Path:
    """Each compute run's statistics part (storage.StatsPart writes them, storage.read_parts reads them)."""
    return Path(save_path) / model / "parts"


# ---- a prompt's files ----

def prompts_dir(save_path: Path, model: str) -> Path:
    """The folder holding one folder per prompt."""
    return Path(save_path) / model / "prompts"


def prompt_dir(save_path: Path, model: str, phash: str) -> Path:
    return prompts_dir(save_path, model) / phash


def prompt_json_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / "prompt.json"


def patterns_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / PATTERN_FILE


def prompt_stats_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / "stats.json"


def value_norms_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / VALUE_NORMS_FILE


def figure_pack_path(save_path: Path, model: str, phash: str, output: str) -> Path:
    """Every head's image of one figure output (`raw`, or `func.name` for a multi-figure): see storage.PackWriter."""
    return prompt_dir(save_path, model, phash) / f"{output}.pack"


def figure_errors_path(save_path: Path, model: str, phash: str, name: str) -> Path:
    """{"L<l>H<h>": traceback} of the heads a figure output or statistic failed on; only when one did."""
    return prompt_dir(save_path, model, phash) / f"{name}.errors.json"
