"""One search from settings to table: :func:`run_search`.

Order of work (every worker runs this function; ``horovodrun -np N`` spreads the candidates):

1. rank 0 prepares what is built once and cached (the default teacher, the docstring corpus)
   while the others wait, then every worker loads the teacher and builds the same search
   batches (deterministic from the seed);
2. the teacher's outputs on the search batches are computed once, shared out by rank, and
   stored in ``--out/teacher_cache/`` (skipped with ``--no-teacher_cache``);
3. the strategy (rank 0) proposes candidates, the evaluator trains them across the workers,
   until the strategy is done or ``max_candidates`` trainings were spent;
4. rank 0 scores them (W, rank) and writes ``results.json``, ``table.md``, ``pareto.png``,
   ``best_arch.json``; through the run it logs each candidate's e, costs and training loss to
   ``metrics.jsonl`` and TensorBoard events (``tensorboard --logdir <out>``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from functools import partial
from typing import Dict, List, Optional

from ..arch import Architecture, ArchitectureError, get_arch
from ..checkpoint import write_json_atomic
from ..distributed import Comm
from ..errors import read_json
from ..hardware import announce
from ..log import progress as rank0_progress
from ..model import PARAMS_FILE
from ..pretrain.default_teacher import file_digest, resolve_teacher
from ..pretrain.masking import masking_for
from ..extraction import check_fits
from ..pretrain.teacher import Teacher
from ..runlock import LOCK_FILE, hold_folder
from .compare import COMPARED, run_comparison
from .config import SearchConfig, resolve_grid, run_fingerprint
from .data import SearchData, corpus_sequences, make_search_data
from .evaluate import CandidateEvaluator, ResultStore, SettingsMismatchError
from .inference import CostModel
from .report import RESULTS_FILE, SearchCurves, write_outputs
from .space import arch_key, build_space
from .strategies import make_strategy
from .targets import TeacherTargets
from .checks import measure_trust, score_with_trust, train_batches as _train_batches, \
    unigram_baseline

__all__ = ['run_search', 'CONFIG_FILE', 'LOG_FILE']

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'
LOG_FILE = 'search.log'


def _root_first(comm: Comm, fn):
    """Run ``fn`` on rank 0 first (it may build a cache), then on the others."""
    if comm.is_root:
        value = fn()
        comm.barrier()
        return value
    comm.barrier()
    return fn()


def _corpus_files(config: SearchConfig, comm: Comm) -> List[str]:
    if config.corpus:
        return list(config.corpus)
    from ..pretrain.corpus import python_docs_corpus  # pylint: disable=import-outside-toplevel
    path = os.path.join(config.resolved_cache_dir, 'teachers',
                        f'python_docs_{config.corpus_bytes}.txt')

    def build():
        if not os.path.isfile(path):
            python_docs_corpus(path, config.corpus_bytes)
        return [path]
    return _root_first(comm, build)


def _cache_folder(config: SearchConfig, teacher_folder: str, corpus: List[str]) -> str:
    """The teacher cache's folder: keyed by everything its contents depend on."""
    key = {'format': 3, 'teacher': os.path.abspath(teacher_folder),
           'teacher_weights': file_digest(os.path.join(teacher_folder, PARAMS_FILE)),
           'corpus': [os.path.abspath(c) for c in corpus],
           **{k: getattr(config, k) for k in ('batch_size', 'seq_len', 'mask_ratio', 'seed',
                                               'heldout_batches', 'cache_topk', 'temperature')},
           'train_batches': _train_batches(config)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(config.out, 'teacher_cache', digest)


def _describe(arch: Architecture, label: str, costs: Dict) -> Dict:
    d, a, h, i = arch.tuple
    return dict(label=label, num_layers=d, num_heads=a, units=h, hidden_size=i, **costs)


def _check_resume(config: SearchConfig) -> None:
    """Refuse, before anything is written or built, a rerun whose settings differ from those
    recorded in the folder's config.json (the candidates' settings, the strategy and its own)."""
    path = os.path.join(config.out, CONFIG_FILE)
    if not os.path.exists(path):
        return
    saved = read_json(path, what='search config file')
    if saved.get('run_fingerprint') in (None, run_fingerprint(config)):
        return
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    ignored = {'out', 'max_candidates', 'progress', 'error', 'cache_dir', 'reference'}
    differ = sorted(k for k in known - ignored
                    if k in saved and json.dumps(saved[k], default=list)
                    != json.dumps(getattr(config, k), default=list))
    raise SettingsMismatchError(
        f'{config.out} holds a search with other settings ({", ".join(differ) or "fingerprint"} '
        f'differ{"s" if len(differ) == 1 else ""}: see its config.json); use another --out, '
        f'or that search\'s settings to resume it')


def _check_stored(store: ResultStore) -> None:
    """Refuse a folder whose stored candidates were computed under other settings (e.g. other
    teacher weights behind the same --teacher) before the teacher cache is built."""
    if not os.path.isdir(store.folder):
        return
    for name in sorted(os.listdir(store.folder)):
        if name.endswith('.json'):
            found = read_json(os.path.join(store.folder, name),
                              what='stored candidate').get('fingerprint')
            if found != store.fingerprint:
                raise SettingsMismatchError(
                    f'{os.path.join(store.folder, name)} was computed with other search '
                    f'settings or teacher weights (fingerprint {found}, now '
                    f'{store.fingerprint}): use another --out, or the settings of that run')
            return


def _previous_wall(out: str) -> List[float]:
    """Wall seconds of the earlier runs that wrote this folder's results.json."""
    path = os.path.join(out, RESULTS_FILE)
    try:
        with open(path, encoding='utf-8') as f:
            run = json.load(f).get('run', {})
    except (OSError, ValueError):
        return []
    return list(run.get('sessions_seconds', [run['wall_seconds']] if 'wall_seconds' in run
                        else []))


def run_search(config: SearchConfig, comm: Optional[Comm] = None, hold: bool = True) -> Dict:
    """Run the search ``config`` describes; rank 0 writes the outputs into ``config.out``.

    The output folder is held for the whole run (a second run on it stops at once,
    :func:`bort.runlock.hold_folder`); settings that differ from those already in the folder
    are refused before anything is written; a run that fails before any candidate is stored
    removes the folder it created.

    Parameters
    ----------
    config : SearchConfig
    comm : Comm, optional
        Workers; default single-process.
    hold : bool
        Hold ``config.out`` here; False when the caller already holds it (``run_search.py``
        takes it before its log file goes into the folder).

    Returns
    -------
    dict
        On rank 0: ``table`` (Markdown), ``best`` (the rank-1 record), ``candidates`` (ranked
        records), ``complete`` (False when ``max_candidates`` stopped the search early),
        ``trust`` (noise, fidelity, verdict), ``teacher_forward_calls`` (all workers),
        ``wall_seconds`` (this run), ``teacher_cache`` (memory).
        On other ranks: ``{}``.
    """
    comm = comm or Comm()
    config.validate()
    # The grid is checked before any teacher is built (validity depends on the knobs alone).
    build_space(resolve_grid(config))
    fresh = comm.is_root and (not os.path.isdir(config.out)
                              or set(os.listdir(config.out)) <= {LOCK_FILE, LOG_FILE})
    with (hold_folder(config.out, comm.is_root) if hold else contextlib.nullcontext()):
        try:
            if comm.is_root:
                _check_resume(config)
            comm.barrier()
            if config.strategy == 'compare':  # FPTAS and BO at an equal budget
                return run_comparison(config, run_search, comm)
            return _run(config, comm)
        except Exception:
            # A run that failed before storing anything leaves no half-made folder (teacher
            # caches are tens of MB); a folder with stored candidates is kept for resuming.
            if fresh and not _stored_any(config.out):
                shutil.rmtree(config.out, ignore_errors=True)
            raise


def _stored_any(out: str) -> bool:
    folder = os.path.join(out, 'candidates')
    if os.path.isdir(folder) and any(n.endswith('.json') for n in os.listdir(folder)):
        return True
    return any(os.path.isdir(os.path.join(out, sub, 'candidates')) for sub in COMPARED)


def _run(config: SearchConfig, comm: Comm) -> Dict:
    """:func:`run_search` inside the held folder, settings checked."""
    start = time.time()
    bars = partial(rank0_progress, comm=comm, disable=not config.progress)

    # 1. teacher, corpus, batches
    model, tokenizer, teacher_folder = _root_first(
        comm, lambda: resolve_teacher(config.teacher, config.resolved_cache_dir))
    teacher_weights = file_digest(os.path.join(teacher_folder, PARAMS_FILE))
    store = ResultStore(os.path.join(config.out, 'candidates'),
                        config.fingerprint(teacher_weights))
    if comm.is_root:
        _check_stored(store)
        store.clean()
        write_json_atomic(os.path.join(config.out, CONFIG_FILE),
                          dict(config.to_dict(), fingerprint=config.fingerprint(),
                               run_fingerprint=run_fingerprint(config)))
    corpus = _corpus_files(config, comm)
    train_batches = _train_batches(config)
    sequences = corpus_sequences(corpus, tokenizer, config.seq_len,
                                 config.batch_size * (train_batches + config.heldout_batches),
                                 config.seed)
    data: SearchData = make_search_data(
        sequences, masking_for(tokenizer, config.mask_ratio, seq_len=config.seq_len),
        config.batch_size, train_batches, config.heldout_batches, config.seed, tokenizer.pad_id,
        config.seq_len)
    log.info('teacher %s <%s> from %s; search batches: %s', model.arch.label,
             ', '.join(map(str, model.arch.tuple)), teacher_folder, data.summary())
    announce(log)  # one line: what the CPU runs (float32 without bfloat16 kernels)

    # 2. the teacher's outputs, once
    folder = _cache_folder(config, teacher_folder, corpus) if config.teacher_cache else None
    targets = TeacherTargets(Teacher(model), data, comm.ctx, folder, config.cache_topk,
                             config.cache_tail, config.temperature)
    targets.build(comm, progress=bars)

    # 3. candidates
    costs = CostModel(config, config.out, ctx=comm.ctx)
    teacher_arch = model.arch.replace(use_pooler=False)
    costs.set_reference(teacher_arch)
    evaluator = CandidateEvaluator(config, comm, targets, costs, store, progress=bars,
                                   teacher=model if config.init == 'teacher' else None)
    space = build_space(resolve_grid(config), base=model.arch)
    if config.init == 'teacher':  # every tuple must fit inside the teacher, named if not
        for arch in space.valid:
            try:
                check_fits(arch, teacher_arch)
            except ArchitectureError as err:
                raise ArchitectureError(f'{err} (--init teacher extracts every candidate from '
                                        'the teacher: narrow the grid, or pass --init scratch '
                                        'to train candidates from random weights)') from None
    # Reference rows keep the teacher's vocabulary, as RoBERTa-base is "BERT-base" in the paper.
    references = [teacher_arch.replace(num_layers=r.num_layers, num_heads=r.num_heads,
                                       units=r.units, hidden_size=r.hidden_size)
                  for r in (get_arch(name) for name in config.reference)]
    teacher_costs, *ref_costs = evaluator.cost_of([teacher_arch] + references)
    strategy = make_strategy(config.strategy, config)
    if comm.is_root:
        strategy.setup(space, evaluator, dict(teacher_costs, arch=teacher_arch))
        costs.save()
    records: List[Dict] = []
    curves = SearchCurves(config.out, comm)
    while True:
        proposal = None
        if comm.is_root:
            stop = strategy.finished() or evaluator.budget_left() == 0
            proposal = [] if stop else strategy.propose()
        batch = comm.broadcast_object(proposal)
        if not batch:
            break
        done = evaluator.evaluate(batch)
        records.extend(done)
        if comm.is_root:
            strategy.observe(done)
            curves.candidates(done)
    complete = comm.broadcast_object(strategy.finished() if comm.is_root else None)

    # 4. trust: the seed noise of e and the proxy's fidelity (complete searches only)
    by_tuple = {a.tuple: a for a in space.valid}
    by_tuple.update({arch_key(r): by_tuple.get(arch_key(r)) for r in records})
    repeats = measure_trust(config, comm, evaluator, records, teacher_costs, by_tuple,
                            complete)
    calls = int(comm.allreduce_sum(targets.calls))
    if not comm.is_root:
        return {}

    # 5. outputs
    teacher = _describe(teacher_arch, model.arch.name or os.path.basename(teacher_folder),
                        teacher_costs)
    if config.error == 'kl' or targets.cached:  # online, the entropy costs teacher passes
        teacher['heldout_entropy'] = (evaluator.error_offset if config.error == 'kl'
                                      else targets.heldout_entropy())
    baseline = unigram_baseline(targets, config.steps, evaluator.error_offset)
    ranked, trust = score_with_trust(records, teacher, repeats, config, baseline)
    evaluated = {arch_key(r): r for r in ranked}
    ref_rows = []
    for name, arch, cost in zip(config.reference, references, ref_costs):
        row = _describe(arch, name, cost)
        if arch.tuple in evaluated:
            row.update(w=evaluated[arch.tuple]['w'], error=evaluated[arch.tuple]['error'])
        ref_rows.append(row)
    best_arch = None
    if ranked:
        best = ranked[0]
        best_arch = teacher_arch.replace(num_layers=best['num_layers'],
                                         num_heads=best['num_heads'], units=best['units'],
                                         hidden_size=best['hidden_size'], name='')
    memory = targets.memory()
    notes = [f'Search space: {len(space)} valid tuples, {len(space.skipped)} invalid skipped; '
             f'strategy {strategy.name}'
             + (f', ε = {config.epsilon}' if strategy.name == 'fptas' else '')
             + f'; {len(ranked)} candidates trained for s = {config.steps} steps '
               f'({config.optimizer}, lr {config.lr}, batch {config.batch_size}, '
               f'sequence length {config.seq_len}, {config.heldout_batches} held-out batches).']
    if not complete:
        notes.append('**Incomplete**: the max_candidates budget stopped the search; rerun with '
                     'the same --out to finish it (noise and fidelity are measured then).')
    wall = round(time.time() - start, 1)
    sessions = _previous_wall(config.out) + [wall]
    extra = {'complete': complete, 'space': space.summary(), 'strategy': strategy.summary(),
             'data': data.summary(), 'teacher_cache': memory, 'trust': trust,
             'baseline': baseline,
             'run': {'teacher_forward_calls': calls, 'wall_seconds': wall,
                     'sessions_seconds': sessions,
                     'wall_seconds_total': round(sum(sessions), 1),
                     'load_average': list(os.getloadavg()),
                     'workers': comm.size, 'fingerprint': config.fingerprint(),
                     'run_fingerprint': run_fingerprint(config)}}
    table = write_outputs(config.out, ranked, teacher, ref_rows, costs.describe(), extra,
                          best_arch, notes, config.error)
    strategy.write_outputs(config.out, ranked)
    curves.finish(ranked, wall)
    log.info('search done in %.0f s: %d candidates, best <%s> (W = %.3f); outputs in %s', wall,
             len(ranked), ', '.join(map(str, best_arch.tuple)) if best_arch else '-',
             ranked[0]['w'] if ranked else float('nan'), config.out)
    return {'table': table, 'best': ranked[0] if ranked else None, 'candidates': ranked,
            'complete': complete, 'trust': trust, 'teacher_forward_calls': calls,
            'wall_seconds': wall, 'teacher_cache': memory}
