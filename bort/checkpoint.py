"""One checkpoint format for every training loop, written atomically.

A run folder holds ``step-NNNNNNN/`` folders and a ``latest`` pointer to the last complete one::

    run/
      latest                    # text: "step-0000200"
      step-0000200/
        model.params  arch.json # the weights and the architecture (bort.model.save_model)
        trainer-rank0.params    # optimizer state arrays, one file per worker (MXNet's
        trainer-rank0.json      #   NDArray format) and their layout and update counts
        config.json             # the run's resolved settings
        state.json              # step, data position, metrics, anything the loop needs
        rng.json                # Python and NumPy random states of rank 0

A folder is written under a temporary name and renamed once complete, and the pointer is
replaced atomically, so a crash while writing never damages the last good checkpoint. The
pointer is read strictly (:meth:`CheckpointManager.latest`): one naming a folder that is not
there, or checkpoints without a pointer, is an error, never a fresh start that would overwrite
them.

A resumed run must be the run that wrote the checkpoint: :func:`check_resume` compares every
setting that changes results (paths resolved) and names each one that differs.

Nothing in a checkpoint is unpickled: MXNet's own ``Trainer.save_states`` pickles the optimizer
(and loading a crafted file would run its code), so the optimizer's state arrays are written
with ``mx.nd.save`` and everything else as JSON. Checkpoints in the earlier pickled layout
(``rng.pkl``, ``trainer-rank*.states``) are refused with a message, never loaded.

MXNet cannot save its random generator's state; loops that need bit-exact resume reseed it
from (seed, step) at every step instead (see :func:`step_seed`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from typing import Any, Dict, Iterable, List, Mapping, Optional

import mxnet as mx
import numpy as np

from .distributed import Comm
from .errors import ConfigError, UserError, read_json
from .model import BortModel, load_params, save_arrays, save_model, PARAMS_FILE
from .runlock import replace_folder

__all__ = ['CheckpointManager', 'step_seed', 'write_json_atomic', 'save_trainer_state',
           'load_trainer_state', 'CheckpointFormatError', 'MissingCheckpointError',
           'ResumeMismatchError', 'resume_differences', 'check_resume', 'settings_record']

log = logging.getLogger(__name__)

POINTER = 'latest'
RNG_FILE = 'rng.json'
TRAINER_FORMAT = 'bort-trainer-state'
_PICKLED = ('rng.pkl', '.states')


class CheckpointFormatError(UserError, ValueError):
    """A checkpoint folder that this version does not load (e.g. the old pickled layout)."""


class MissingCheckpointError(UserError, FileNotFoundError):
    """The ``latest`` pointer names a folder that is not there (or checkpoints lack a pointer)."""


class ResumeMismatchError(ConfigError):
    """A resumed run's settings differ from the checkpoint's in a way that changes results."""


#: Key of :func:`settings_record` under which the resolved paths are saved.
RESOLVED_KEY = 'resolved_paths'


def _resolve(value: Any) -> Any:
    # realpath: ./runs/x, runs/x/ and a symlink to it are one folder.
    if isinstance(value, str) and value:
        return os.path.realpath(os.path.expanduser(value))
    return value


def settings_record(settings: Mapping[str, Any], paths: Iterable[str] = ()) -> Dict[str, Any]:
    """What a checkpoint saves as ``config.json``: the settings, plus the fields named in
    ``paths`` resolved to absolute real paths (under :data:`RESOLVED_KEY`), so that a resume
    from another working folder still compares the same folders."""
    record = json.loads(json.dumps(dict(settings), default=str))
    record[RESOLVED_KEY] = {k: _resolve(settings.get(k)) for k in paths}
    return record


def resume_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       paths: Iterable[str] = (), ignore: Iterable[str] = ()) -> List[str]:
    """The settings in which ``current`` differs from ``saved``, as ``'--flag: old -> new'``.

    Parameters
    ----------
    saved : mapping
        The checkpoint's ``config.json`` (:func:`settings_record`).
    current : mapping
        This run's settings (``dataclasses.asdict(config)``).
    paths : iterable of str
        Fields holding file or folder paths: compared resolved (:func:`os.path.realpath`), so
        ``./runs/x/`` equals ``runs/x``.
    ignore : iterable of str
        Fields that do not change results (logging, evaluation cadence, ``resume`` itself).
    """
    paths, ignore = set(paths), set(ignore)
    current = json.loads(json.dumps(dict(current), default=str))  # tuples -> lists, as saved
    resolved = saved.get(RESOLVED_KEY) or {}
    out = []
    for key in sorted(current):
        if key in ignore:
            continue
        old, new = saved.get(key), current[key]
        if key in paths:
            same = (resolved.get(key, _resolve(old)) == _resolve(new)) if old != new else True
        else:
            same = old == new
        if not same:
            out.append(f'--{key}: {old!r} -> {new!r}' if key in saved
                       else f'--{key}: not in the checkpoint -> {new!r}')
    return out


def check_resume(checkpoint: str, current: Mapping[str, Any], paths: Iterable[str] = (),
                 ignore: Iterable[str] = ()) -> None:
    """Refuse to resume ``checkpoint`` under settings that change results.

    Raises
    ------
    ResumeMismatchError
        Naming every differing setting with its saved and its new value.
    """
    source = os.path.join(checkpoint, 'config.json')
    try:
        with open(source, encoding='utf-8') as f:
            saved = json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointFormatError(f'{source}: not valid JSON ({err.msg})') from None
    changed = resume_differences(saved, current, paths, ignore)
    if changed:
        raise ResumeMismatchError(
            f'cannot resume {checkpoint} with other settings ({"; ".join(changed)}): the run '
            f'would not repeat an uninterrupted one. Resume with the same settings, or choose '
            f'another output folder')


def _flatten_state(state, key: str, arrays: Dict[str, mx.nd.NDArray]):
    """An optimizer state (None, an NDArray, or nested tuples/lists of them) -> a JSON layout,
    its arrays stored in ``arrays`` under ``key``-derived names."""
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        arrays[key] = state
        return 'array'
    if isinstance(state, (tuple, list)):
        return [_flatten_state(part, f'{key}.{i}', arrays) for i, part in enumerate(state)]
    raise CheckpointFormatError(f'cannot save an optimizer state of type {type(state).__name__}')


def _unflatten_state(layout, key: str, arrays: Dict[str, mx.nd.NDArray], ctx: mx.Context,
                     source: str):
    if layout is None:
        return None
    if layout == 'array':
        if key not in arrays:
            raise CheckpointFormatError(f'{source}: optimizer state array {key!r} is missing')
        return arrays[key].as_in_context(ctx)
    if isinstance(layout, list):
        return tuple(_unflatten_state(part, f'{key}.{i}', arrays, ctx, source)
                     for i, part in enumerate(layout))
    raise CheckpointFormatError(f'{source}: unknown optimizer state layout {layout!r}')


def save_trainer_state(trainer: mx.gluon.Trainer, prefix: str) -> None:
    """Write a trainer's optimizer state to ``prefix.params`` (arrays) and ``prefix.json``.

    The learning rate and hyperparameters are not saved: loops rebuild the optimizer from their
    config and set the rate every step. What is saved is what the next update reads: every
    parameter's state arrays (Adam's moments, SGD's momentum) and the update counters.
    """
    # pylint: disable=protected-access
    updater = trainer._updaters[0]
    optimizer = updater.optimizer
    arrays: Dict[str, mx.nd.NDArray] = {}
    layout = {str(index): _flatten_state(state, f'state{index}', arrays)
              for index, state in updater.states.items()}
    meta = {'format': TRAINER_FORMAT, 'version': 1, 'optimizer': type(optimizer).__name__,
            'num_update': int(optimizer.num_update),
            'index_update_count': {str(k): int(v)
                                   for k, v in optimizer._index_update_count.items()},
            'states': layout}
    save_arrays(prefix + '.params', arrays)
    write_json_atomic(prefix + '.json', meta)


def load_trainer_state(trainer: mx.gluon.Trainer, prefix: str, ctx: mx.Context) -> None:
    """Restore what :func:`save_trainer_state` wrote into ``trainer`` (built with the same
    optimizer over the same parameters).

    Raises
    ------
    CheckpointFormatError
        The files are not this format, or were written for another optimizer.
    """
    source = prefix + '.json'
    meta = read_json(source, what='trainer state file', error=CheckpointFormatError)
    if meta.get('format') != TRAINER_FORMAT:
        raise CheckpointFormatError(f'{source}: not a {TRAINER_FORMAT} file')
    missing = sorted({'optimizer', 'num_update', 'index_update_count', 'states'} - set(meta))
    if missing:
        raise CheckpointFormatError(f'{source}: damaged trainer state file ({", ".join(missing)} '
                                    f'missing)')
    # pylint: disable=protected-access
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    updater = trainer._updaters[0]
    optimizer = updater.optimizer
    if meta['optimizer'] != type(optimizer).__name__:
        raise CheckpointFormatError(f'{source}: written for optimizer {meta["optimizer"]}, '
                                    f'this run uses {type(optimizer).__name__}')
    try:
        arrays = mx.nd.load(prefix + '.params') if meta['states'] else {}
    except mx.base.MXNetError:  # its message is a C++ trace naming no file
        raise CheckpointFormatError(f'{prefix}.params: not a readable MXNet arrays file '
                                    f'(truncated or damaged)') from None
    if not isinstance(arrays, dict):
        raise CheckpointFormatError(f'{prefix}.params: expected named arrays')
    states = {int(k): _unflatten_state(v, f'state{k}', arrays, ctx, source)
              for k, v in meta['states'].items()}
    for each in trainer._updaters:
        each.states = dict(states)
        each.states_synced = dict.fromkeys(states, True)
        each.optimizer = optimizer
    optimizer.num_update = int(meta['num_update'])
    counts = {int(k): int(v) for k, v in meta['index_update_count'].items()}
    # Every update first selects the counts of its device (_set_current_context) from this
    # table: replacing only _index_update_count would be undone at the first update, and a
    # bias-corrected Adam would restart its correction after every resume.
    devices = set(optimizer._all_index_update_counts) | {ctx.device_id}
    optimizer._all_index_update_counts = {device: dict(counts) for device in devices}
    optimizer._index_update_count = optimizer._all_index_update_counts[ctx.device_id]
    optimizer.param_dict = dict(enumerate(trainer._params))


def _rng_state() -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {'python': [version, list(internal), gauss],
            'numpy': [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A deterministic seed for one step of one worker (for ``mx.random.seed``)."""
    return (seed * 1_000_003 + step * 7_919 + rank) % (2 ** 31 - 1)


