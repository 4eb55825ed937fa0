"""The miniature's claims: each premise measured, then each claim judged with its noise.

:func:`premises` says, before any verdict, whether what a claim rests on held (the teacher
ahead of every student, every student above the most-frequent-token rate, Socrates at ⅔ on
the Agora task); :func:`verdicts` judges the paper's claims from the stages' figures with the
rules of :mod:`bort.experiments.verdicts` (yes or no only beyond two standard errors).
:mod:`bort.experiments.report` writes them out.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from .config import (AGORA_PREMISE, MiniatureConfig, finetuned_models, model_labels,
                     socrates_stage, students)
from .finetuning import agora_check
from .stages import StageLog
from .verdicts import YES, Z, binomial_se, compare, left_rate, spread

__all__ = ['premises', 'verdicts', 'first_rise', 'tuple_label', 'knobs', 'minutes', 'accuracies',
           'pretrained', 'NOT_JUDGED']

#: The answer of a claim about a student that never left the most-frequent-token rate.
NOT_JUDGED = 'not judged'


def minutes(figures: Dict) -> str:
    """A stage's training time in minutes for a table cell ('—' when not recorded)."""
    seconds = figures.get('train_seconds')
    return f'{seconds / 60:.1f}' if seconds else '—'


def knobs(record: Dict) -> List[int]:
    """<D, A, H, I> of a search record."""
    return [record[k] for k in ('num_layers', 'num_heads', 'units', 'hidden_size')]


def tuple_label(values) -> str:
    """'<D, A, H, I>' of four numbers."""
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


def accuracies(stages: StageLog, model: str, task: str, key: str = 'dev',
               kind: str = 'finetune') -> List[float]:
    """Accuracy per seed of ``model`` on ``task`` ('dev' or 'heldout'), plain or Agora."""
    stem = f'{kind}/{model}_{task}'
    return _scores(stages, stem, key)['values']


def pretrained(config: MiniatureConfig, stages: StageLog) -> Dict[str, Dict]:
    """The figures of every student's finished pretraining stage, by student name."""
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
        for name, f in pretrained(config, stages).items():
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
        name = socrates_stage(config, task)
        if name not in stages.records:
            continue
        acc = stages.figures(name)['dev']['accuracy']
        agora[task] = acc > AGORA_PREMISE
        check = agora_check(config, acc)
        rows.append({'premise': f"Agora's teacher (Socrates) above 2/3 on {task} dev",
                     'measured': f'{100 * acc:.1f} % (the teacher fine-tuned with seed '
                                 f'{config.seeds[0]}); '
                                 + ('Agora not run there (`--agora_unmet skip`)' if check is None
                                    else f'Agora ran with the check at {check:.3g}'),
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
                            f'Search: the winner {tuple_label(knobs(win))} has a lower surrogate '
                            f'error e than the comparison {tuple_label(knobs(comp))}', floor=floor,
                            scale=1.0, unit='nats', digits=3, higher_is_better=False),
                    premise_met=True))
    # 2. pretraining (Table 3): KD against MLM-only at equal steps and at equal wall time
    pre = pretrained(config, stages)
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
                    verdict['text'] += (f' Training loops: {minutes(pre[a])} vs '
                                        f'{minutes(pre[b])} min.')
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
        values = {m: accuracies(stages, m, task) for m in models}
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
            agora = accuracies(stages, model, task, key, kind='agora')
            plain = accuracies(stages, model, task, key)
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
