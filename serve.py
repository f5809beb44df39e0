"""Serve a data dir (patterns, figures and the site) over HTTP on this machine only.

The script is attention_lens/serve.py, in the package a notebook imports;
this file keeps `python serve.py` working from a clone."""
import runpy

if __name__ == "__main__":
    runpy.run_module("attention_lens.serve", run_name="__main__", alter_sys=True)
