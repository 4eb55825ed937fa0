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
   ``best_arch.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from functools import partial
from typing import Dict, List, Optional

from ..arch import Architecture, get_arch
from ..checkpoint import write_json_atomic
from ..distributed import Comm
from ..log import progress as rank0_progress
from ..model import PARAMS_FILE
from ..pretrain.default_teacher import file_digest, resolve_teacher
from ..pretrain.masking import masking_for
from ..pretrain.teacher import Teacher
from .compare import run_comparison
from .config import SearchConfig, resolve_grid
from .data import SearchData, corpus_sequences, make_search_data
from .evaluate import CandidateEvaluator, ResultStore
from .inference import CostModel
from .report import score_records, write_outputs
from .space import arch_key, build_space
from .strategies import make_strategy
from .targets import TeacherTargets

__all__ = ['run_search', 'CONFIG_FILE']

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'


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
           'train_batches': config.train_batches or config.steps}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(config.out, 'teacher_cache', digest)


def _describe(arch: Architecture, label: str, costs: Dict) -> Dict:
    d, a, h, i = arch.tuple
    return dict(label=label, num_layers=d, num_heads=a, units=h, hidden_size=i, **costs)


def run_search(config: SearchConfig, comm: Optional[Comm] = None) -> Dict:
    """Run the search ``config`` describes; rank 0 writes the outputs into ``config.out``.

    Parameters
    ----------
    config : SearchConfig
    comm : Comm, optional
        Workers; default single-process.

    Returns
    -------
    dict
        On rank 0: ``table`` (Markdown), ``best`` (the rank-1 record), ``candidates`` (ranked
        records), ``complete`` (False when ``max_candidates`` stopped the search early),
        ``teacher_forward_calls`` (all workers), ``wall_seconds``, ``teacher_cache`` (memory).
        On other ranks: ``{}``.
    """
    comm = comm or Comm()
    config.validate()
    if config.strategy == 'compare':  # FPTAS and BO at an equal budget: bort.search.compare
        return run_comparison(config, run_search, comm)
    start = time.time()
    bars = partial(rank0_progress, comm=comm, disable=not config.progress)
    if comm.is_root:
        os.makedirs(config.out, exist_ok=True)
        write_json_atomic(os.path.join(config.out, CONFIG_FILE),
                          dict(config.to_dict(), fingerprint=config.fingerprint()))

    # 1. teacher, corpus, batches
    model, tokenizer, teacher_folder = _root_first(
        comm, lambda: resolve_teacher(config.teacher, config.resolved_cache_dir))
    corpus = _corpus_files(config, comm)
    train_batches = config.train_batches or config.steps
    sequences = corpus_sequences(corpus, tokenizer, config.seq_len,
                                 config.batch_size * (train_batches + config.heldout_batches),
                                 config.seed)
    data: SearchData = make_search_data(
        sequences, masking_for(tokenizer, config.mask_ratio, seq_len=config.seq_len),
        config.batch_size, train_batches, config.heldout_batches, config.seed, tokenizer.pad_id,
        config.seq_len)
    log.info('teacher %s <%s> from %s; search batches: %s', model.arch.label,
             ', '.join(map(str, model.arch.tuple)), teacher_folder, data.summary())

    # 2. the teacher's outputs, once
    folder = _cache_folder(config, teacher_folder, corpus) if config.teacher_cache else None
    targets = TeacherTargets(Teacher(model), data, comm.ctx, folder, config.cache_topk,
                             config.cache_tail, config.temperature)
    targets.build(comm, progress=bars)

    # 3. candidates
    costs = CostModel(config, config.out, ctx=comm.ctx)
    teacher_weights = file_digest(os.path.join(teacher_folder, PARAMS_FILE))
    evaluator = CandidateEvaluator(config, comm, targets, costs,
                                   ResultStore(os.path.join(config.out, 'candidates'),
                                               config.fingerprint(teacher_weights)),
                                   progress=bars)
    space = build_space(resolve_grid(config), base=model.arch)
    teacher_arch = model.arch.replace(use_pooler=False)
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
    complete = comm.broadcast_object(strategy.finished() if comm.is_root else None)
    calls = int(comm.allreduce_sum(targets.calls))
    if not comm.is_root:
        return {}

    # 4. outputs
    teacher = _describe(teacher_arch, model.arch.name or os.path.basename(teacher_folder),
                        teacher_costs)
    if config.error == 'kl' or targets.cached:  # online, the entropy costs teacher passes
        teacher['heldout_entropy'] = (evaluator.error_offset if config.error == 'kl'
                                      else targets.heldout_entropy())
    ranked = score_records(records, teacher)
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
               f'sequence length {config.seq_len}).']
    if not complete:
        notes.append('**Incomplete**: the max_candidates budget stopped the search; rerun with '
                     'the same --out to finish it.')
    wall = round(time.time() - start, 1)
    extra = {'complete': complete, 'space': space.summary(), 'strategy': strategy.summary(),
             'data': data.summary(), 'teacher_cache': memory,
             'run': {'teacher_forward_calls': calls, 'wall_seconds': wall,
                     'workers': comm.size, 'fingerprint': config.fingerprint()}}
    table = write_outputs(config.out, ranked, teacher, ref_rows, costs.describe(), extra,
                          best_arch, notes, config.error)
    strategy.write_outputs(config.out, ranked)
    log.info('search done in %.0f s: %d candidates, best <%s> (W = %.3f); outputs in %s', wall,
             len(ranked), ', '.join(map(str, best_arch.tuple)) if best_arch else '-',
             ranked[0]['w'] if ranked else float('nan'), config.out)
    return {'table': table, 'best': ranked[0] if ranked else None, 'candidates': ranked,
            'complete': complete, 'teacher_forward_calls': calls, 'wall_seconds': wall,
            'teacher_cache': memory}
