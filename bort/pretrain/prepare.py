"""Pretraining data: text files -> tokenized, length-sorted npz shards in GluonNLP's layout.

Input: UTF-8 text files, one sentence a line, a blank line between documents. Every document is
cut into sequences ``CLS s1 s2 ... SEP`` of consecutive whole sentences (RoBERTa's
DOC-SENTENCES: no sequence crosses a document; no next-sentence pairs), at most
``max_seq_length`` tokens; with probability ``short_seq_prob`` a sequence aims at a random shorter
length (as BERT does), and a sentence longer than the budget is split.

Output folder::

    out/
      meta.json                    # vocabulary, special ids, token and unknown counts, shard list
      tokenizer/                   # the tokenizer the ids come from (shards travel with it)
      train-WWW-NNNN.npz           # one or more per preparation worker WWW
      eval-WWW-NNNN.npz            # held-out documents (``eval_fraction``), same layout

Each shard holds GluonNLP's keys ``input_ids, segment_ids, masked_lm_positions, masked_lm_ids,
masked_lm_weights, next_sentence_labels, valid_lengths`` as padded 2-D arrays (loadable without
pickle; GluonNLP's own writer stores ragged object arrays, which :func:`read_shard` also reads when
``allow_pickle=True``). Rows are sorted by length, so consecutive rows form length buckets. The
stored masking is one static BERT draw, kept so GluonNLP's trainer can read the files; this
project's trainer restores the original tokens (:func:`original_tokens`) and re-draws the masking
every epoch.

Preparation workers split the documents round-robin (document ``d`` goes to worker
``d % num_workers``; each worker streams every input file and tokenizes only its documents) and
write their own shards, a new one every ``shard_rows`` sequences, so there are at least
``num_workers`` shard files and memory stays bounded whatever the input size.

Token ids are looked up once per token (the released script looked them up twice, turning words
into unknowns); the unknown-token ratio is reported and a high ratio is a warning.

Command line: ``python -m bort.pretrain.prepare --tokenizer TOK_DIR --output OUT_DIR FILE ...``.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import multiprocessing
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .names import DEFAULT_NAMES, minilm_dir
from ..cli import add_dataclass_flags, make_parser, parse_configs, run_main
from ..fields import Range, at_least, check_fields, opt, probability, unit_interval
from ..errors import UserError
from ..runlock import LOCK_FILE, building_folder, hold_folder, replace_folder
from .masking import MaskingConfig, masking_for
from .shards import (META_FILE, META_FORMAT, SHARD_KEYS, DataFormatError, check_shard,
                     original_tokens, read_meta, read_shard, vocab_fingerprint, write_shard)

# The shard layout lives in bort.pretrain.shards; its names are re-exported here for convenience.
__all__ = ['PrepConfig', 'prepare_pretraining_data', 'iter_documents', 'document_sequences',
           'main', 'DataFormatError', 'write_shard', 'read_shard', 'original_tokens',
           'read_meta', 'vocab_fingerprint', 'SHARD_KEYS', 'META_FILE']

log = logging.getLogger(__name__)


@dataclass
class PrepConfig:
    """Settings of the data preparation (flags of ``python -m bort.pretrain.prepare``)."""

    max_seq_length: int = opt(512, 'tokens per sequence, CLS and SEP included (RoBERTa: 512)',
                              check=at_least(3))
    short_seq_prob: float = opt(0.1, 'probability that a sequence aims at a random shorter '
                                'length', check=unit_interval)
    num_workers: int = opt(1, 'preparation processes; each writes its own shards, so there '
                           'are at least this many', check=at_least(1))
    shard_rows: int = opt(50000, 'sequences per shard file at most (a worker starts a new file '
                          'beyond it)', check=at_least(1))
    eval_fraction: float = opt(0.0, 'fraction of documents written to held-out eval-* shards '
                               'instead (by a hash of the document index, so the split does '
                               'not depend on --num_workers)',
                               check=Range(low=0, high=1, high_open=True))
    max_predictions: int = opt(76, 'width of the stored static masking (masked_lm_* arrays)',
                               check=at_least(1))
    mask_ratio: float = opt(0.15, 'fraction of tokens in the stored static masking',
                            check=probability)
    max_unk_ratio: float = opt(0.01, 'above this unknown-token ratio, a warning',
                               check=unit_interval)
    seed: int = opt(0, 'seed of the sequence lengths, the static masking and the held-out split')

    def validate(self) -> None:
        """Raise :class:`~bort.errors.ConfigError` naming the flag of a setting out of range."""
        check_fields(self)


@dataclass
class PrepareCommand:
    """Inputs and outputs of ``python -m bort.pretrain.prepare`` (beside :class:`PrepConfig`)."""

    inputs: List[str] = opt([], 'text files, folders or glob patterns', positional=True,
                            nargs='+')
    tokenizer: str = opt('', 'tokenizer folder, or a model whose tokenizer to use: minilm (the '
                         'built-in default teacher), a project model folder or a Hugging Face '
                         'folder', required=True)
    output: str = opt('', 'output folder', required=True)


# -- reading text --------------------------------------------------------------------------------
def _expand_inputs(inputs: Sequence[str]) -> List[str]:
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if os.path.isfile(os.path.join(item, n)))
        else:
            found = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not found:
            raise DataFormatError(f'{item}: no input files there')
        files.extend(found)
    for path in files:
        if not os.path.isfile(path):
            raise DataFormatError(f'{path}: input file not found')
        if os.path.getsize(path) == 0:
            raise DataFormatError(f'{path}: empty input file (expected one sentence a line, '
                                  f'a blank line between documents)')
    return files


def iter_documents(path: str) -> Iterator[List[str]]:
    """The documents of one text file, streamed: lists of sentences (stripped, non-empty).

    Raises
    ------
    DataFormatError
        Naming the file (and line) when it is not UTF-8 text or holds no sentence at all.
    """
    doc: List[str] = []
    seen = False
    with open(path, 'rb') as f:
        for lineno, raw in enumerate(f, 1):
            if b'\x00' in raw:
                raise DataFormatError(f'{path}:{lineno}: NUL byte, this is not a text file')
            try:
                line = raw.decode('utf-8').strip()
            except UnicodeDecodeError as err:
                raise DataFormatError(f'{path}:{lineno}: not UTF-8 text ({err.reason} at '
                                      f'byte {err.start})') from None
            if line:
                doc.append(line)
                seen = True
            elif doc:
                yield doc
                doc = []
    if doc:
        yield doc
    if not seen:
        raise DataFormatError(f'{path}: no text (only blank lines); expected one sentence a '
                              f'line, a blank line between documents')


def document_sequences(sentences: Sequence[Sequence[int]], max_tokens: int,
                       short_seq_prob: float, rng: np.random.RandomState) -> Iterator[List[int]]:
    """Pack the token ids of one document's sentences into sequences of at most ``max_tokens``.

    Whole sentences are kept together while they fit; a sentence longer than the target is cut.
    Special tokens are not added here.
    """
    def target() -> int:
        if max_tokens > 2 and rng.random_sample() < short_seq_prob:
            return int(rng.randint(2, max_tokens + 1))
        return max_tokens

    goal, current = target(), []
    for sentence in sentences:
        pending = list(sentence)
        while pending:
            room = goal - len(current)
            if len(pending) <= room:
                current.extend(pending)
                pending = []
            elif current:
                yield current
                goal, current = target(), []
            else:
                yield pending[:goal]
                pending = pending[goal:]
                goal = target()
    if current:
        yield current


# -- the preparation -----------------------------------------------------------------------------
TokenizerSource = Union[str, object]


def _load(tokenizer: TokenizerSource):
    if isinstance(tokenizer, str):
        from ..tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
        return load_tokenizer(tokenizer)
    return tokenizer


def _is_eval(doc_index: int, fraction: float, seed: int) -> bool:
    # A multiplicative hash of the document index: the split is the same for any worker count.
    return ((doc_index * 2654435761 + seed * 97) % 1_000_003) < fraction * 1_000_003


@dataclass
class _Writer:
    """One worker's shard writer for one split; flushes every ``shard_rows`` sequences."""
    folder: str
    split: str
    worker: int
    config: PrepConfig
    masking: MaskingConfig
    pad_id: int
    rng: np.random.RandomState
    rows: List[List[int]] = field(default_factory=list)
    files: List[Dict] = field(default_factory=list)

    def add(self, ids: List[int]) -> None:
        self.rows.append(ids)
        if len(self.rows) >= self.config.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        lengths = np.array([len(r) for r in self.rows], dtype=np.int32)
        tokens = np.full((len(self.rows), int(lengths.max())), self.pad_id, dtype=np.int32)
        for i, row in enumerate(self.rows):
            tokens[i, :len(row)] = row
        name = f'{self.split}-{self.worker:03d}-{len(self.files):04d}.npz'
        write_shard(os.path.join(self.folder, name), tokens, lengths, self.masking, self.rng)
        self.files.append({'file': name, 'rows': len(self.rows), 'tokens': int(lengths.sum())})
        self.rows = []


