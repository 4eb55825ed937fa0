"""Checkpoint interop: Hugging Face and GluonNLP checkpoints in, Hugging Face out.

- :mod:`~bort.interop.hf`: the tensor-name mapping and config <-> architecture rules;
- :mod:`~bort.interop.convert`: ``python -m bort.interop.convert import|export``.
"""
