"""The miniature's report: the paper's Tables 1 and 3-5 in small, PNGs, a verdict per claim.

:mod:`bort.experiments.claims` turns the stages' figures into premises and claims judged with
their noise; :func:`write_report` writes ``report.md``, ``report.json``
and the PNGs at the top of the output folder. Everything is recomputed from the stages'
``done.json`` files, so a rerun of a finished experiment rewrites the same report in seconds.
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Dict, List, Sequence

from ..checkpoint import write_json_atomic
from .config import (AGORA_PREMISE, MiniatureConfig, finetuned_models, model_labels,
                     socrates_stage)
from .finetuning import agora_skipped
from .plots import plot_bars, plot_pretraining, plot_scores
from .stages import StageLog
from .claims import (NOT_JUDGED, accuracies, first_rise, knobs, minutes, premises, pretrained,
                     tuple_label, verdicts)
from .verdicts import Z, levels_off, spread

__all__ = ['write_report', 'fill_ratio', 'REPORT_FILE', 'PNG_FILES']

REPORT_FILE = 'report.md'
PNG_FILES = ('pretrain_curves.png', 'finetune_scores.png', 'latency.png', 'stage_times.png')


def fill_ratio(data: Dict, seq_len: int) -> float:
    """Real tokens per token slot of the prepared data: its token count over its sequences
    times their maximum length (docstrings are short documents, so most slots are padding)."""
    sequences = data.get('sequences')
    count = sum(sequences.values()) if isinstance(sequences, dict) else sequences
    if not count or not data.get('tokens'):
        return float('nan')
    return min(1.0, float(data['tokens']) / (float(count) * seq_len))


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
            f'Winner {tuple_label(knobs(win))} ({win["params"] / 1e6:.2f}M parameters, e = '
            f'{win["error"]:.3f}); comparison {tuple_label(knobs(comp))} '
            f'({comp["params"] / 1e6:.2f}M, '
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
        lines.append(f'| {labels[name]} | {tuple_label(f["arch"])} | {f["params"] / 1e6:.2f} | '
                     f'{f["steps"]} | {100 * f["final_acc"]:.2f} | {100 * f["final_top5"]:.2f} | '
                     f'{f["final_loss"]:.3f} | '
                     + (f'≈ {rise["tokens"] * fill / 1e6:.2f}M real tokens (step '
                        f'{rise["step"]})' if rise else
                        f'**not reached** in ≈ {f["tokens"] * fill / 1e6:.2f}M real tokens')
                     + f' | {f["tokens_per_s"] or 0:.0f} | {minutes(f)} | '
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
    if not done and agora_skipped(config, stages, task):
        socrates = socrates_stage(config, task)
        return [f'## Table 5 in miniature: Agora on {task}: not run', '',
                f"Its teacher (Socrates, the teacher fine-tuned on {task} with seed "
                f"{config.seeds[0]}) has {100 * stages.figures(socrates)['dev']['accuracy']:.1f} "
                f"% dev accuracy, not above the method's requirement of "
                f'{100 * AGORA_PREMISE:.1f} %: the premise is not met, and `--agora_unmet skip` '
                f'leaves the task out.', '']
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
        lines.append(f'| {labels[m]} | {_cell(accuracies(stages, m, task))} | '
                     f'{_cell(accuracies(stages, m, task, kind="agora"))} | '
                     f'{_cell(accuracies(stages, m, task, "heldout"))} | '
                     f'{_cell(accuracies(stages, m, task, "heldout", kind="agora"))} | '
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
    if len(rows) > 1 and flat == rows[-1]['steps']:
        lines += ['', f'**No levelling off within the table**: the longest build ({flat} steps) '
                      f'is more than {Z:g} standard errors ahead of every shorter one, so the '
                      'teacher is still gaining; the build time decides where to stop.', '']
    else:
        lines += ['', f'The gain levels off at **{flat} steps**: the fewest whose top-1 is '
                      f'within {Z:g} standard errors of the best row\'s (`--teacher '
                      f'minilm-{flat}`; a longer build buys no measurable accuracy on these '
                      'positions).', '']
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


def _latency_names(lat: Dict) -> List[str]:
    """The latency stage's models in reading order: teacher, winner, comparison, then others.

    The stage's figures come back from ``done.json`` with their keys sorted, so the order is
    set here rather than taken from the dict.
    """
    first = [n for n in ('teacher', 'winner', 'comparison') if n in lat['models']]
    return first + sorted(n for n in lat['models'] if n not in first)


def _latency_lines(lat: Dict) -> List[str]:
    lines = ['## Inference latency through the fast path', '',
             f'`bort.inference.fast.FastModel`, batch {lat["batch_size"]} × {lat["seq_len"]} '
             f'tokens, {lat["repeats"]} rounds with the models interleaved, '
             f'OMP_NUM_THREADS={lat["threads"]}, {lat["device"]}.', '',
             '| model | <D, A, H, I> | params (M) | median ms | IQR ms | vs teacher |',
             '|---|---|---:|---:|---:|---:|']
    t_ms = lat['models']['teacher']['median_ms']
    for n in _latency_names(lat):
        m = lat['models'][n]
        lines.append(f'| {n} | {tuple_label(m["arch"])} | {m["params"] / 1e6:.2f} | '
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
    lines += [f'| **total** | | **{total / 60:.1f}** | | |', '']
    return lines + _teacher_build_lines(stages, total) + ['![stage times](stage_times.png)',
                                                          '']


def _teacher_build_lines(stages: StageLog, total: float) -> List[str]:
    """What the teacher cost once, when this run found it built (its stage then takes
    seconds, and the total above leaves the build out)."""
    # pylint: disable=import-outside-toplevel
    from ..pretrain.default_teacher import recorded_build_seconds
    if 'teacher' not in stages.records:
        return []
    phases = recorded_build_seconds(stages.figures('teacher')['folder'])
    built = sum(phases.values())
    if stages.records['teacher'].get('seconds', 0.0) >= built:  # none recorded: built = 0
        return []
    return ['The teacher was built before this run (the stage found it in its cache); its '
            'build recorded ' + ', '.join(f'{k} {v / 60:.1f} min' for k, v in phases.items())
            + f' = **{built / 60:.1f} min**, which a first run on a fresh machine adds '
              f'(with the download of all-MiniLM-L6-v2): **{(total + built) / 60:.1f} min** '
              'with the stages above.', '']


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
    pre = pretrained(config, stages)
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
    table = {m: {f'{t} dev': accuracies(stages, m, t) for t in config.tasks} for m in models}
    for m in models:
        for t in held:
            table[m][f'{t} held-out'] = accuracies(stages, m, t, 'heldout')
    if any(v for row in table.values() for v in row.values()):
        plot_scores(png(PNG_FILES[1]), columns, {labels[m]: table[m] for m in models})
        body += _finetune_lines(config, sizes, columns, table)
    for task in config.agora_tasks if config.agora_models else ():
        body += _agora_lines(config, stages, task)
    if lat:
        names = _latency_names(lat)
        plot_bars(png(PNG_FILES[2]),
                  [f'{n} {tuple_label(lat["models"][n]["arch"])}' for n in names],
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
