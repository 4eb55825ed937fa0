"""Pretrain a Bort student by knowledge distillation (or plain masked LM with --kd-weight 0).

Single process::

    python run_pretraining.py --data shards/ --teacher teacher/ --arch bort_4_8_768_1024 \\
        --output-dir runs/kd --total-steps 10000

Several workers (Gloo on CPU, NCCL on GPU)::

    horovodrun -np 4 -H localhost:4 python run_pretraining.py --config kd.json --gpu

``--config FILE.json`` holds flag names as keys (``"kd-weight"`` or ``"kd_weight"``); flags on the
command line win. ``--arch`` takes a registered name, an ``arch.json`` file or folder, a search
result JSON, or an inline JSON object. Prepare the data with ``python -m bort.pretrain_data``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Dict, List, Optional, Sequence

from bort import configure_threads

log = logging.getLogger('run_pretraining')

HELP = {
    'data': 'folder written by `python -m bort.pretrain_data` (or a glob of shards)',
    'eval_data': "held-out shards (default: the data folder's eval-* shards)",
    'arch': 'student: registered name, arch JSON file/folder, search result, or inline JSON',
    'teacher': 'teacher model folder (arch.json + model.params with MLM head)',
    'tokenizer': 'tokenizer folder, only for shards without meta.json',
    'kd_weight': 'weight of the distillation term (0: self-supervised baseline)',
    'released_quirks': "the released script's loss (softmax twice, vocabulary mean)",
    'batch_size': 'sequences per worker per micro-batch',
    'accumulate': 'micro-batches per optimizer step',
    'data_parts': 'data order parts (0: number of workers); keep fixed to compare worker counts',
    'dtype': 'float16 (GPU only) or float32',
    'resume': 'continue from the latest checkpoint in --output-dir',
}


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def build_parser(config_cls) -> argparse.ArgumentParser:
    """One flag per config field, typed from its default; booleans get --x/--no-x."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--config', help='JSON file of flag values (flags win)')
    for field in dataclasses.fields(config_cls):
        kwargs = {'default': field.default, 'help': HELP.get(field.name, ' ')}
        if isinstance(field.default, bool):
            kwargs['action'] = argparse.BooleanOptionalAction
        else:
            kwargs['type'] = type(field.default)
        parser.add_argument(_flag(field.name), dest=field.name, **kwargs)
    return parser


def read_config_file(path: str, parser: argparse.ArgumentParser) -> Dict:
    """Flag values from a JSON file, keys as flag names (dashes or underscores)."""
    with open(path) as f:
        values = json.load(f)
    if not isinstance(values, dict):
        raise SystemExit(f'{path}: expected a JSON object of flag values')
    known = {a.dest for a in parser._actions}  # pylint: disable=protected-access
    out = {}
    for key, value in values.items():
        dest = key.lstrip('-').replace('-', '_')
        if dest not in known or dest == 'config':
            raise SystemExit(f'{path}: unknown setting {key!r}')
        out[dest] = json.dumps(value) if dest == 'arch' and isinstance(value, dict) else value
    return out


def parse_config(argv: Optional[Sequence[str]] = None):
    """The run's :class:`~bort.pretrain.PretrainConfig` from flags and an optional JSON file."""
    from bort.pretrain import PretrainConfig  # pylint: disable=import-outside-toplevel
    parser = build_parser(PretrainConfig)
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**read_config_file(first.config, parser))
    args = vars(parser.parse_args(argv))
    args.pop('config')
    return PretrainConfig(**args)


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse flags, set up workers and logging, pretrain; the final metrics."""
    configure_threads()  # before MXNet is imported
    # pylint: disable=import-outside-toplevel
    from bort.distributed import init_comm
    from bort.log import setup_logging
    from bort.pretrain import pretrain
    config = parse_config(argv)
    comm = init_comm(gpu=config.gpu)
    setup_logging(comm)
    log.info('config: %s', json.dumps(dataclasses.asdict(config), sort_keys=True))
    result = pretrain(config, comm)
    log.info('done: %s', json.dumps(result, sort_keys=True, default=str))
    return result


if __name__ == '__main__':
    try:
        main()
    except Exception as err:  # pylint: disable=broad-except
        from bort.pretrain import NonFiniteLossError
        from bort.kd_teacher import VocabularyMismatchError
        if isinstance(err, (NonFiniteLossError, VocabularyMismatchError, FileExistsError)):
            logging.getLogger('run_pretraining').error('%s', err)
            sys.exit(2)
        raise
