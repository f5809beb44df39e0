"""Render every stored attention pattern through every figure in figures/, and compute head statistics.

The script is attention_lens/render_figures.py, in the package a notebook imports;
this file keeps `python render_figures.py` working from a clone."""
import runpy

if __name__ == "__main__":
    runpy.run_module("attention_lens.render_figures", run_name="__main__", alter_sys=True)
