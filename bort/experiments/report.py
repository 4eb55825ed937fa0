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
from .config import AGORA_PREMISE, MiniatureConfig, finetuned_models, model_labels, students
from .finetuning import agora_check
from .plots import plot_bars, plot_pretraining, plot_scores
from .stages import StageLog
from .verdicts import YES, Z, binomial_se, compare, left_rate, levels_off, spread

__all__ = ['verdicts', 'premises', 'write_report', 'first_rise', 'fill_ratio', 'REPORT_FILE',
           'PNG_FILES', 'NOT_JUDGED']

REPORT_FILE = 'report.md'
PNG_FILES = ('pretrain_curves.png', 'finetune_scores.png', 'latency.png', 'stage_times.png')

#: The answer of a claim about a student that never left the most-frequent-token rate.
NOT_JUDGED = 'not judged'


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
    stem = f'{kind}/{model}_{task}'
    return _scores(stages, stem, key)['values']


def _pretrained(config: MiniatureConfig, stages: StageLog) -> Dict[str, Dict]:
    return {s.name: stages.figures(f'pretrain/{s.name}') for s in students(config)
            if f'pretrain/{s.name}' in stages.records}


def _pair_floor(a: float, b: float, n: int) -> float:
    """Standard error of the difference of two accuracies on the same ``n`` positions."""
    return math.sqrt(2.0) * binomial_se(max(a, b), n)


def premises(config: MiniatureConfig, stages: StageLog) -> Dict[str, Any]:
    """What the claims assume, measured: the teacher's lead over each student on the same
    held-out positions, each student's rise above the most-frequent-token rate, Socrates
    above 2/3 on each Agora task.

    Returns
    -------
    dict
        ``rows`` (``premise``, ``measured``, ``held`` per line), ``learned`` (student ->
        whether it left the most-frequent-token rate: only those enter a verdict), ``agora``
        (task -> whether the teacher of Agora's task is above 2/3).
    """
    labels = model_labels(config)
    rows: List[Dict] = []
    learned: Dict[str, bool] = {}
    agora: Dict[str, bool] = {}
    if 'reference' in stages.records:
        ref = stages.figures('reference')
        n, rate, teacher = ref['positions'], ref['most_frequent_rate'], ref['teacher_acc']
        for name, f in _pretrained(config, stages).items():
            acc = f['final_acc']
            lead = compare([teacher], [acc], 'lead', floor=_pair_floor(teacher, acc, n))
            rows.append({'premise': f'the teacher well ahead of {labels[name]}',
                         'measured': f'{100 * teacher:.1f} % vs {100 * acc:.1f} % top-1 on '
                                     f'{n} held-out positions: lead {100 * lead["diff"]:+.1f} '
                                     f'± {100 * lead["se"]:.1f} points',
                         'held': lead['answer'] == YES})
            learned[name] = left_rate(acc, rate, n)
            rise = first_rise(f['curve'], rate, n)
            rows.append({'premise': f'{labels[name]} left the most-frequent-token rate',
                         'measured': f'{100 * acc:.1f} % vs {100 * rate:.1f} %'
                                     + (f' (clearly above from step {rise["step"]})'
                                        if rise else ''),
                         'held': learned[name]})
    for task in config.agora_tasks if config.agora_models else ():
        name = f'finetune/teacher_{task}_s{config.seeds[0]}'
        if name not in stages.records:
            continue
        acc = stages.figures(name)['dev']['accuracy']
        agora[task] = acc > AGORA_PREMISE
        rows.append({'premise': f"Agora's teacher (Socrates) above 2/3 on {task} dev",
                     'measured': f'{100 * acc:.1f} % (the teacher fine-tuned with seed '
                                 f'{config.seeds[0]}); Agora ran with the check at '
                                 + ('—' if agora_check(config, acc) is None else
                                    f'{agora_check(config, acc):.3g}'),
                     'held': agora[task]})
    return {'rows': rows, 'learned': learned, 'agora': agora}


