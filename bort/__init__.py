"""Bort: optimal subarchitecture extraction for BERT, distillation pretraining and Agora.

The package is split by noun (see README.md); importing it loads nothing heavy.
"""
import os

__version__ = '0.1.0'


def configure_threads() -> int:
    """Give each worker its share of the cores, before MXNet is imported.

    Unset, ``OMP_NUM_THREADS`` made MXNet's CPU operators run as if single-threaded (1.7× slower
    on these machines). The scripts call this first; a value the user set is kept. Under
    ``horovodrun`` the cores are split between the workers of one host.

    Returns
    -------
    int
        The thread count in force.
    """
    if 'OMP_NUM_THREADS' not in os.environ:
        local_workers = int(os.environ.get('HOROVOD_LOCAL_SIZE')
                            or os.environ.get('OMPI_COMM_WORLD_LOCAL_SIZE') or 1)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
            else (os.cpu_count() or 1)
        os.environ['OMP_NUM_THREADS'] = str(max(1, cores // local_workers))
    return int(os.environ['OMP_NUM_THREADS'])
