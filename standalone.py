"""Self-contained views: chosen models, prompts and heads of a data dir, and the site itself, in one HTML document

The script is attention_lens/standalone.py, in the package a notebook imports;
this file keeps `python standalone.py` working from a clone."""
import runpy

if __name__ == "__main__":
    runpy.run_module("attention_lens.standalone", run_name="__main__", alter_sys=True)