def verdicts(config: MiniatureConfig, stages: StageLog, sizes: Dict[str, int],
             premise: Optional[Dict[str, Any]] = None) -> List[Dict]:
    """One judged claim per line of the paper this run can test (see the module docstring).

    A claim about a student that never left the most-frequent-token rate is not judged (it
    appears with ``answer`` ``'not judged'`` and the reason); a claim whose premise failed
    otherwise (Agora with a teacher at or below 2/3) is judged with ``premise_met`` False.
    """
    out: List[Dict] = []
    have = stages.records.__contains__
    if not (have('search') and have('reference')):
        return out
    premise = premise or premises(config, stages)
    learned = premise['learned']
    labels = model_labels(config)
    search = stages.figures('search')
    ref = stages.figures('reference')
    n_pos = ref['positions']

    def judged(names: Sequence[str], claim: str, judge) -> None:
        stalled = [labels[m] for m in names if m != 'teacher' and not learned.get(m, False)]
        if stalled:
            out.append({'claim': claim, 'answer': NOT_JUDGED, 'premise_met': False,
                        'text': f'{claim}: not judged ({", ".join(stalled)} never left the '
                                f'most-frequent-token rate).'})
        else:
            out.append(dict(judge(), premise_met=True))

    # 1. the search: is the comparison worse in e than the winner beyond the seed noise?
    sigma = search.get('sigma') or float('nan')
    win, comp = search['winner'], search['comparison']
    floor = math.sqrt(2) * sigma if math.isfinite(sigma) else 0.0
    out.append(dict(compare([win['error']], [comp['error']],
                            f'Search: the winner {_tuple(_knobs(win))} has a lower surrogate '
                            f'error e than the comparison {_tuple(_knobs(comp))}', floor=floor,
                            scale=1.0, unit='nats', digits=3, higher_is_better=False),
                    premise_met=True))
    # 2. pretraining (Table 3): KD against MLM-only at equal steps and at equal wall time
    pre = _pretrained(config, stages)
    acc = {n: f['final_acc'] for n, f in pre.items()}

    def top1(a: str, b: str, claim: str) -> Dict:
        return compare([acc[a]], [acc[b]], claim, floor=_pair_floor(acc[a], acc[b], n_pos))

    for student in students(config):
        if not (student.distilled and student.role == 'winner'):
            continue
        kd, init = student.name, student.init
        for other, words in ((f'winner_{init}_mlm', 'equal steps'),
                             (f'winner_{init}_mlm_time', 'equal wall time')):
            if kd not in acc or other not in acc:
                continue
            claim = (f'Pretraining (Table 3): KD at T = {student.temperature:g} ahead of '
                     f'MLM-only at {words}, {"from scratch" if init == "scratch" else "extracted"}'
                     f' ({pre[kd]["steps"]} vs {pre[other]["steps"]} steps, held-out top-1)')

            def judge(a=kd, b=other, c=claim, equal_steps=words == 'equal steps'):
                verdict = top1(a, b, c)
                if equal_steps:
                    ahead = sum(x['acc'] > y['acc'] for x, y in zip(pre[a]['curve'],
                                                                     pre[b]['curve']))
                    verdict['text'] += (f' KD was ahead at {ahead} of {len(pre[a]["curve"])} '
                                        f'evaluations.')
                else:
                    verdict['text'] += (f' Training loops: {_minutes(pre[a])} vs '
                                        f'{_minutes(pre[b])} min.')
                return verdict
            judged([kd, other], claim, judge)
    first = f'winner_{config.inits[0]}_kd'
    comparison = f'comparison_{config.inits[0]}_kd'
    if first in acc and comparison in acc:
        claim = ('Pretraining: the searched winner ahead of the comparison architecture '
                 '(both distilled, held-out top-1)')
        judged([first, comparison], claim, lambda: top1(first, comparison, claim))
    # 3. fine-tuning, per task: same recipe, mean over seeds
    models = finetuned_models(config)
    for task in config.tasks:
        n_dev = sizes.get(task, 0)
        values = {m: _acc(stages, m, task) for m in models}
        floor = binomial_se(spread(sum(values.values(), [])).mean, n_dev)
        pairs = []
        for init in config.finetune_inits:
            start = 'from scratch' if init == 'scratch' else 'extracted'
            pairs += [(f'winner_{init}_kd', f'winner_{init}_mlm', f'KD ahead of MLM-only '
                                                                   f'({start})'),
                      (f'winner_{init}_kd', 'teacher', f'the distilled winner ({start}) at '
                                                       f'least level with the teacher')]
        if config.inits[0] in config.finetune_inits:
            pairs.insert(1, (first, comparison, 'the searched winner ahead of the comparison '
                                                '(both distilled)'))
        for a, b, words in pairs:
            if values[a] and values[b]:  # a partial report judges what has been run
                claim = f'{task} dev (Table 4): {words}'
                judged([a, b], claim, lambda a=a, b=b, c=claim: compare(
                    values[a], values[b], c, floor=floor))
    # 4. Agora vs plain, on the rows no model saw (dev favours Agora by construction)
    for task in config.agora_tasks if config.agora_models else ():
        n_held = sizes.get(f'{task}-heldout', 0)
        key = 'heldout' if n_held else 'dev'
        for model in config.agora_models:
            agora = _acc(stages, model, task, key, kind='agora')
            plain = _acc(stages, model, task, key)
            if not (agora and plain):
                continue
            claim = (f'{task} {"held-out" if n_held else "dev"} (Table 5): Agora ahead of plain '
                     f'fine-tuning for {labels[model]}')
            floor = binomial_se(spread(agora + plain).mean, n_held or sizes.get(task, 0))
            judged([model], claim, lambda a=agora, p=plain, c=claim, f=floor: compare(
                a, p, c, floor=f))
            if out[-1]['answer'] != NOT_JUDGED and not premise['agora'].get(task, False):
                out[-1]['premise_met'] = False
                out[-1]['text'] = ('[premise not met: the teacher is not above 2/3 on '
                                   f'{task}; not counted] ' + out[-1]['text'])
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
        out.append(dict(verdict, premise_met=True))
    return out


