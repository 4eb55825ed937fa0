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
3. ``pretrain/<run>``: with one token budget, the winner by distillation (``winner_kd``), the
   winner by MLM only (``winner_mlm``) and the comparison by distillation (``comparison_kd``);
4. ``glue``, ``finetune/<model>_<task>_s<seed>``, ``agora/<model>_s<seed>``: each student and the
   teacher fine-tuned on SST-2 and RTE with one recipe and several seeds, Agora on RTE; RTE
   scores also on training rows set aside (``--rte_heldout``), which Agora never sees;
5. ``latency``: every architecture through the fast inference path, interleaved;
6. ``report.md`` and PNGs (:mod:`bort.experiments.report`), with a verdict per claim.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from ..checkpoint import write_json_atomic
from ..errors import ConfigError, UserError
from .config import BUDGETS, MODELS, RESULT_FIELDS, STUDENTS, MiniatureConfig
from .finetuning import dev_size, split_glue, stage_agora, stage_finetune
from .stages import StageLog, read_done, run_stage, stage_done

__all__ = ['run_miniature', 'report_finished', 'stage_names', 'choose_comparison',
           'check_same_settings', 'split_glue', 'pretrain_curve', 'CONFIG_FILE', 'main']

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


# -- 2. data and the held-out reference -----------------------------------------------------------
def _docstring_text(config: MiniatureConfig, folder: str) -> str:
    """The held-back docstring text (after --corpus_skip_bytes), cut at a document boundary."""
    # pylint: disable=import-outside-toplevel
    from ..pretrain.corpus import python_docs_corpus
    from ..pretrain.names import cache_root
    cache = os.path.expanduser(config.cache_dir) if config.cache_dir else cache_root()
    total = config.corpus_skip_bytes + int(config.corpus_bytes)
    full = os.path.join(cache, 'teachers', f'python_docs_{total}.txt')
    if not os.path.isfile(full):
        python_docs_corpus(full, total)
    text = os.path.join(folder, 'corpus.txt')
    with open(full, encoding='utf-8') as f:
        f.seek(config.corpus_skip_bytes)
        body = f.read()
    if config.corpus_skip_bytes:
        cut = body.find('\n\n')
        body = body[cut + 2:] if cut >= 0 else ''
    if len(body.strip()) == 0:
        raise UserError(f'the installed Python has no docstring text beyond '
                        f'{config.corpus_skip_bytes} bytes: pass --corpus files')
    with open(text + '.tmp', 'w', encoding='utf-8') as f:
        f.write(body)
    os.replace(text + '.tmp', text)
    return text


def _max_predictions(seq_len: int) -> int:
    return max(2, round(seq_len * 0.15) + 1)


def stage_data(config: MiniatureConfig, teacher: str, folder: str) -> Dict:
    """Pretraining shards (teacher's tokenizer, 5 % of documents held out)."""
    # pylint: disable=import-outside-toplevel
    from ..pretrain.prepare import PrepConfig, prepare_pretraining_data
    files = list(config.corpus) if config.corpus else [_docstring_text(config, folder)]
    shards = os.path.join(folder, 'shards')
    meta = prepare_pretraining_data(files, teacher, shards, PrepConfig(
        max_seq_length=int(config.seq_len), num_workers=2, eval_fraction=0.05,
        max_predictions=_max_predictions(int(config.seq_len)), seed=config.seed))
    text_bytes = sum(os.path.getsize(p) for p in files)
    return {'shards': shards, 'files': files, 'text_bytes': text_bytes,
            'tokens': meta.get('tokens'), 'sequences': meta.get('sequences'),
            'unk_ratio': meta.get('unk_ratio'), 'vocab_size': meta.get('vocab_size')}


