"""Bort in miniature: search -> distillation pretraining -> fine-tuning on one student, one command.

::

    python -m bort.experiments.miniature --glue_dir GLUE --budget small --out runs/mini_small
    python -m bort.experiments.miniature --glue_dir GLUE --budget full --out runs/mini_full

On the built-in teacher (all-MiniLM-L6-v2, MLM-adapted) and the docstring corpus, in stages,
each cached in its folder under ``--out`` (:mod:`bort.experiments.stages`; ``kill -9`` and the
same command continues):

1. ``search``: the FPTAS (the default search, or the budget's smaller one); its winner and a
   comparison architecture of similar cost (:func:`choose_comparison`);
2. ``data``, ``reference``: pretraining shards of held-back docstring text; the teacher's
   held-out MLM accuracy and the most-frequent-token rate on the evaluation batches;
   ``teacher_strength/s<steps>`` (``--teacher_steps``): the built-in teacher adapted in that
   many steps, scored on the same positions (``--teacher_table_only`` stops here);
3. ``pretrain/<run>`` (:func:`~bort.experiments.config.students`): with one step budget, for
   each init (from scratch, extracted from the teacher) the winner distilled at each
   temperature, by MLM only for the same steps, and by MLM only for the KD runs' training
   time (equal wall time: KD pays for the teacher's forward pass); the comparison distilled;
4. ``glue``, ``finetune/<model>_<task>_s<seed>``, ``agora/<model>_<task>_s<seed>``: the
   teacher and the chosen students fine-tuned on SST-2 and RTE with one recipe and several
   seeds; Agora where its teacher passes the check (``--agora_unmet``); scores also on
   training rows set aside (``--rte_heldout``, ``--sst2_heldout``), which Agora never sees;
5. ``latency``: every architecture through the fast inference path, interleaved;
6. ``report.md`` and PNGs (:mod:`bort.experiments.report`): each claim's premise and whether
   it held, then a verdict per claim.

This module holds the settings checks, the search and latency stages, the order of the stages
and the command line; the pretraining stages are in :mod:`bort.experiments.pretraining`, the
fine-tuning and Agora stages in :mod:`bort.experiments.finetuning`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from ..checkpoint import write_json_atomic
from ..errors import ConfigError, UserError
from .config import (BUDGETS, RESULT_FIELDS, MiniatureConfig, finetuned_models, socrates_stage,
                     students)
from .finetuning import (agora_check, agora_skipped, dev_size, split_glue, stage_agora,
                         stage_finetune)
from .pretraining import (equal_time_minutes, stage_data, stage_pretrain, stage_reference,
                          stage_teacher_strength)
from .stages import StageLog, read_done, run_stage, stage_done

__all__ = ['run_miniature', 'report_finished', 'stage_names', 'choose_comparison',
           'check_same_settings', 'CONFIG_FILE', 'main']

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'


# -- settings ------------------------------------------------------------------------------------
def check_same_settings(out: str, config: MiniatureConfig) -> None:
    """Refuse a rerun on ``out`` whose result-changing settings differ from the stored ones
    (the cached stages would mix two experiments); the first run stores them."""
    path = os.path.join(out, CONFIG_FILE)
    current = json.loads(json.dumps(config.to_dict(), default=list))
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            saved = json.load(f)
        differ = sorted(k for k in RESULT_FIELDS + ('search_settings',)
                        if k in saved and saved[k] != current.get(k))
        if differ:
            raise ConfigError(f'{out} holds a miniature run with other settings '
                              f'({", ".join(differ)} differ: see its {CONFIG_FILE}); use '
                              f'another --out, or that run\'s settings to continue it')
        return
    os.makedirs(out, exist_ok=True)
    write_json_atomic(path, current)


# -- 1. search -----------------------------------------------------------------------------------
def choose_comparison(ranked: Sequence[Dict], rule: str, band: float = 0.25) -> Dict:
    """The comparison architecture among a search's ranked candidates (rank 1 is the winner).

    Parameters
    ----------
    ranked : sequence of dict
        Candidate records in rank order (``params``, ``error``, ``w`` and the four knobs).
    rule : str
        ``'similar_params_worst_e'``: among the other candidates whose parameter count is
        within ``band`` (relative) of the winner's, the one with the worst (highest) e, ties
        to the nearer count; with none in the band, the nearest in parameters (ties: worse
        e). A costly alternative the search ranked low for its error: the pair that tests
        whether e chose well. ``'runner_up'``: rank 2.
    band : float

    Returns
    -------
    dict
        The chosen record and ``why`` (the rule applied, in words).
    """
    if len(ranked) < 2:
        raise UserError(f'the search ranked {len(ranked)} candidate(s): a comparison needs at '
                        f'least 2 (a smaller --search epsilon)')
    winner, others = ranked[0], list(ranked[1:])
    if rule == 'runner_up':
        return dict(others[0], why='rank 2 by W (runner_up)')
    if rule != 'similar_params_worst_e':
        raise ConfigError(f'unknown comparison rule {rule!r}')
    p0 = float(winner['params'])

    def distance(r):
        return abs(float(r['params']) - p0) / p0

    near = [r for r in others if distance(r) <= band]
    if near:
        choice = max(near, key=lambda r: (r['error'], -distance(r)))
        why = (f'the worst e among the {len(near)} other candidate(s) within ±{band:.0%} of '
               f"the winner's parameter count")
    else:
        choice = min(others, key=lambda r: (distance(r), -r['error']))
        why = (f"no other candidate within ±{band:.0%} of the winner's parameter count: the "
               f'nearest one ({distance(choice):+.0%})')
    return dict(choice, why=why)


def _knobs(record: Dict) -> Dict[str, int]:
    return {k: int(record[k]) for k in ('num_layers', 'num_heads', 'units', 'hidden_size')}


def _slim(record: Dict) -> Dict:
    keys = ('rank', 'num_layers', 'num_heads', 'units', 'hidden_size', 'params',
            'inference_cost', 'error', 'error_sd', 'w', 'w_low', 'w_high', 'error_seeds')
    return {k: record[k] for k in keys if k in record}


def stage_search(config: MiniatureConfig, teacher: str, folder: str) -> Dict:
    """Run the search; write ``winner_arch.json`` and ``comparison_arch.json`` in ``folder``."""
    # pylint: disable=import-outside-toplevel
    from ..arch import load_arch
    from ..search import SearchConfig, run_search
    values = dict(config.search_settings(), teacher=teacher, out=os.path.join(folder, 'run'),
                  cache_dir=config.cache_dir, seed=config.seed, progress=config.progress)
    if config.corpus and 'corpus' not in values:
        values['corpus'] = tuple(config.corpus)
    search = SearchConfig(**values)
    result = run_search(search)
    if not result['complete']:
        raise UserError('the search stopped before its end (max_candidates): the miniature '
                        'needs a complete search; drop max_candidates from --search')
    ranked = result['candidates']
    comparison = choose_comparison(ranked, config.comparison_rule, config.params_band)
    with open(os.path.join(search.out, 'results.json'), encoding='utf-8') as f:
        results = json.load(f)
    best = load_arch(os.path.join(search.out, 'best_arch.json'))
    archs = {}
    for role, record in (('winner', ranked[0]), ('comparison', comparison)):
        arch = best.replace(name=f'{role}_' + '_'.join(map(str, _knobs(record).values())),
                            **_knobs(record))
        path = os.path.join(folder, f'{role}_arch.json')
        write_json_atomic(path, arch.to_dict())
        archs[role] = path
    trust = results.get('trust', {})
    return {'winner': _slim(ranked[0]), 'comparison': dict(_slim(comparison),
                                                          why=comparison['why']),
            'candidates': [_slim(r) for r in ranked], 'teacher': results.get('teacher', {}),
            'baseline': results.get('baseline', {}), 'table': result['table'],
            'sigma': trust.get('noise', {}).get('sigma'),
            'verdict': trust.get('verdict', {}).get('text', ''),
            'decided_by': trust.get('verdict', {}).get('decided_by'),
            'space': results.get('space', {}), 'settings': search.to_dict(), 'archs': archs}


# -- 4. latency ------------------------------------------------------------------------------------
def stage_latency(config: MiniatureConfig, models: Dict[str, str], folder: str) -> Dict:
    """Every architecture through the fast path, timed side by side (rounds interleaved)."""
    # pylint: disable=import-outside-toplevel
    from ..costs import num_parameters
    from ..inference.fast import FastModel
    from ..inference.latency import compare_latency, device_string
    engines = {name: FastModel.from_folder(path) for name, path in models.items()}
    results = compare_latency(engines, config.latency_batch_size, config.latency_seq_len,
                              warmup=3, repeats=int(config.latency_repeats))
    out = {'batch_size': config.latency_batch_size, 'seq_len': config.latency_seq_len,
           'repeats': int(config.latency_repeats), 'device': device_string(),
           'threads': os.environ.get('OMP_NUM_THREADS'), 'models': {}}
    for name, result in results.items():
        arch = engines[name].arch
        out['models'][name] = {'median_ms': 1e3 * result.median, 'q25_ms': 1e3 * result.q25,
                               'q75_ms': 1e3 * result.q75,
                               'samples_ms': [1e3 * s for s in result.samples],
                               'arch': list(arch.tuple), 'params': num_parameters(arch)}
    return out


# -- the whole experiment --------------------------------------------------------------------------
#: The stages of the teacher-strength table (``--teacher_table_only`` runs these alone).
TABLE_STAGES = ('teacher', 'data', 'reference')


def agora_stage_names(config: MiniatureConfig, tasks: Optional[Sequence[str]] = None
                      ) -> List[str]:
    """Every Agora stage ``config`` asks for, on ``tasks`` (default: all of
    ``--agora_tasks``); a task skipped by ``--agora_unmet skip`` is decided when the run gets
    there."""
    return [f'agora/{m}_{t}_s{s}' for t in (config.agora_tasks if tasks is None else tasks)
            for m in config.agora_models for s in config.seeds]


def stage_names(config: MiniatureConfig) -> List[str]:
    """Every stage of the experiment ``config`` describes, in the order they run (each one's
    folder is ``<out>/<name>``)."""
    names = list(TABLE_STAGES) + [f'teacher_strength/s{n}' for n in config.teacher_steps]
    if config.teacher_table_only:
        return names
    names.insert(1, 'search')
    names += [f'pretrain/{s.name}' for s in students(config)] + ['glue']
    names += [f'finetune/{m}_{t}_s{s}' for t in config.tasks for s in config.seeds
              for m in finetuned_models(config)]
    return names + agora_stage_names(config) + ['latency']


def _sizes(config: MiniatureConfig, glue: Dict) -> Dict[str, int]:
    sizes = {t: dev_size(t, glue['train']) for t in config.tasks}
    for task, rows in config.heldout_rows().items():
        sizes[f'{task}-heldout'] = rows
    return sizes


def report_finished(config: MiniatureConfig) -> Dict[str, Any]:
    """Write the report of the stages finished so far in ``config.out`` (nothing is run; the
    run may still be going on); the missing stages are listed in it."""
    from .report import write_report  # pylint: disable=import-outside-toplevel
    config = config.resolved()
    config.validate()
    if not os.path.isfile(os.path.join(config.out, CONFIG_FILE)):
        raise UserError(f'{config.out} holds no miniature run (no {CONFIG_FILE}): nothing to '
                        f'report')
    check_same_settings(config.out, config)
    stages = StageLog()
    for name in stage_names(config):
        folder = os.path.join(config.out, name)
        if stage_done(folder):
            stages.add(name, dict(read_done(folder), cached=True))
    skipped = set(agora_stage_names(config, [t for t in config.agora_tasks
                                             if agora_skipped(config, stages, t)]))
    missing = [n for n in stage_names(config) if n not in stages.records and n not in skipped]
    sizes = _sizes(config, stages.figures('glue')) if 'glue' in stages.records else {}
    return write_report(config, stages, sizes, missing)


def _pretrain_all(config: MiniatureConfig, teacher: str, data: str, search: Dict,
                  stages: StageLog) -> Dict[str, str]:
    """Every pretraining run in order; the equal-time runs get their init's KD time."""
    models = {}
    for student in students(config):
        minutes = 0.0
        if student.objective == 'mlm_time':
            minutes = equal_time_minutes([stages.figures(f'pretrain/{s.name}')
                                          for s in students(config)
                                          if s.distilled and s.role == 'winner'
                                          and s.init == student.init])
        arch = search['archs'][student.role]
        figures = run_stage(f'pretrain/{student.name}',
                            os.path.join(config.out, 'pretrain', student.name),
                            lambda f, a=arch, s=student, m=minutes: stage_pretrain(
                                config, teacher, data, a, s, f, m), stages)
        models[student.name] = figures['model']
    return models


