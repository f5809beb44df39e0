"""Compute every head's attention pattern of one or more models over a prompt file.

The script is attention_lens/compute_activations.py, in the package a notebook imports;
this file keeps `python compute_activations.py` working from a clone."""
import runpy

if __name__ == "__main__":
    runpy.run_module("attention_lens.compute_activations", run_name="__main__", alter_sys=True)