def _minutes(figures: Dict) -> str:
    seconds = figures.get('train_seconds')
    return f'{seconds / 60:.1f}' if seconds else '—'


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
             f'a docstring is a short document), run_pretraining\'s defaults (AdamW, output bias '
             f'at the training tokens\' log frequencies) at lr {config.pretrain_lr:g}, warm-up '
             f'{config.pretrain_warmup:g} then linear decay; distilled runs '
             f'{config.mlm_weight:g}·MLM + {config.kd_weight:g}·T²·KD at T = '
             + ' and '.join(f'{t:g}' for t in config.temperatures) + ', the MLM-only runs '
             '1.0·MLM; students from scratch or extracted from the teacher (`--init teacher`, '
             'bort/extraction.py). **Equal wall time**: the run "MLM only, equal wall time" is '
             'given the mean training-loop time of its init\'s KD runs (`--max_minutes`, its '
             'schedule warming up and decaying within it), so both sides end annealed; KD '
             'spends part of that time on the teacher\'s forward pass. Under other load the '
             'same minutes buy fewer steps: the loads are in the stage table. Held-out: '
             f'{ref["batches"]} fixed batches, {ref["positions"]} masked positions; the teacher '
             f'scores {100 * ref["teacher_acc"]:.1f} % top-1 there, predicting the most frequent '
             f'token {100 * ref["most_frequent_rate"]:.1f} %.', '',
             '| run | <D, A, H, I> | params (M) | steps | top-1 % | top-5 % | CE (nats) | '
             'clearly above the most-frequent rate from | tokens/s | training loop (min) | '
             'stage wall (min) |',
             '|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|']
    labels = model_labels(config)
    for name, f in pre.items():
        rise = first_rise(f['curve'], ref['most_frequent_rate'], ref['positions'])
        seconds = stages.records[f'pretrain/{name}'].get('seconds', 0.0)
        lines.append(f'| {labels[name]} | {_tuple(f["arch"])} | {f["params"] / 1e6:.2f} | '
                     f'{f["steps"]} | {100 * f["final_acc"]:.2f} | {100 * f["final_top5"]:.2f} | '
                     f'{f["final_loss"]:.3f} | '
                     + (f'≈ {rise["tokens"] * fill / 1e6:.2f}M real tokens (step '
                        f'{rise["step"]})' if rise else
                        f'**not reached** in ≈ {f["tokens"] * fill / 1e6:.2f}M real tokens')
                     + f' | {f["tokens_per_s"] or 0:.0f} | {_minutes(f)} | '
                       f'{seconds / 60:.1f} |')
    return lines + ['', '![pretraining curves](pretrain_curves.png)', '']


