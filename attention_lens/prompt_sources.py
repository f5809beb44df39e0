"""Where prompts come from: a JSONL file, or a dataset (a Hugging Face dataset by name, streamed; a local
save_to_disk dir; parquet, JSONL or CSV files), cut into pieces with --raw, sampled with --n-samples and
--shuffle, and split into shards. compute_activations.py reads its prompts through here."""
import json
import random
import sys
from pathlib import Path

from attention_lens import lens


def split_document(text: str, min_chars: int, max_chars: int) -> list[str]:
    """Cut a long text into pieces of at most max_chars at whitespace; drop pieces under min_chars."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = max(text.rfind(c, start + min_chars, end) for c in " \n\t")
            end = cut if cut > start else end
        piece = text[start:end].strip()
        if len(piece) >= min_chars:
            pieces.append(piece)
        start = end
    return pieces


def load_prompts(path: Path, raw: bool = False, min_chars: int = 100, max_chars: int = 1000) -> list[dict]:
    """Read prompts from JSONL: every line needs a non-empty "text"; "meta" is passed through."""
    if not path.is_file():
        raise lens.UserError(f"{path}: no such prompts file")
    rows = list(lens.iter_jsonl(path))
    if not rows:
        raise lens.UserError(f"{path}: no prompts in file")
    return prompts_from_rows(((f"{path}:{lineno}", row, f"line {lineno}") for lineno, row in rows), str(path), raw,
                             min_chars, max_chars)


def prompts_from_rows(rows, source: str, raw: bool, min_chars: int, max_chars: int,
                      text_field: str = "text") -> list[dict]:
    """Prompts from (where, row, short name) triples: the row's `text_field` (cut into pieces with `raw`) and its
    "meta"; identical texts once, with the first one's meta (said when another's differs)."""
    prompts, seen = [], {}  # text -> (short name, meta) of its first row
    for where, row, name in rows:
        text, meta = row.get(text_field), row.get("meta", {})
        if not isinstance(text, str) or not text.strip():
            raise lens.UserError(f'{where}: needs a non-empty string "{text_field}"')
        if not isinstance(meta, dict):
            raise lens.UserError(f'{where}: "meta" must be a JSON object')
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise lens.UserError(f"{where}: holds a lone surrogate (\\ud800 to \\udfff), not text") from None
        texts = split_document(text, min_chars, max_chars) if raw else [text]
        for i, t in enumerate(texts):
            if t in seen:
                first, first_meta = seen[t]
                if first_meta != meta:  # said, not dropped silently
                    print(f"warning: {where}: the same text as {first}: computed once, with {first}'s meta",
                          file=sys.stderr)
                continue
            seen[t] = (name, meta)
            prompts.append({"text": t, "meta": {**meta, "chunk": i} if raw else meta})
    if not prompts:
        raise lens.UserError(f"{source}: no prompt of at least --min-chars {min_chars} characters")
    return prompts


def dataset_rows(spec: str, split: str, text_field: str, config: str | None, n_rows: int | None, shuffle: bool,
                 seed: int):
    """(where, row) of a dataset's rows, row = {text_field: text, "meta": {...}}: a local save_to_disk dir, a
    folder or file(s) of parquet, JSONL or CSV, or a Hugging Face dataset by name, streamed (--n-samples
    rows are read, not the whole set; --shuffle draws them from a 10,000-row buffer). The meta is the row's
    "meta" object, if any, and its other short scalar columns, plus the row's number."""
    import datasets

    path = Path(spec).expanduser()
    files = (sorted(f for f in path.rglob("*") if f.suffix in DATA_SUFFIXES) if path.is_dir()
             else [path] if path.is_file() else [])
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise lens.UserError(f"--split {split}: {spec} has splits {', '.join(ds)}")
                ds = ds[split]
            if shuffle:
                ds = ds.shuffle(seed=seed)
        elif files:
            kinds = {DATA_SUFFIXES[f.suffix] for f in files}
            if len(kinds) > 1:
                raise lens.UserError(f"--dataset {spec}: mixes {' and '.join(sorted(kinds))} files; name one kind")
            ds = datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train", streaming=True)
            if shuffle:
                ds = ds.shuffle(seed=seed, buffer_size=10_000)
        elif path.exists() or spec.startswith((".", "/", "~")):
            raise lens.UserError(f"--dataset {spec}: no parquet, JSONL, JSON or CSV file there, and not a "
                                 "save_to_disk dir")
        else:
            ds = datasets.load_dataset(spec, config, split=split, streaming=True)
            if shuffle:
                ds = ds.shuffle(seed=seed, buffer_size=10_000)
    except lens.UserError:
        raise
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise lens.UserError(f"--dataset {spec}: cannot load it ({first})") from None
    columns = getattr(ds, "column_names", None) or (list(ds.features) if getattr(ds, "features", None) else None)
    if columns is not None and text_field not in columns:
        raise lens.UserError(f"--text-field {text_field}: {spec} has no such column (it has: {', '.join(columns)})")
    empty = 0
    for i, row in enumerate(ds):
        if n_rows is not None and i - empty >= n_rows:
            break
        if text_field not in row:
            raise lens.UserError(f"--text-field {text_field}: {spec} row {i} has no such column (it has: "
                                 f"{', '.join(row)})")
        text = row[text_field]
        if not isinstance(text, str):
            raise lens.UserError(f"--text-field {text_field}: {spec} row {i} holds {type(text).__name__}, not text")
        if not text.strip():
            empty += 1
            continue
        meta = dict(row["meta"]) if isinstance(row.get("meta"), dict) else {}
        meta.update({k: v for k, v in row.items() if k not in (text_field, "meta")
                     and (isinstance(v, (bool, int, float)) or isinstance(v, str) and len(v) <= 200)})
        meta["row"] = i
        yield f"{spec} row {i}", {text_field: text, "meta": meta}, f"row {i}"
    if empty:
        print(f"warning: --dataset {spec}: {empty} row(s) with an empty {text_field!r} skipped", file=sys.stderr)


DATA_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def select_prompts(prompts: list[dict], n_samples: int | None, shuffle: bool, seed: int,
                   shard: tuple[int, int] | None) -> list[dict]:
    if shuffle:
        prompts = prompts[:]
        random.Random(seed).shuffle(prompts)
    prompts = prompts[:n_samples] if n_samples is not None else prompts
    return [p for p in prompts if lens.in_shard(lens.prompt_hash(p["text"]), shard)]
