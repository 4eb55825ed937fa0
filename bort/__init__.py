"""Bort: optimal subarchitecture extraction for BERT, distillation pretraining and Agora.

The library is grouped by journey (see README.md): :mod:`bort.search`, :mod:`bort.pretrain`,
:mod:`bort.finetune` (with Agora), :mod:`bort.inference` and :mod:`bort.interop`, with the shared
nouns (architecture and costs, model, checkpoints, optimiser, distributed, logging, command lines,
tokenizers) at the top. Importing the package loads nothing heavy; it decides once what the CPU
can run (:func:`bort.hardware.cpu_support`: reads ``/proc/cpuinfo`` and, where the CPU has AMX,
asks Linux for the tile state and lets oneDNN use it), which must happen before MXNet loads.
"""
from .hardware import cpu_support
from .threads import configure_threads

cpu_support()

__version__ = '0.1.0'

__all__ = ['configure_threads', 'cpu_support', '__version__']
