"""Bort: optimal subarchitecture extraction for BERT, distillation pretraining and Agora.

The library is grouped by journey (see README.md): :mod:`bort.search`, :mod:`bort.pretrain`,
:mod:`bort.finetune` (with Agora), :mod:`bort.inference` and :mod:`bort.interop`, with the shared
nouns (architecture and costs, model, checkpoints, optimiser, distributed, logging, command lines,
tokenizers) at the top. Importing the package loads nothing heavy.
"""
from .threads import configure_threads

__version__ = '0.1.0'

__all__ = ['configure_threads', '__version__']
