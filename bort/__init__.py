"""Bort: optimal subarchitecture extraction for BERT, distillation pretraining and Agora.

The package is split by noun (see README.md); importing it loads nothing heavy.
"""
__version__ = '0.1.0'
