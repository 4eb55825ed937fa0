"""Bort in miniature: the paper end to end on 2 cores, with a verdict per claim.

A thin entry point; the experiment is :mod:`bort.experiments.miniature` (same flags)::

    OMP_NUM_THREADS=2 python benchmarks/miniature.py --glue_dir GLUE --budget small \\
        --out runs/miniature_small
    python -m bort.experiments.miniature --glue_dir GLUE --budget full --out runs/miniature_full
    # the teacher-strength table alone (to choose --teacher minilm-<steps> first):
    python -m bort.experiments.miniature --glue_dir GLUE --budget full --teacher_table_only \\
        --out runs/teacher_table
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':
    from bort.cli import run_main
    from bort.experiments.miniature import main
    run_main(main, logger='bort.experiments.miniature')