def _finetune_lines(config: MiniatureConfig, sizes: Dict[str, int], columns: List[str],
                    table: Dict[str, Dict[str, List[float]]]) -> List[str]:
    lines = ['## Table 4 in miniature: GLUE dev scores, plain fine-tuning', '',
             f'One recipe for every model: epochs {config.epochs} (best dev epoch kept), batch '
             f'{config.ft_batch_size}, lr {config.ft_lr:g}, weight decay '
             f'{config.ft_weight_decay:g}, warm-up {config.ft_warmup:g}, AdamW, head '
             + (f'N(0, {config.init_range:g}²)' if config.ft_init == 'normal' else
                f'U(±{config.init_range:g})') + f', max length {config.max_length}, at most '
             f'{config.max_train_examples or "all"} training rows per task; seeds '
             f'{", ".join(map(str, config.seeds))}. Accuracy in %, mean ± sd over seeds. Dev '
             f'sizes: ' + ', '.join(f'{k} {v}' for k, v in sizes.items()) + '.', '',
             '| model | ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * len(columns)]
    labels = model_labels(config)
    for m in finetuned_models(config):
        lines.append(f'| {labels[m]} | ' + ' | '.join(_cell(table[m][c]) for c in columns)
                     + ' |')
    return lines + ['', '![fine-tuning scores](finetune_scores.png)', '']


def _agora_lines(config: MiniatureConfig, stages: StageLog, task: str) -> List[str]:
    runs_of = {m: [stages.figures(n) for n in stages.records
                   if n.startswith(f'agora/{m}_{task}_s')] for m in config.agora_models}
    done = [r for runs in runs_of.values() for r in runs]
    if not done:
        return []
    teacher_acc = max(r['teacher_accuracy'] for r in done)
    check = min(r.get('check', 0.0) for r in done)
    labels = model_labels(config)
    lines = [f'## Table 5 in miniature: Agora vs plain fine-tuning on {task}', '',
             f"Agora's Θ: lr ∈ {{{', '.join(f'{v:g}' for v in config.agora_lrs)}}} × one "
             f'seed per run, the recipe\'s other settings, transformation '
             f'`{config.agora_transform}`; the teacher (Socrates) is the teacher fine-tuned '
             f'on {task} with seed {config.seeds[0]}: dev accuracy {100 * teacher_acc:.1f} % '
             f'against the method\'s requirement of {100 * AGORA_PREMISE:.1f} % ('
             + (f'met; the check was on at {check:.3g}' if teacher_acc > AGORA_PREMISE else
                f'**not met**: Agora ran with the check at {check:g}, and its verdicts here '
                f'are not counted') + '). Dev scores favour Agora (it selects on dev and learns '
             'from its dev mistakes); the held-out rows are training rows no model saw.', '',
             '| student | plain dev | Agora dev | plain held-out | Agora held-out | Agora '
             'iterations | points added | examples processed, Agora / plain |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for m, runs in runs_of.items():
        plain = [stages.figures(n) for n in stages.records
                 if n.startswith(f'finetune/{m}_{task}_s')]
        ratio = (sum(r['examples_seen'] for r in runs)
                 / max(1, sum(r['examples_seen'] for r in plain)))
        lines.append(f'| {labels[m]} | {_cell(_acc(stages, m, task))} | '
                     f'{_cell(_acc(stages, m, task, kind="agora"))} | '
                     f'{_cell(_acc(stages, m, task, "heldout"))} | '
                     f'{_cell(_acc(stages, m, task, "heldout", kind="agora"))} | '
                     f'{"/".join(str(r["iterations"]) for r in runs)} | '
                     f'{"/".join(str(r["points_added"]) for r in runs)} | {ratio:.1f}× |')
    return lines + ['']


def _strength_lines(stages: StageLog) -> List[str]:
    """The teacher-strength table and the adaptation steps where its gain levels off."""
    rows = sorted((stages.figures(n) for n in stages.records
                   if n.startswith('teacher_strength/')), key=lambda r: r['steps'])
    if not rows or 'reference' not in stages.records:
        return []
    ref = stages.figures('reference')
    n = ref['positions']
    lines = ['## Teacher strength against MLM adaptation steps', '',
             'The built-in teacher (all-MiniLM-L6-v2 with a fitted head) MLM-adapted in each '
             'number of steps (`--teacher minilm-<steps>`) on the first '
             '`--corpus_skip_bytes` of the docstring corpus, which no student sees, and scored '
             f'on the students\' held-out positions ({n}; most-frequent token '
             f'{100 * ref["most_frequent_rate"]:.1f} %).', '',
             '| adaptation steps | held-out top-1 % | top-5 % | CE (nats) | on its own 3 % '
             'held-out | build (min) |', '|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        build = sum((r.get('build_seconds') or {}).values())
        own = r.get('adapt_heldout_acc')
        lines.append(f'| {r["steps"]} | {100 * r["acc"]:.2f} | {100 * r["top5"]:.2f} | '
                     f'{r["loss"]:.3f} | ' + (f'{100 * own:.2f}' if own is not None else '—')
                     + ' | ' + (f'{build / 60:.1f}' if build else '—') + ' |')
    flat = levels_off([(r['steps'], r['acc']) for r in rows], n)
    lines += ['', f'The gain levels off at **{flat} steps**: the fewest whose top-1 is within '
                  f'{Z:g} standard errors of the best row\'s (`--teacher minilm-{flat}`; a '
                  'longer build buys no measurable accuracy on these positions).', '']
    return lines


def _premise_lines(premise: Dict[str, Any], judged: List[Dict]) -> List[str]:
    if not premise['rows']:
        return []
    lines = ['## Premises: what each claim assumes, measured', '',
             'Distillation assumes a teacher well ahead of its students (lead beyond '
             f'{Z:g} standard errors on the same held-out positions); every claim about a '
             'student assumes it learned (its top-1 above the most-frequent-token rate by more '
             f'than {Z:g} standard errors of a proportion); Agora assumes a teacher above 2/3 '
             'on the task.', '', '| premise | measured | held |', '|---|---|---|']
    lines += [f'| {r["premise"]} | {r["measured"]} | {"yes" if r["held"] else "**no**"} |'
              for r in premise['rows']]
    stalled = [n for n, ok in premise['learned'].items() if not ok]
    lines += ['', ('Students that never left the most-frequent-token rate, and enter no '
                   'verdict: ' + ', '.join(stalled) + '.') if stalled else
              'Every student left the most-frequent-token rate.']
    unmet = [v['claim'] for v in judged if not v.get('premise_met', True)
             and v['answer'] != NOT_JUDGED]
    if unmet:
        lines.append('Judged although their premise failed (not counted): '
                     + '; '.join(unmet) + '.')
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
    premise = premises(config, stages)
    judged = verdicts(config, stages, sizes, premise)
    labels = model_labels(config)
    groups = _stage_groups(stages)
    total = sum(g['seconds'] for g in groups.values())
    data = stages.figures('data') if have('data') else {}
    fill = fill_ratio(data, int(config.seq_len)) if data else float('nan')
    pre = _pretrained(config, stages)
    lat = stages.figures('latency') if have('latency') else None
    pngs: List[str] = []

    def png(name: str) -> str:
        pngs.append(os.path.join(out, name))
        return pngs[-1]

    body: List[str] = _strength_lines(stages)
    if have('search'):
        body += _search_lines(config, stages.figures('search'))
    if pre and have('reference') and data:
        plot_pretraining(png(PNG_FILES[0]), {labels[n]: f for n, f in pre.items()},
                         stages.figures('reference'), fill)
        body += _pretrain_lines(config, stages, pre, stages.figures('reference'), data, fill)
    held = [t for t in config.tasks if sizes.get(f'{t}-heldout')]
    columns = [f'{t} dev' for t in config.tasks] + [f'{t} held-out' for t in held]
    models = finetuned_models(config)
    table = {m: {f'{t} dev': _acc(stages, m, t) for t in config.tasks} for m in models}
    for m in models:
        for t in held:
            table[m][f'{t} held-out'] = _acc(stages, m, t, 'heldout')
    if any(v for row in table.values() for v in row.values()):
        plot_scores(png(PNG_FILES[1]), columns, {labels[m]: table[m] for m in models})
        body += _finetune_lines(config, sizes, columns, table)
    for task in config.agora_tasks if config.agora_models else ():
        body += _agora_lines(config, stages, task)
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
        if v.get('premise_met', True):
            counts[v['answer']] = counts.get(v['answer'], 0) + 1
    aside = len(judged) - sum(counts.values())
    n_pos = stages.figures('reference')['positions'] if have('reference') else 0
    lines += _premise_lines(premise, judged)
    lines += ['## Verdicts', '',
              f'Each claim is judged from the measurements below: **yes** or **no** when the '
              f'difference exceeds {Z:g} standard errors, otherwise *within noise*. Standard '
              f'errors come from the seed spread (fine-tuning) and never fall below the sampling '
              f'error of one accuracy on the evaluation set (pretraining: {n_pos} held-out '
              f'masked positions, one seed per run; search: the seed noise σ of e).', '',
              f'{sum(counts.values())} claims with their premises met: '
              + (', '.join(f'{n} {a}' for a, n in counts.items()) or 'none judged yet')
              + (f'; {aside} more with a premise not met (marked, not counted)' if aside else '')
              + '.', '']
    lines += [f'- {v["text"]}' for v in judged] + ['']
    lines += body + ['## Settings', '', '```json',
                     json.dumps(config.to_dict(), indent=1, default=list), '```', '']
    path = os.path.join(out, REPORT_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    os.replace(path + '.tmp', path)
    result = {'report': path, 'pngs': pngs, 'verdicts': judged, 'premises': premise,
              'stages': {n: {k: r.get(k) for k in ('seconds', 'load_start', 'load_end',
                                                  'cached')}
                         for n, r in stages.records.items()},
              'total_seconds': total, 'missing': list(missing)}
    write_json_atomic(os.path.join(out, 'report.json'), result)
    return result