def _agora_all(config: MiniatureConfig, models: Dict[str, str], teacher: str, glue: Dict,
               stages: StageLog) -> None:
    """Agora per task, student and seed, with the teacher check of :func:`agora_check`."""
    for task in config.agora_tasks:
        socrates = stages.figures(socrates_stage(config, task))
        check = agora_check(config, socrates['dev']['accuracy'])
        if check is None:
            log.warning('Agora on %s skipped: the teacher has %.1f %% dev accuracy, not above '
                        '%.1f %% (--agora_unmet skip)', task, 100 * socrates['dev']['accuracy'],
                        100 * config.agora_min_teacher_accuracy)
            continue
        for name in config.agora_models:
            for seed in config.seeds:
                run_stage(f'agora/{name}_{task}_s{seed}',
                          os.path.join(config.out, 'agora', f'{name}_{task}_s{seed}'),
                          lambda f, m=name, s=seed, t=task, c=check: stage_agora(
                              config, t, models[m], s, socrates['folder'], teacher, glue, f,
                              c), stages)


def run_miniature(config: MiniatureConfig) -> Dict[str, Any]:
    """Run (or continue) the miniature experiment ``config`` describes; write the report.

    Returns
    -------
    dict
        ``report`` (report.md's path), ``pngs``, ``verdicts`` (one dict per claim),
        ``premises`` (what each claim assumes, measured), ``stages`` (each stage's record:
        figures, seconds, loads, cached).
    """
    # pylint: disable=import-outside-toplevel
    from ..pretrain.default_teacher import resolve_model_dir
    from ..runlock import hold_folder
    from .report import write_report
    if config.report_only:
        return report_finished(config)
    config = config.resolved()
    config.validate()
    out = config.out
    stages = StageLog()
    with hold_folder(out, what='bort.experiments.miniature'):
        check_same_settings(out, config)
        teacher = run_stage('teacher', os.path.join(out, 'teacher'), lambda _: {
            'folder': resolve_model_dir(config.teacher, config.cache_dir or None,
                                        what='teacher')}, stages)['folder']
        search = None
        if not config.teacher_table_only:
            search = run_stage('search', os.path.join(out, 'search'),
                               lambda f: stage_search(config, teacher, f), stages)
        data = run_stage('data', os.path.join(out, 'data'),
                         lambda f: stage_data(config, teacher, f), stages)['shards']
        run_stage('reference', os.path.join(out, 'reference'),
                  lambda f: stage_reference(config, teacher, data, f), stages)
        for steps in config.teacher_steps:
            run_stage(f'teacher_strength/s{steps}',
                      os.path.join(out, 'teacher_strength', f's{steps}'),
                      lambda f, n=steps: stage_teacher_strength(config, n, data, f), stages)
        if config.teacher_table_only:
            return write_report(config, stages, {}, [n for n in stage_names(
                dataclasses.replace(config, teacher_table_only=False))
                if n not in stages.records])
        models = dict(_pretrain_all(config, teacher, data, search, stages), teacher=teacher)
        glue = run_stage('glue', os.path.join(out, 'glue'), lambda f: split_glue(
            config.glue_dir, config.tasks, f, config.heldout_rows(), config.seed), stages)
        sizes = _sizes(config, glue)
        for task in config.tasks:
            for seed in config.seeds:
                for name in finetuned_models(config):
                    run_stage(f'finetune/{name}_{task}_s{seed}',
                              os.path.join(out, 'finetune', f'{name}_{task}_s{seed}'),
                              lambda f, t=task, m=name, s=seed: stage_finetune(
                                  config, t, models[m], s, glue, f), stages)
        if config.agora_models:
            _agora_all(config, models, teacher, glue, stages)
        first = config.inits[0]
        latency_models = {'teacher': teacher, 'winner': models[f'winner_{first}_kd'],
                          'comparison': models[f'comparison_{first}_kd']}
        run_stage('latency', os.path.join(out, 'latency'),
                  lambda f: stage_latency(config, latency_models, f), stages)
        return write_report(config, stages, sizes)