def _pretrain_config(config: MiniatureConfig, data: str, output_dir: str, arch: str,
                     teacher: str, distil: bool):
    from ..pretrain import PretrainConfig  # pylint: disable=import-outside-toplevel
    steps = int(config.pretrain_steps)
    interval = max(1, steps // config.eval_points)
    return PretrainConfig(
        data=data, output_dir=output_dir, arch=arch, teacher=teacher if distil else '',
        kd_weight=config.kd_weight if distil else 0.0,
        mlm_weight=config.mlm_weight if distil else 1.0, temperature=config.temperature,
        max_predictions=_max_predictions(int(config.seq_len)), lr=config.pretrain_lr,
        warmup_ratio=config.pretrain_warmup, schedule='linear', total_steps=steps,
        batch_size=int(config.pretrain_batch_size), seed=config.seed,
        log_interval=min(interval, 50), eval_interval=interval,
        eval_batches=int(config.eval_batches), checkpoint_interval=interval, keep_checkpoints=1,
        resume=True, plot=True)


def stage_reference(config: MiniatureConfig, teacher: str, data: str, folder: str) -> Dict:
    """The teacher on the pretraining runs' held-out batches: its MLM accuracy, the
    most-frequent-token rate and the number of masked positions (the yardstick of noise)."""
    # pylint: disable=import-outside-toplevel
    import mxnet as mx
    from ..pretrain.evaluate import evaluate, most_frequent_rate
    from ..pretrain.masking import masking_for
    from ..pretrain.shards import read_meta
    from ..pretrain.stream import fixed_batches, list_shards
    from ..pretrain.teacher import Teacher
    run = _pretrain_config(config, data, folder, '', teacher, True)
    meta = read_meta(data)
    masking = masking_for(meta, run.mask_ratio, run.max_predictions)
    # The same batches as every run's evaluation (bort.pretrain.loop builds them this way).
    batches = fixed_batches(list_shards(data, 'eval'), run.batch_size, masking,
                            run.eval_batches, pad_id=meta['pad_id'])
    model = Teacher.load(teacher, meta['vocab_size'])
    out = evaluate(model.model, batches, mx.cpu())
    positions = int(sum(float(b.weights.sum()) for b in batches))
    return {'teacher_acc': out['eval_mlm_acc'], 'teacher_top5': out['eval_mlm_top5'],
            'teacher_loss': out['eval_mlm_loss'], 'most_frequent_rate':
            most_frequent_rate(batches), 'positions': positions, 'batches': len(batches)}


def pretrain_curve(metrics_path: str, tokens_per_step: int) -> List[Dict]:
    """Held-out evaluations of a run by step (the last record of a step wins after a
    resume), with the tokens seen."""
    from ..log import MetricsLog  # pylint: disable=import-outside-toplevel
    records = [r for r in MetricsLog(metrics_path).read() if not r.get('final')]
    evals = {r['step']: r for r in records if 'eval_mlm_acc' in r}
    return [{'step': s, 'tokens': s * tokens_per_step, 'acc': evals[s]['eval_mlm_acc'],
             'top5': evals[s]['eval_mlm_top5'], 'loss': evals[s]['eval_mlm_loss']}
            for s in sorted(evals)]


def stage_pretrain(config: MiniatureConfig, teacher: str, data: str, arch: str, distil: bool,
                   folder: str) -> Dict:
    """One pretraining run of the miniature's budget (resumes from its checkpoints)."""
    # pylint: disable=import-outside-toplevel
    from ..arch import load_arch
    from ..costs import num_parameters
    from ..log import MetricsLog
    from ..pretrain import pretrain
    run_dir = os.path.join(folder, 'run')
    run = _pretrain_config(config, data, run_dir, arch, teacher, distil)
    result = pretrain(run)
    tokens_per_step = run.batch_size * int(config.seq_len)
    train = [r for r in MetricsLog(os.path.join(run_dir, 'metrics.jsonl')).read()
             if 'tokens_per_s' in r and not r.get('final')]
    shape = load_arch(arch)
    return {'model': os.path.join(run_dir, 'model'), 'arch': list(shape.tuple),
            'params': num_parameters(shape), 'distilled': distil, 'steps': result['step'],
            'tokens': result['step'] * tokens_per_step,
            'final_acc': result.get('eval_mlm_acc'), 'final_top5': result.get('eval_mlm_top5'),
            'final_loss': result.get('eval_mlm_loss'),
            'most_frequent_rate': result.get('eval_most_frequent_rate'),
            'curve': pretrain_curve(os.path.join(run_dir, 'metrics.jsonl'), tokens_per_step),
            'tokens_per_s': (sum(r['tokens_per_s'] for r in train) / len(train)
                             if train else None),
            'settings': {k: getattr(run, k) for k in ('kd_weight', 'mlm_weight', 'temperature',
                                                      'lr', 'warmup_ratio', 'total_steps',
                                                      'batch_size', 'eval_batches')}}


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
def stage_names(config: MiniatureConfig) -> List[str]:
    """Every stage of the experiment ``config`` describes, in the order they run (each one's
    folder is ``<out>/<name>``)."""
    names = ['teacher', 'search', 'data', 'reference']
    names += [f'pretrain/{name}' for name, _, _ in STUDENTS] + ['glue']
    names += [f'finetune/{m}_{t}_s{s}' for t in config.tasks for s in config.seeds
              for m in MODELS]
    names += [f'agora/{m}_s{s}' for m in config.agora_models for s in config.seeds]
    return names + ['latency']


def _sizes(config: MiniatureConfig, glue: Dict) -> Dict[str, int]:
    sizes = {t: dev_size(t, glue['train']) for t in config.tasks}
    if 'RTE' in config.tasks and config.rte_heldout:
        sizes['RTE-heldout'] = config.rte_heldout
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
    stages, missing = StageLog(), []
    for name in stage_names(config):
        folder = os.path.join(config.out, name)
        if stage_done(folder):
            stages.add(name, dict(read_done(folder), cached=True))
        else:
            missing.append(name)
    sizes = _sizes(config, stages.figures('glue')) if 'glue' in stages.records else {}
    return write_report(config, stages, sizes, missing)


def run_miniature(config: MiniatureConfig) -> Dict[str, Any]:
    """Run (or continue) the miniature experiment ``config`` describes; write the report.

    Returns
    -------
    dict
        ``report`` (report.md's path), ``pngs``, ``verdicts`` (one dict per claim),
        ``stages`` (each stage's record: figures, seconds, loads, cached).
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
        search = run_stage('search', os.path.join(out, 'search'),
                           lambda f: stage_search(config, teacher, f), stages)
        data = run_stage('data', os.path.join(out, 'data'),
                         lambda f: stage_data(config, teacher, f), stages)['shards']
        run_stage('reference', os.path.join(out, 'reference'),
                  lambda f: stage_reference(config, teacher, data, f), stages)
        models = {'teacher': teacher}
        for name, role, distil in STUDENTS:
            arch = search['archs'][role]
            figures = run_stage(f'pretrain/{name}', os.path.join(out, 'pretrain', name),
                                lambda f, a=arch, d=distil: stage_pretrain(config, teacher, data,
                                                                           a, d, f), stages)
            models[name] = figures['model']
        glue = run_stage('glue', os.path.join(out, 'glue'), lambda f: split_glue(
            config.glue_dir, config.tasks, f, config.rte_heldout, config.seed), stages)
        sizes = _sizes(config, glue)
        for task in config.tasks:
            for seed in config.seeds:
                for name in MODELS:
                    run_stage(f'finetune/{name}_{task}_s{seed}',
                              os.path.join(out, 'finetune', f'{name}_{task}_s{seed}'),
                              lambda f, t=task, m=name, s=seed: stage_finetune(
                                  config, t, models[m], s, glue, f), stages)
        if config.agora_models:
            # Socrates: the teacher fine-tuned on RTE with the first seed.
            labeller = stages.figures(f'finetune/teacher_RTE_s{config.seeds[0]}')['folder']
            for name in config.agora_models:
                for seed in config.seeds:
                    run_stage(f'agora/{name}_s{seed}', os.path.join(out, 'agora',
                                                                    f'{name}_s{seed}'),
                              lambda f, m=name, s=seed: stage_agora(
                                  config, models[m], s, labeller, teacher, glue, f), stages)
        latency_models = {'teacher': teacher, 'winner': models['winner_kd'],
                          'comparison': models['comparison_kd']}
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
