"""Optimal subarchitecture extraction: the paper's FPTAS over BERT-family architectures.

With no arguments, a small real search (about a quarter of an hour on 2 CPU cores): the MiniLM
teacher with a fitted masked-LM head, the docstrings of the installed Python as corpus, the
``default`` grid around the teacher's size; prints the table::

    python run_search.py
    python run_search.py --space paper --teacher roberta_large_dir/ --epsilon 10 --out runs/paper
    horovodrun -np 2 -H localhost:2 --gloo python run_search.py --out runs/search2

``--config FILE.json`` holds flag names as keys (``"epsilon"``, ``"num_layers": [2, 4]``); flags
on the command line win. Rerunning with the same ``--out`` resumes: finished candidates are read
back, not retrained. Outputs in ``--out``: config.json, results.json, table.md, pareto.png and
best_arch.json (for ``run_pretraining.py --arch``).
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Dict, List, Optional, Sequence

from bort.threads import configure_threads
from bort.cli import emit

log = logging.getLogger('run_search')


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`~bort.search.SearchConfig` field (``--x_y`` and ``--x-y``)."""
    # pylint: disable=import-outside-toplevel  (nothing heavy at import time)
    from bort.cli import add_dataclass_flags, make_parser
    from bort.search import SearchConfig
    parser = make_parser(description=__doc__.split('\n\n')[0])
    add_dataclass_flags(parser, SearchConfig)
    return parser


def parse_config(argv: Optional[Sequence[str]] = None):
    """The :class:`~bort.search.SearchConfig` of flags and an optional ``--config`` file."""
    from bort.cli import parse_with_config  # pylint: disable=import-outside-toplevel
    from bort.search import SearchConfig  # pylint: disable=import-outside-toplevel
    parser = build_parser()
    config = SearchConfig(**parse_with_config(parser, argv))
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    return config


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse flags, set up workers and logging, search; print the table on rank 0."""
    configure_threads()  # before MXNet is imported
    # pylint: disable=import-outside-toplevel
    import os
    from bort.distributed import init_comm
    from bort.log import setup_logging
    from bort.search import run_search
    config = parse_config(argv)
    # Workers wait in collectives while others train or time candidates, legitimately for
    # minutes: Horovod's stall warnings would only be noise.
    os.environ.setdefault('HOROVOD_STALL_CHECK_DISABLE', '1')
    comm = init_comm()
    setup_logging(comm, log_file=os.path.join(config.out, 'search.log') if comm.is_root
                  else None)
    log.info('config: %s', json.dumps(config.to_dict(), sort_keys=True))
    result = run_search(config, comm)
    if comm.is_root:
        emit(result['table'])
        log.info('wall time %.0f s; best architecture in %s/best_arch.json',
                 result['wall_seconds'], config.out)
    return result


if __name__ == '__main__':
    from bort.cli import run_main
    from bort.pretrain.teacher import VocabularyMismatchError
    from bort.search.evaluate import SettingsMismatchError
    run_main(main, (SettingsMismatchError, VocabularyMismatchError, FileNotFoundError),
             'run_search')
