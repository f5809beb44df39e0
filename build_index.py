"""Write the indexes the site reads and copy the site next to the data.

The script is attention_lens/build_index.py, in the package a notebook imports;
this file keeps `python build_index.py` working from a clone."""
import runpy

if __name__ == "__main__":
    runpy.run_module("attention_lens.build_index", run_name="__main__", alter_sys=True)