def _json_default(value: Any) -> Any:
    """NumPy scalars as numbers (not their string), anything else unknown as its string."""
    return value.item() if isinstance(value, np.generic) else str(value)


def write_json_atomic(path: str, value: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(value, f, indent=2, sort_keys=True, default=_json_default)
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
        """Path of the last complete checkpoint, or None when the folder holds none.

        Raises
        ------
        MissingCheckpointError
            The pointer names a folder that is not a checkpoint here, or checkpoint folders
            exist without a pointer: a fresh start would overwrite them, so the user decides.
        """
        pointer = os.path.join(self.folder, POINTER)
        found = [os.path.basename(p) for p in self.list()]
        if not os.path.exists(pointer):
            if found:
                raise MissingCheckpointError(
                    f'{self.folder} holds checkpoints ({", ".join(found)}) but no {POINTER} '
                    f'pointer; nothing was changed. Write the name of the one to resume into '
                    f'{pointer}, or choose another output folder')
            return None
        with open(pointer, encoding='utf-8') as f:
            name = f.read().strip()
        path = os.path.join(self.folder, name)
        if (not name.startswith('step-') or os.path.basename(name) != name
                or not os.path.isdir(path)):
            raise MissingCheckpointError(
                f'{pointer} names {name!r}, which is not a checkpoint folder in {self.folder} '
                f'(complete checkpoints: {", ".join(found) or "none"}); nothing was changed. '
                f'Write the name of the one to resume into {pointer}, or choose another '
                f'output folder')
        return path

    def list(self) -> List[str]:
        """Complete checkpoints, oldest first."""
        if not os.path.isdir(self.folder):
            return []
        # Only exact names: step-N.tmp (being written) and step-N.old-PID (being replaced)
        # are not checkpoints.
        names = sorted((n for n in os.listdir(self.folder)
                        if re.fullmatch(r'step-\d+', n)
                        and os.path.isdir(os.path.join(self.folder, n))),
                       key=lambda n: int(n[len('step-'):]))  # step-10000000 after step-9999999
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
            save_trainer_state(trainer, os.path.join(tmp, f'trainer-rank{self.comm.rank}'))
        self.comm.barrier()
        if self.comm.is_root:
            save_model(model, tmp)
            write_json_atomic(os.path.join(tmp, 'config.json'), config)
            write_json_atomic(os.path.join(tmp, 'state.json'), dict(state, step=step))
            write_json_atomic(os.path.join(tmp, RNG_FILE), _rng_state())
            replace_folder(tmp, final)  # an earlier step-N stays until this one is whole
            pointer_tmp = os.path.join(self.folder, f'{POINTER}.tmp{os.getpid()}')
            with open(pointer_tmp, 'w') as f:
                f.write(self.name(step) + '\n')
            os.replace(pointer_tmp, os.path.join(self.folder, POINTER))
            self._prune()
            log.info('checkpoint %s written', final)
        self.comm.barrier()
        return final

    def load(self, path: str, model: BortModel, trainer: Optional[mx.gluon.Trainer] = None,
             restore_rng: bool = True) -> Dict:
        """Restore weights, this worker's trainer state and the random states; return state.json.

        Raises
        ------
        CheckpointFormatError
            ``path`` is in the earlier pickled layout (not loaded: unpickling runs code).
        FileNotFoundError
            This worker's trainer state is missing (the run had fewer workers).
        """
        pickled = sorted(n for n in os.listdir(path) if n.endswith(_PICKLED))
        if pickled:
            raise CheckpointFormatError(
                f'{path} holds pickled files ({", ".join(pickled)}) from an earlier version of '
                f'this project; they are not loaded because unpickling can run code. Start a '
                f'new run, or continue from its weights with --init_from {path}')
        load_params(model, os.path.join(path, PARAMS_FILE), ctx=self.comm.ctx)
        if trainer is not None:
            prefix = os.path.join(path, f'trainer-rank{self.comm.rank}')
            if not os.path.exists(prefix + '.json'):
                raise FileNotFoundError(f'{prefix}.json is missing: the checkpoint was written by '
                                        f'a run with fewer workers than this one '
                                        f'({self.comm.size})')
            load_trainer_state(trainer, prefix, self.comm.ctx)
        if restore_rng:
            source = os.path.join(path, RNG_FILE)
            try:
                _set_rng_state(read_json(source, what='random state file',
                                         error=CheckpointFormatError))
            except (KeyError, TypeError, ValueError, IndexError) as err:
                if isinstance(err, CheckpointFormatError):
                    raise
                raise CheckpointFormatError(f'{source}: damaged random state file '
                                            f'({type(err).__name__}: {err})') from None
        source = os.path.join(path, 'state.json')
        state = read_json(source, what='checkpoint state file', error=CheckpointFormatError)
        if not isinstance(state.get('step'), int) or isinstance(state['step'], bool):
            raise CheckpointFormatError(f'{source}: damaged checkpoint state file (no integer '
                                        f'"step")')
        return state

    def _prune(self) -> None:
        if not self.keep:
            return
        for path in self.list()[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)
