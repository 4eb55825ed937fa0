"""Bort: optimal subarchitecture extraction for BERT, distillation pretraining and Agora.

The library is grouped by journey (see README.md): :mod:`bort.search`, :mod:`bort.pretrain`,
:mod:`bort.finetune` (with Agora), :mod:`bort.inference` and :mod:`bort.interop`, with the shared
nouns (architecture and costs, model, checkpoints, optimiser, distributed, logging, command lines,
tokenizers) at the top. Importing the package loads nothing heavy; before MXNet loads it decides
once what the CPU can run (:func:`bort.hardware.cpu_support`: reads ``/proc/cpuinfo`` and, where
the CPU has AMX, asks Linux for the tile state and lets oneDNN use it) and gives the process its
share of the cores (:func:`bort.threads.configure_threads`: ``OMP_NUM_THREADS`` unless set).
Every ``python -m bort.…`` command imports modules that load MXNet before its ``main`` runs, so
this is the one place early enough for all of them (unset, MXNet ran single-threaded).
"""
from .hardware import cpu_support
from .threads import configure_threads

cpu_support()
configure_threads()

__version__ = '0.1.0'

__all__ = ['configure_threads', 'cpu_support', '__version__']