def _prepare_worker(args: Tuple) -> Dict:
    """Worker ``worker`` of ``num_workers``: documents ``d`` with ``d % num_workers == worker``."""
    worker, files, tokenizer, folder, config = args
    tok = _load(tokenizer)
    config = PrepConfig(**config)
    rng = np.random.RandomState([config.seed, worker])
    masking = masking_for(tok, config.mask_ratio, config.max_predictions)
    writers = {s: _Writer(folder, s, worker, config, masking, tok.pad_id, rng)
               for s in ('train', 'eval')}
    stats = {'documents': 0, 'sentences': 0, 'tokens': 0, 'unknown': 0}
    doc_index = -1
    for path in files:
        for sentences in iter_documents(path):
            doc_index += 1
            if doc_index % config.num_workers != worker:
                continue
            ids = [tok.encode(s) for s in sentences]  # one look-up per token, no second pass
            ids = [s for s in ids if s]
            if not ids:
                continue
            stats['documents'] += 1
            stats['sentences'] += len(ids)
            stats['tokens'] += sum(len(s) for s in ids)
            stats['unknown'] += sum(s.count(tok.unk_id) for s in ids)
            split = 'eval' if _is_eval(doc_index, config.eval_fraction, config.seed) else 'train'
            for seq in document_sequences(ids, config.max_seq_length - 2, config.short_seq_prob,
                                          rng):
                writers[split].add([tok.cls_id, *seq, tok.sep_id])
    for writer in writers.values():
        writer.flush()
    stats['files'] = {s: w.files for s, w in writers.items()}
    return stats


