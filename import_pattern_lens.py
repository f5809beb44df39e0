"""Convert a pattern-lens data dir into ours, in place, then index it.

The script is attention_lens/import_pattern_lens.py, in the package a notebook imports;
this file keeps `python import_pattern_lens.py` working from a clone."""
import runpy

if __name__ == "__main__":
    runpy.run_module("attention_lens.import_pattern_lens", run_name="__main__", alter_sys=True)
