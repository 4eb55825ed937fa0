"""The miniature's report: the paper's Tables 1 and 3-5 in small, PNGs, a verdict per claim.

:func:`verdicts` turns the stages' figures into claims judged with their noise
(:mod:`bort.experiments.verdicts`); :func:`write_report` writes ``report.md``, ``report.json``
and the PNGs at the top of the output folder. Everything is recomputed from the stages'
``done.json`` files, so a rerun of a finished experiment rewrites the same report in seconds.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Any, Dict, List, Optional, Sequence

from ..checkpoint import write_json_atomic
from .config import MODELS, STUDENTS, MiniatureConfig
from .plots import plot_bars, plot_pretraining, plot_scores
from .stages import StageLog
from .verdicts import Z, binomial_se, compare, spread

__all__ = ['verdicts', 'write_report', 'first_rise', 'fill_ratio', 'REPORT_FILE', 'PNG_FILES']

REPORT_FILE = 'report.md'
PNG_FILES = ('pretrain_curves.png', 'finetune_scores.png', 'latency.png', 'stage_times.png')

LABELS = {'teacher': 'teacher', 'winner_kd': 'winner, distilled',
          'winner_mlm': 'winner, MLM only', 'comparison_kd': 'comparison, distilled'}


def _tuple(values) -> str:
    return '<' + ', '.join(str(int(v)) for v in values) + '>'


def first_rise(curve: List[Dict], rate: float, positions: int) -> Optional[Dict]:
    """The first evaluation whose accuracy is above the most-frequent-token ``rate`` by more
    than :data:`Z` sampling errors (on ``positions`` masked positions); None if none is."""
    for point in curve:
        if point['acc'] - rate > Z * binomial_se(point['acc'], positions):
            return point
    return None


def _scores(stages: StageLog, prefix: str, key: str = 'dev') -> Dict[str, List[float]]:
    """Accuracy per seed of every stage whose name starts with ``prefix`` ('finetune/x_RTE')."""
    out: List[float] = []
    for name, record in stages.records.items():
        if name.startswith(prefix + '_s') and record['figures'].get(key):
            out.append(record['figures'][key]['accuracy'])
    return {'values': out}


def _acc(stages: StageLog, model: str, task: str, key: str = 'dev',
         kind: str = 'finetune') -> List[float]:
    stem = f'{kind}/{model}_{task}' if kind == 'finetune' else f'agora/{model}'
    return _scores(stages, stem, key)['values']


def verdicts(config: MiniatureConfig, stages: StageLog, sizes: Dict[str, int]) -> List[Dict]:
    """One judged claim per line of the paper this run can test (see the module docstring)."""
    out: List[Dict] = []
    have = stages.records.__contains__
    if not (have('search') and have('reference')):
        return out
    search = stages.figures('search')
    ref = stages.figures('reference')
    n_pos = ref['positions']
    # 1. the search: is the comparison worse in e than the winner beyond the seed noise?
    sigma = search.get('sigma') or float('nan')
    win, comp = search['winner'], search['comparison']
    floor = math.sqrt(2) * sigma if math.isfinite(sigma) else 0.0
    out.append(compare([win['error']], [comp['error']],
                       f'Search: the winner {_tuple(_knobs(win))} has a lower surrogate error '
                       f'e than the comparison {_tuple(_knobs(comp))}', floor=floor, scale=1.0,
                       unit='nats', digits=3, higher_is_better=False))
    # 2. pretraining
    pre = {name: stages.figures(f'pretrain/{name}') for name, _, _ in STUDENTS
           if have(f'pretrain/{name}')}
    rate = ref['most_frequent_rate']
    for name, figures in pre.items():
        acc = figures['final_acc']
        # The rate is fixed on these positions: the noise is the accuracy's sampling error
        # (at the larger of the two, so that an accuracy of 0 still has a yardstick).
        out.append(compare([acc], [rate], f'Pretraining: {LABELS[name]} held-out MLM top-1 '
                                          f'above the most-frequent-token rate',
                           floor=binomial_se(max(acc, rate), n_pos)))

    def pair_floor(a: float, b: float) -> float:
        p = max(a, b)
        return math.sqrt(2.0) * binomial_se(p, n_pos)

    acc = {n: f['final_acc'] for n, f in pre.items()}
    if 'winner_kd' in acc and 'winner_mlm' in acc:
        kd, mlm = acc['winner_kd'], acc['winner_mlm']
        ahead = sum(a['acc'] > b['acc'] for a, b in zip(pre['winner_kd']['curve'],
                                                         pre['winner_mlm']['curve']))
        verdict = compare([kd], [mlm], f'Pretraining (Table 3): KD ahead of MLM-only at equal '
                                       f'steps ({pre["winner_kd"]["steps"]} steps, held-out '
                                       f'top-1)', floor=pair_floor(kd, mlm))
        verdict['text'] += (f' KD was ahead at {ahead} of {len(pre["winner_kd"]["curve"])} '
                            f'evaluations.')
        out.append(verdict)
    if 'winner_kd' in acc and 'comparison_kd' in acc:
        kd, cmp_kd = acc['winner_kd'], acc['comparison_kd']
        out.append(compare([kd], [cmp_kd], 'Pretraining: the searched winner ahead of the '
                                           'comparison architecture (both distilled, held-out '
                                           'top-1)', floor=pair_floor(kd, cmp_kd)))
    # 3. fine-tuning, per task: same recipe, mean over seeds
    for task in config.tasks:
        n_dev = sizes.get(task, 0)
        values = {m: _acc(stages, m, task) for m in MODELS}
        pooled = spread(sum(values.values(), [])).mean
        floor = binomial_se(pooled, n_dev)
        for a, b, claim in (('winner_kd', 'winner_mlm', 'KD ahead of MLM-only'),
                            ('winner_kd', 'comparison_kd',
                             'the searched winner ahead of the comparison (both distilled)'),
                            ('winner_kd', 'teacher', 'the distilled winner at least level with '
                                                     'the teacher')):
            if values[a] and values[b]:  # a partial report judges what has been run
                out.append(compare(values[a], values[b], f'{task} dev (Table 4): {claim}',
                                   floor=floor))
    # 4. Agora vs plain on RTE, on the rows no model saw (dev favours Agora by construction)
    n_held = sizes.get('RTE-heldout', 0)
    for model in config.agora_models:
        key = 'heldout' if n_held else 'dev'
        agora = _acc(stages, model, 'RTE', key, kind='agora')
        plain = _acc(stages, model, 'RTE', key)
        pooled = spread(agora + plain).mean
        if not (agora and plain):
            continue
        out.append(compare(agora, plain, f'RTE {"held-out" if n_held else "dev"} (Table 5): '
                                         f'Agora ahead of plain fine-tuning for '
                                         f'{LABELS[model]}',
                           floor=binomial_se(pooled, n_held or sizes.get('RTE', 0))))
    # 5. latency through the fast path
    if not have('latency'):
        return out
    lat = stages.figures('latency')['models']
    for name in ('winner', 'comparison'):
        verdict = compare(lat[name]['samples_ms'], lat['teacher']['samples_ms'],
                          f'Latency: the {name} faster than the teacher', scale=1.0, unit='ms',
                          digits=2, higher_is_better=False)
        verdict['text'] += (f' Speed-up {lat["teacher"]["median_ms"] / lat[name]["median_ms"]:.1f}'
                            f'× (medians).')
        out.append(verdict)
    return out


def _knobs(record: Dict) -> List[int]:
    return [record[k] for k in ('num_layers', 'num_heads', 'units', 'hidden_size')]


def fill_ratio(data: Dict, seq_len: int) -> float:
    """Real tokens per token slot of the prepared data: its token count over its sequences
    times their maximum length (docstrings are short documents, so most slots are padding)."""
    sequences = data.get('sequences')
    count = sum(sequences.values()) if isinstance(sequences, dict) else sequences
    if not count or not data.get('tokens'):
        return float('nan')
    return min(1.0, float(data['tokens']) / (float(count) * seq_len))


# -- the report --------------------------------------------------------------------------------------
def _cell(values: List[float]) -> str:
    return spread([100 * v for v in values]).text(scale=1.0) if values else '—'


def _sequences(counts: Any) -> str:
    if isinstance(counts, dict):
        return ' / '.join(f'{v} {k}' for k, v in counts.items()) + ' sequences'
    return f'{counts} sequences'


def _stage_groups(stages: StageLog) -> Dict[str, Dict[str, float]]:
    groups: Dict[str, Dict[str, float]] = {}
    for name, record in stages.records.items():
        group = name.split('/')[0] if name.startswith(('finetune/', 'agora/')) else name
        entry = groups.setdefault(group, {'seconds': 0.0, 'count': 0, 'cached': 0,
                                          'load': []})
        entry['seconds'] += record.get('seconds', 0.0)
        entry['count'] += 1
        entry['cached'] += bool(record.get('cached'))
        entry['load'] += [record.get('load_start', [None])[0], record.get('load_end', [None])[0]]
    return groups


def _search_lines(config: MiniatureConfig, search: Dict) -> List[str]:
    win, comp = search['winner'], search['comparison']
    return ['## Table 1 in miniature: the search', '', search['table'].strip(), '',
            f'Winner {_tuple(_knobs(win))} ({win["params"] / 1e6:.2f}M parameters, e = '
            f'{win["error"]:.3f}); comparison {_tuple(_knobs(comp))} ({comp["params"] / 1e6:.2f}M, '
            f'e = {comp["error"]:.3f}, rank {comp.get("rank")}): {comp["why"]} (rule '
            f'`{config.comparison_rule}`).', '',
            f'The search\'s own verdict: {search.get("verdict") or "—"}', '']


def _pretrain_lines(config: MiniatureConfig, stages: StageLog, pre: Dict[str, Dict], ref: Dict,
                    data: Dict, fill: float) -> List[str]:
    lines = ['## Table 3 in miniature: distillation vs MLM-only pretraining', '',
             f'Data: {data["text_bytes"] / 1e6:.2f} MB of docstring text '
             f'({data["tokens"]} tokens in {_sequences(data["sequences"])} of at most '
             f'{config.seq_len} tokens, unknown-token ratio {100 * data["unk_ratio"]:.2f} %). '
             f'Every run: {config.pretrain_steps} steps × {config.pretrain_batch_size} '
             f'sequences × {config.seq_len} = **{config.tokens_per_run() / 1e6:.2f}M token '
             f'slots**, ≈ {config.tokens_per_run() * fill / 1e6:.2f}M real tokens (the '
             f'sequences fill {100 * fill:.0f} % of their {config.seq_len} slots on average: '
             f'a docstring is a short document), BERT-Adam lr {config.pretrain_lr:g}, warm-up '
             f'{config.pretrain_warmup:g} then linear decay; distilled runs '
             f'{config.mlm_weight:g}·MLM + {config.kd_weight:g}·T²·KD at T = '
             f'{config.temperature:g}, the MLM-only run 1.0·MLM. Held-out: {ref["batches"]} '
             f'fixed batches, {ref["positions"]} masked positions; the teacher scores '
             f'{100 * ref["teacher_acc"]:.1f} % top-1 there, predicting the most frequent token '
             f'{100 * ref["most_frequent_rate"]:.1f} %.', '',
             '| run | <D, A, H, I> | params (M) | top-1 % | top-5 % | CE (nats) | clearly above '
             'the most-frequent rate from | tokens/s | wall (min) |',
             '|---|---|---:|---:|---:|---:|---|---:|---:|']
    for name, f in pre.items():
        rise = first_rise(f['curve'], ref['most_frequent_rate'], ref['positions'])
        seconds = stages.records[f'pretrain/{name}'].get('seconds', 0.0)
        lines.append(f'| {LABELS[name]} | {_tuple(f["arch"])} | {f["params"] / 1e6:.2f} | '
                     f'{100 * f["final_acc"]:.2f} | {100 * f["final_top5"]:.2f} | '
                     f'{f["final_loss"]:.3f} | '
                     + (f'≈ {rise["tokens"] * fill / 1e6:.2f}M real tokens (step '
                        f'{rise["step"]})' if rise else
                        f'**not reached** in ≈ {f["tokens"] * fill / 1e6:.2f}M real tokens')
                     + f' | {f["tokens_per_s"] or 0:.0f} | {seconds / 60:.1f} |')
    return lines + ['', '![pretraining curves](pretrain_curves.png)', '']


def _finetune_lines(config: MiniatureConfig, sizes: Dict[str, int], columns: List[str],
                    table: Dict[str, Dict[str, List[float]]]) -> List[str]:
    lines = ['## Table 4 in miniature: GLUE dev scores, plain fine-tuning', '',
             f'One recipe for every model: epochs {config.epochs} (best dev epoch kept), batch '
             f'{config.ft_batch_size}, lr {config.ft_lr:g}, weight decay '
             f'{config.ft_weight_decay:g}, warm-up {config.ft_warmup:g}, head U(±'
             f'{config.init_range:g}), max length {config.max_length}, at most '
             f'{config.max_train_examples or "all"} training rows per task; seeds '
             f'{", ".join(map(str, config.seeds))}. Accuracy in %, mean ± sd over seeds. Dev '
             f'sizes: ' + ', '.join(f'{k} {v}' for k, v in sizes.items()) + '.', '',
             '| model | ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * len(columns)]
    for m in MODELS:
        lines.append(f'| {LABELS[m]} | ' + ' | '.join(_cell(table[m][c]) for c in columns)
                     + ' |')
    return lines + ['', '![fine-tuning scores](finetune_scores.png)', '']


def _agora_lines(config: MiniatureConfig, stages: StageLog) -> List[str]:
    teacher_acc = [stages.figures(n)['teacher_accuracy'] for n in stages.records
                   if n.startswith('agora/')]
    lines = ['## Table 5 in miniature: Agora vs plain fine-tuning on RTE', '',
             f"Agora's Θ: lr ∈ {{{', '.join(f'{v:g}' for v in config.agora_lrs)}}} × one "
             f'seed per run, the recipe\'s other settings, transformation '
             f'`{config.agora_transform}`; the teacher (Socrates) is the teacher fine-tuned '
             f'on RTE with seed {config.seeds[0]}: dev accuracy '
             f'{100 * max(teacher_acc or [float("nan")]):.1f} % against the method\'s '
             f'requirement of 66.7 % ('
             + ('met' if teacher_acc and max(teacher_acc) > 2 / 3 else
                f'**not met**: Agora ran with the check at '
                f'{config.agora_min_teacher_accuracy:g}') + '). Dev scores favour Agora (it '
             'selects on dev and learns from its dev mistakes); the held-out rows are '
             'training rows no model saw.', '',
             '| student | plain dev | Agora dev | plain held-out | Agora held-out | Agora '
             'iterations | points added | examples processed, Agora / plain |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for m in config.agora_models:
        runs = [stages.figures(n) for n in stages.records if n.startswith(f'agora/{m}_s')]
        plain = [stages.figures(n) for n in stages.records
                 if n.startswith(f'finetune/{m}_RTE_s')]
        ratio = (sum(r['examples_seen'] for r in runs)
                 / max(1, sum(r['examples_seen'] for r in plain)))
        lines.append(f'| {LABELS[m]} | {_cell(_acc(stages, m, "RTE"))} | '
                     f'{_cell(_acc(stages, m, "RTE", kind="agora"))} | '
                     f'{_cell(_acc(stages, m, "RTE", "heldout"))} | '
                     f'{_cell(_acc(stages, m, "RTE", "heldout", kind="agora"))} | '
                     f'{"/".join(str(r["iterations"]) for r in runs)} | '
                     f'{"/".join(str(r["points_added"]) for r in runs)} | {ratio:.1f}× |')
    return lines + ['']


def _latency_lines(lat: Dict) -> List[str]:
    lines = ['## Inference latency through the fast path', '',
             f'`bort.inference.fast.FastModel`, batch {lat["batch_size"]} × {lat["seq_len"]} '
             f'tokens, {lat["repeats"]} rounds with the models interleaved, '
             f'OMP_NUM_THREADS={lat["threads"]}, {lat["device"]}.', '',
             '| model | <D, A, H, I> | params (M) | median ms | IQR ms | vs teacher |',
             '|---|---|---:|---:|---:|---:|']
    t_ms = lat['models']['teacher']['median_ms']
    for n, m in lat['models'].items():
        lines.append(f'| {n} | {_tuple(m["arch"])} | {m["params"] / 1e6:.2f} | '
                     f'{m["median_ms"]:.2f} | {m["q25_ms"]:.2f}–{m["q75_ms"]:.2f} | '
                     f'{t_ms / m["median_ms"]:.1f}× |')
    return lines + ['', '![latency](latency.png)', '']


def _time_lines(stages: StageLog, groups: Dict[str, Dict], total: float, fill: float
                ) -> List[str]:
    lines = ['## Wall time and tokens per stage', '',
             '| stage | runs | wall (min) | load average (1 min) at start / end | work |',
             '|---|---:|---:|---|---|']
    for group, g in groups.items():
        loads = [x for x in g['load'] if x is not None]
        work = ''
        if group.startswith('pretrain/'):
            slots = stages.figures(group)['tokens']
            work = f'{slots / 1e6:.2f}M token slots, ≈ {slots * fill / 1e6:.2f}M real tokens'
        elif group in ('finetune', 'agora'):
            seen = sum(stages.figures(n)['examples_seen'] for n in stages.records
                       if n.startswith(group + '/'))
            work = f'{seen} training examples processed'
        elif group == 'search':
            work = f'{len(stages.figures("search")["candidates"])} candidates ranked'
        cached = f' ({g["cached"]} cached)' if g['cached'] else ''
        lines.append(f'| {group} | {g["count"]}{cached} | {g["seconds"] / 60:.1f} | '
                     + (f'{min(loads):.1f}–{max(loads):.1f}' if loads else '—') + f' | {work} |')
    return lines + [f'| **total** | | **{total / 60:.1f}** | | |', '',
                    '![stage times](stage_times.png)', '']


def write_report(config: MiniatureConfig, stages: StageLog, sizes: Dict[str, int],
                 missing: Sequence[str] = ()) -> Dict:
    """Write ``report.md``, ``report.json`` and the PNGs into ``config.out``.

    Parameters
    ----------
    config : MiniatureConfig
    stages : StageLog
        The finished stages.
    sizes : dict
        Evaluation-set sizes by task (``'RTE-heldout'`` for the set-aside rows).
    missing : sequence of str
        Stages not finished yet: the report is then partial (sections and verdicts whose
        stages are missing are left out, and the missing stages are listed).

    Returns
    -------
    dict
        ``report`` (path), ``pngs`` (paths written), ``verdicts``, ``stages`` (records),
        ``total_seconds``, ``missing``.
    """
    out = config.out
    have = stages.records.__contains__
    judged = verdicts(config, stages, sizes)
    groups = _stage_groups(stages)
    total = sum(g['seconds'] for g in groups.values())
    data = stages.figures('data') if have('data') else {}
    fill = fill_ratio(data, int(config.seq_len)) if data else float('nan')
    pre = {name: stages.figures(f'pretrain/{name}') for name, _, _ in STUDENTS
           if have(f'pretrain/{name}')}
    lat = stages.figures('latency') if have('latency') else None
    pngs: List[str] = []

    def png(name: str) -> str:
        pngs.append(os.path.join(out, name))
        return pngs[-1]

    body: List[str] = []
    if have('search'):
        body += _search_lines(config, stages.figures('search'))
    if pre and have('reference') and data:
        plot_pretraining(png(PNG_FILES[0]), {LABELS[n]: f for n, f in pre.items()},
                         stages.figures('reference'), fill)
        body += _pretrain_lines(config, stages, pre, stages.figures('reference'), data, fill)
    columns = [f'{t} dev' for t in config.tasks] + (['RTE held-out'] if sizes.get('RTE-heldout')
                                                    else [])
    table = {m: {f'{t} dev': _acc(stages, m, t) for t in config.tasks} for m in MODELS}
    for m in MODELS:
        if sizes.get('RTE-heldout'):
            table[m]['RTE held-out'] = _acc(stages, m, 'RTE', 'heldout')
    if any(v for row in table.values() for v in row.values()):
        plot_scores(png(PNG_FILES[1]), columns, {LABELS[m]: table[m] for m in MODELS})
        body += _finetune_lines(config, sizes, columns, table)
    if config.agora_models and any(n.startswith('agora/') for n in stages.records):
        body += _agora_lines(config, stages)
    if lat:
        names = list(lat['models'])
        plot_bars(png(PNG_FILES[2]), [f'{n} {_tuple(lat["models"][n]["arch"])}' for n in names],
                   [lat['models'][n]['median_ms'] for n in names],
                   [[lat['models'][n]['median_ms'] - lat['models'][n]['q25_ms'] for n in names],
                    [lat['models'][n]['q75_ms'] - lat['models'][n]['median_ms'] for n in names]],
                   ylabel='ms per batch (median, IQR)',
                   title=f'fast path, batch {lat["batch_size"]} x {lat["seq_len"]} tokens')
        body += _latency_lines(lat)
    plot_bars(png(PNG_FILES[3]), list(groups), [g['seconds'] / 60 for g in groups.values()],
               ylabel='minutes', title='wall time per stage')
    body += _time_lines(stages, groups, total, fill)

    teacher = stages.figures('teacher')['folder'] if have('teacher') else '—'
    lines = [f'# Bort in miniature ({config.budget} budget)'
             + (' — partial: the run has not finished' if missing else ''), '',
             f'Written {time.strftime("%Y-%m-%d %H:%M")} on {platform.node()} '
             f'({os.cpu_count()} cores). Stage wall time in all: **{total / 60:.1f} minutes** '
             f'(stages run in earlier sessions count with the time they took then). Teacher: '
             f'`{teacher}`.', '']
    if missing:
        shown: Dict[str, int] = {}
        for name in missing:  # the many fine-tuning runs as one count each
            key = name.split('/')[0] + ' runs' if name.startswith(('finetune/', 'agora/')) \
                else name
            shown[key] = shown.get(key, 0) + 1
        lines += [f'**Not finished yet ({len(missing)} stages)**: ' + ', '.join(
            f'{n} {k}' if k.endswith(' runs') else k for k, n in shown.items())
            + '. Their tables and verdicts are missing below; rerun the same command to '
              'continue the run.', '']
    counts: Dict[str, int] = {}
    for v in judged:
        counts[v['answer']] = counts.get(v['answer'], 0) + 1
    n_pos = stages.figures('reference')['positions'] if have('reference') else 0
    lines += ['## Verdicts', '',
              f'Each claim is judged from the measurements below: **yes** or **no** when the '
              f'difference exceeds {Z:g} standard errors, otherwise *within noise*. Standard '
              f'errors come from the seed spread (fine-tuning) and never fall below the sampling '
              f'error of one accuracy on the evaluation set (pretraining: {n_pos} held-out '
              f'masked positions, one seed per run; search: the seed noise σ of e).', '',
              f'{len(judged)} claims: ' + (', '.join(f'{n} {a}' for a, n in counts.items())
                                           or 'none judged yet') + '.', '']
    lines += [f'- {v["text"]}' for v in judged] + ['']
    lines += body + ['## Settings', '', '```json',
                     json.dumps(config.to_dict(), indent=1, default=list), '```', '']
    path = os.path.join(out, REPORT_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    os.replace(path + '.tmp', path)
    result = {'report': path, 'pngs': pngs, 'verdicts': judged,
              'stages': {n: {k: r.get(k) for k in ('seconds', 'load_start', 'load_end',
                                                  'cached')}
                         for n, r in stages.records.items()},
              'total_seconds': total, 'missing': list(missing)}
    write_json_atomic(os.path.join(out, 'report.json'), result)
    return result