#: What a data folder holds: anything else in an existing --output is refused, not deleted.
_OWN_NAMES = re.compile(r'(train|eval)-\d{3}-\d{4}\.npz|' + re.escape(META_FILE)
                        + r'|tokenizer|' + re.escape(LOCK_FILE))


def _check_replaceable(output: str) -> None:
    """Refuse an --output that holds files this command did not write (they would be lost)."""
    if not os.path.isdir(output):
        if os.path.exists(output):
            raise DataFormatError('--output exists and is not a folder', output)
        return
    foreign = sorted(n for n in os.listdir(output) if not _OWN_NAMES.fullmatch(n))
    if foreign:
        shown = ', '.join(foreign[:5]) + (', ...' if len(foreign) > 5 else '')
        raise DataFormatError(f'holds files that are not prepared data ({shown}); they would be '
                              f'replaced with it: choose a new or empty --output folder', output)


def _check_built(folder: str, meta: Dict) -> None:
    """Every shard meta.json lists is there, opens and has the rows it says."""
    for split, files in meta['shards'].items():
        for entry in files:
            rows = check_shard(os.path.join(folder, entry['file']))
            if rows != entry['rows']:
                raise DataFormatError(f'{split} shard has {rows} rows, meta.json says '
                                      f'{entry["rows"]}', os.path.join(folder, entry['file']))