# -- command line ----------------------------------------------------------------------------------
def build_parser():
    """One flag per :class:`MiniatureConfig` field."""
    # pylint: disable=import-outside-toplevel
    from ..cli import add_dataclass_flags, make_parser
    parser = make_parser(prog='python -m bort.experiments.miniature',
                         description=__doc__.split('\n\n')[0],
                         epilog='budgets: ' + '; '.join(
                             f'{name}: ' + ', '.join(f'{k}={v}' for k, v in preset.items())
                             for name, preset in BUDGETS.items()))
    add_dataclass_flags(parser, MiniatureConfig)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Parse flags, run the experiment, print the verdicts and where the report is."""
    from ..threads import configure_threads  # pylint: disable=import-outside-toplevel
    configure_threads()  # before MXNet is imported
    # pylint: disable=import-outside-toplevel
    from ..cli import emit, parse_configs
    from ..log import setup_logging
    (config,) = parse_configs(build_parser(), [MiniatureConfig], argv)
    setup_logging()
    for noisy in ('bort.checkpoint', 'bort.finetune.loop'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run_miniature(config)
    emit('\n'.join(v['text'] for v in result['verdicts']))
    emit(f"report: {result['report']}")
    return result


if __name__ == '__main__':
    from ..cli import run_main
    run_main(main, logger='bort.experiments.miniature')
