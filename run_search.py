"""Optimal subarchitecture extraction: the paper's FPTAS over BERT-family architectures.

With no arguments, a small real search on 2 CPU cores: the MiniLM teacher (MLM-adapted once and
cached), the docstrings of the installed Python as corpus, the ``default`` grid around the
teacher's size, the seed noise of e measured on the top candidates; prints the table::

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
    config = SearchConfig(**parse_with_config(build_parser(), argv))
    config.validate()  # combinations of settings: ConfigError, one line and exit 2 in run_main
    return config


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse flags, set up workers and logging, search; print the table on rank 0."""
    configure_threads()  # before MXNet is imported
    # pylint: disable=import-outside-toplevel
    import os
    from bort.distributed import init_comm
    from bort.log import setup_logging
    from bort.runlock import hold_folder
    from bort.search import run_search
    from bort.search.driver import LOG_FILE
    config = parse_config(argv)
    # Workers wait in collectives while others train or time candidates, legitimately for
    # minutes: Horovod's stall warnings would only be noise.
    os.environ.setdefault('HOROVOD_STALL_CHECK_DISABLE', '1')
    comm = init_comm()
    # The folder is held before the log file opens in it: a refused second run writes nothing.
    with hold_folder(config.out, comm.is_root):
        setup_logging(comm, log_file=os.path.join(config.out, LOG_FILE) if comm.is_root
                      else None)
        log.info('config: %s', json.dumps(config.to_dict(), sort_keys=True))
        result = run_search(config, comm, hold=False)
    if comm.is_root:
        emit(result['table'])
        log.info('wall time %.0f s; best architecture in %s/best_arch.json',
                 result['wall_seconds'], config.out)
    return result


if __name__ == '__main__':
    from bort.cli import ctrl_c_exits_at_once, run_main
    with ctrl_c_exits_at_once():  # importing MXNet takes a second or two
        import bort.search.driver  # noqa: F401  (what main imports)
    # Every UserError (settings, a folder in use, data, teacher vocabulary) is one line, exit 2.
    run_main(main, logger='run_search')