def prepare_pretraining_data(inputs: Sequence[str], tokenizer: TokenizerSource, output: str,
                             config: Optional[PrepConfig] = None) -> Dict:
    """Tokenize text files into shards with ``config.num_workers`` processes.

    The data is built in a sibling folder (``output.new-PID``) and swapped in only once every
    shard is written and checked: a failure (bad input, full disk, Ctrl-C) leaves an existing
    ``output`` as it was. The folder is held for the duration (:func:`bort.runlock.hold_folder`):
    a second preparation into it stops at once.

    Parameters
    ----------
    inputs : sequence of str
        Text files, folders (all their files) or glob patterns.
    tokenizer : str or Tokenizer
        A tokenizer folder (see :func:`bort.tokenizers.load.load_tokenizer`) or object; with several
        workers a folder is loaded in each, an object is pickled to them.
    output : str
        The output folder (created, or replaced when it holds earlier prepared data only).
    config : PrepConfig, optional

    Returns
    -------
    dict
        The ``meta.json`` content: counts, unknown ratio, shard files.

    Raises
    ------
    ConfigError
        A setting out of range, naming the flag.
    DataFormatError
        Naming the file, for a missing, empty, binary or non-UTF-8 input, when no sequence
        results at all, or when ``output`` holds files that are not prepared data.
    FolderInUseError
        Another command holds ``output``.
    """
    config = config or PrepConfig()
    config.validate()
    files = _expand_inputs(inputs)
    tok = _load(tokenizer)
    _check_replaceable(output)
    with hold_folder(output, what='python -m bort.pretrain.prepare'):
        building = building_folder(output)
        try:
            meta = _prepare_into(building, files, tokenizer, tok, config)
            _check_built(building, meta)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        replace_folder(building, output)
    log.info('%d documents, %d sentences, %d tokens, %d unknown (%.3f%%) -> %d train / %d eval '
             'sequences in %d + %d shards in %s', meta['documents'], meta['sentences'],
             meta['tokens'], meta['unknown'], 100 * meta['unk_ratio'],
             meta['sequences']['train'], meta['sequences']['eval'], len(meta['shards']['train']),
             len(meta['shards']['eval']), output)
    if meta['unk_ratio'] > config.max_unk_ratio:
        log.warning('%.2f%% of the tokens are unknown (threshold %.2f%%): the tokenizer does not '
                    'fit this text (a double vocabulary look-up, as in the released script, '
                    'gives this symptom)', 100 * meta['unk_ratio'], 100 * config.max_unk_ratio)
    return meta


def _prepare_into(output: str, files: List[str], tokenizer: TokenizerSource, tok,
                  config: PrepConfig) -> Dict:
    """Write shards, the tokenizer and meta.json into the empty folder ``output``."""
    jobs = [(w, files, tokenizer, output, asdict(config)) for w in range(config.num_workers)]
    if config.num_workers == 1:
        results = [_prepare_worker(jobs[0])]
    else:
        with multiprocessing.get_context().Pool(config.num_workers) as pool:
            results = pool.map(_prepare_worker, jobs)
    totals = {k: sum(r[k] for r in results)
              for k in ('documents', 'sentences', 'tokens', 'unknown')}
    shards = {s: [f for r in results for f in r['files'][s]] for s in ('train', 'eval')}
    if not shards['train']:
        raise DataFormatError(f'no training sequence came out of {", ".join(files)} '
                              f'(eval_fraction={config.eval_fraction})')
    ratio = totals['unknown'] / max(totals['tokens'], 1)
    tok.save(os.path.join(output, 'tokenizer'))
    meta = dict(format=META_FORMAT, version=1, vocab_size=tok.vocab_size,
                cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id, mask_id=tok.mask_id,
                unk_id=tok.unk_id, vocab_sha1=vocab_fingerprint(tok), tokenizer='tokenizer',
                config=asdict(config), sources=[os.path.abspath(f) for f in files],
                unk_ratio=ratio, **totals,
                sequences={s: sum(f['rows'] for f in v) for s, v in shards.items()},
                shards=shards)
    with open(os.path.join(output, META_FILE), 'w') as f:
        json.dump(meta, f, indent=2)
    return meta


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bort.pretrain.prepare``."""
    parser = make_parser(prog='python -m bort.pretrain.prepare',
                         description=__doc__.split('\n\n')[0])
    add_dataclass_flags(parser, PrepareCommand)
    add_dataclass_flags(parser, PrepConfig, group='preparation')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Command line: ``python -m bort.pretrain.prepare --tokenizer DIR --output DIR FILE ...``."""
    command, config = parse_configs(build_parser(), [PrepareCommand, PrepConfig], argv)
    from ..log import setup_logging  # pylint: disable=import-outside-toplevel
    setup_logging()
    # minilm's tokenizer is the installed all-MiniLM-L6-v2's (nothing to build for it); a
    # Hugging Face folder's tokenizer files are read as they are.
    tokenizer = minilm_dir() if command.tokenizer in DEFAULT_NAMES else command.tokenizer
    return prepare_pretraining_data(command.inputs, tokenizer, command.output, config)


if __name__ == '__main__':
    run_main(main, (UserError, FileNotFoundError), 'bort.pretrain.prepare')
