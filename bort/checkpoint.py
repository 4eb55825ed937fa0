"""One checkpoint format for every training loop, written atomically.

A run folder holds ``step-NNNNNNN/`` folders and a ``latest`` pointer to the last complete one::

    run/
      latest                    # text: "step-0000200"
      step-0000200/
        model.params  arch.json # the weights and the architecture (bort.model.save_model)
        trainer-rank0.states    # optimizer state, one file per worker
        config.json             # the run's resolved settings
        state.json              # step, data position, metrics, anything the loop needs
        rng.pkl                 # Python and NumPy random states of rank 0

A folder is written under a temporary name and renamed once complete, and the pointer is
replaced atomically, so a crash while writing never damages the last good checkpoint.

MXNet cannot save its random generator's state; loops that need bit-exact resume reseed it
from (seed, step) at every step instead (see :func:`step_seed`).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from typing import Any, Dict, List, Optional

import mxnet as mx
import numpy as np

from .distributed import Comm
from .model import BortModel, load_params, save_model, PARAMS_FILE

__all__ = ['CheckpointManager', 'step_seed', 'write_json_atomic']

log = logging.getLogger(__name__)

POINTER = 'latest'


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A deterministic seed for one step of one worker (for ``mx.random.seed``)."""
    return (seed * 1_000_003 + step * 7_919 + rank) % (2 ** 31 - 1)


def write_json_atomic(path: str, value: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
        f.write('\n')
    os.replace(tmp, path)


class CheckpointManager:
    """Save and restore ``step-NNNNNNN/`` checkpoints under ``folder``.

    Parameters
    ----------
    folder : str
        The run folder.
    comm : Comm
        Rank 0 writes the shared files; every rank writes its trainer state.
    keep : int, optional
        Keep only the newest ``keep`` checkpoints (None keeps all).
    """

    def __init__(self, folder: str, comm: Optional[Comm] = None, keep: Optional[int] = None):
        self.folder = folder
        self.comm = comm or Comm()
        self.keep = keep
        if self.comm.is_root:
            os.makedirs(folder, exist_ok=True)

    @staticmethod
    def name(step: int) -> str:
        return f'step-{step:07d}'

    def latest(self) -> Optional[str]:
        """Path of the last complete checkpoint, or None."""
        pointer = os.path.join(self.folder, POINTER)
        if not os.path.exists(pointer):
            return None
        with open(pointer) as f:
            path = os.path.join(self.folder, f.read().strip())
        return path if os.path.isdir(path) else None

    def list(self) -> List[str]:
        """Complete checkpoints, oldest first."""
        if not os.path.isdir(self.folder):
            return []
        names = sorted(n for n in os.listdir(self.folder)
                       if n.startswith('step-') and '.tmp' not in n)
        return [os.path.join(self.folder, n) for n in names]

    def save(self, step: int, model: BortModel, trainer: Optional[mx.gluon.Trainer],
             config: Dict, state: Dict) -> str:
        """Write checkpoint ``step`` (collective: every worker must call it)."""
        final = os.path.join(self.folder, self.name(step))
        tmp = final + '.tmp'
        if self.comm.is_root:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        self.comm.barrier()
        if trainer is not None:
            trainer.save_states(os.path.join(tmp, f'trainer-rank{self.comm.rank}.states'))
        self.comm.barrier()
        if self.comm.is_root:
            save_model(model, tmp)
            write_json_atomic(os.path.join(tmp, 'config.json'), config)
            write_json_atomic(os.path.join(tmp, 'state.json'), dict(state, step=step))
            with open(os.path.join(tmp, 'rng.pkl'), 'wb') as f:
                pickle.dump({'python': random.getstate(), 'numpy': np.random.get_state()}, f)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            with open(os.path.join(self.folder, POINTER + '.tmp'), 'w') as f:
                f.write(self.name(step) + '\n')
            os.replace(os.path.join(self.folder, POINTER + '.tmp'),
                       os.path.join(self.folder, POINTER))
            self._prune()
            log.info('checkpoint %s written', final)
        self.comm.barrier()
        return final

    def load(self, path: str, model: BortModel, trainer: Optional[mx.gluon.Trainer] = None,
             restore_rng: bool = True) -> Dict:
        """Restore weights, this worker's trainer state and the random states; return state.json.
        """
        load_params(model, os.path.join(path, PARAMS_FILE), ctx=self.comm.ctx)
        if trainer is not None:
            states = os.path.join(path, f'trainer-rank{self.comm.rank}.states')
            if not os.path.exists(states):
                raise FileNotFoundError(f'{states} is missing: the checkpoint was written by a '
                                        f'run with fewer workers than this one ({self.comm.size})')
            trainer.load_states(states)
        if restore_rng:
            with open(os.path.join(path, 'rng.pkl'), 'rb') as f:
                rng = pickle.load(f)
            random.setstate(rng['python'])
            np.random.set_state(rng['numpy'])
        with open(os.path.join(path, 'state.json')) as f:
            return json.load(f)

    def _prune(self) -> None:
        if not self.keep:
            return
        for path in self.list()[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)
