"""A corpus of real English present on any machine: the docstrings of installed Python modules.

:func:`python_docs_corpus` reads the source files of the standard library and of site-packages
with :mod:`ast` (nothing is imported), keeps the prose of each docstring (up to its first
section header such as ``Parameters`` or ``Example``; doctests, reST directives and code-like lines
dropped; reST markup reduced to its text), splits it into sentences and writes one sentence per
line with a blank line between documents (one document per docstring). Files are read in sorted
order and repeated docstrings are skipped, so the same installation gives the same file.
"""
from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
import sysconfig
from typing import Dict, Iterator, List, Optional, Sequence

from ..log import progress

__all__ = ['python_docs_corpus', 'docstring_sentences', 'iter_docstrings', 'default_roots']

log = logging.getLogger(__name__)

_SKIP_DIRS = {'__pycache__', 'test', 'tests', 'testing', 'site-packages', 'dist-packages',
              'idle_test', 'lib2to3', 'ensurepip', '_vendor', 'vendor', 'examples'}
_SECTION = re.compile(
    r'^\s*(Parameters|Returns?|Yields?|Raises|Examples?|Notes?|See Also|References|Attributes|'
    r'Methods|Args|Arguments|Keyword Arguments|Other Parameters|Warnings?|Usage|Example usage|'
    r'Todo|Inputs?|Outputs?)\s*:?\s*$', re.IGNORECASE)
_UNDERLINE = re.compile(r'^\s*([-=~^*#"+`]{3,})\s*$')
_ROLE = re.compile(r':[\w:.-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`')
_LITERAL = re.compile(r'``([^`]*)``|`([^`]*)`_{0,2}')
_EMPHASIS = re.compile(r'\*{1,2}([^*\s][^*]*?)\*{1,2}')
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=["\'(]?[A-Z])')
_ABBREVIATIONS = ('e.g.', 'i.e.', 'etc.', 'vs.', 'cf.', 'Mr.', 'Dr.', 'No.')


def default_roots() -> List[str]:
    """The standard library folder and the site-packages folder of this interpreter."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths['stdlib'], paths['purelib']) if os.path.isdir(p)))


def _python_files(root: str) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith('.')
                         and not d.endswith(('.dist-info', '.egg-info')))
        for name in sorted(files):
            if name.endswith('.py') and not name.startswith('test_'):
                yield os.path.join(folder, name)


def iter_docstrings(path: str, max_file_bytes: int = 2_000_000) -> Iterator[str]:
    """Docstrings of a source file in source order: module, then classes and functions."""
    try:
        if os.path.getsize(path) > max_file_bytes:
            return
        with open(path, 'rb') as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return
    stack = [tree]
    while stack:
        node = stack.pop()
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc
        children = [n for n in getattr(node, 'body', [])
                    if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        stack.extend(reversed(children))


def _is_prose(line: str) -> bool:
    text = line.strip()
    if not text or text.startswith(('>>>', '...', '..', '$ ', '#', '|', '+-', '- ', '* ')):
        return False
    letters = sum(c.isalpha() for c in text)
    if letters < 0.7 * len(text.replace(' ', '')):
        return False
    return not re.search(r'[{}\[\]=<>\\]|\w\(|->|::$|\w_\w', text)


def docstring_sentences(doc: str, min_words: int = 4, max_words: int = 60) -> List[str]:
    """The prose sentences of one docstring.

    Everything from the first section header (``Parameters``, ``Returns:``, a reST underline,
    ...) on is dropped; so are doctests, directives and lines that read as code. A sentence keeps
    ``min_words`` to ``max_words`` words, starts with a capital letter and ends with ``.``, ``!``
    or ``?``.
    """
    lines = doc.splitlines()
    kept: List[str] = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ''
        if _SECTION.match(line) or _UNDERLINE.match(nxt) or _UNDERLINE.match(line):
            break
        if line[:1] in (' ', '\t'):
            kept.append('')  # indented after dedenting: code, a list or a definition body
            continue
        kept.append(line.strip() if _is_prose(line) else '')
    sentences: List[str] = []
    for paragraph in ' '.join(t if t else '\n' for t in kept).split('\n'):
        text = _ROLE.sub(r'\1', paragraph)
        text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
        text = _EMPHASIS.sub(r'\1', text)
        text = re.sub(r'\s+', ' ', text).strip()
        for abbr in _ABBREVIATIONS:
            text = text.replace(abbr + ' ', abbr.replace('.', '\0') + ' ')
        for sentence in _SENTENCE_END.split(text):
            sentence = sentence.replace('\0', '.').strip()
            words = sentence.split()
            letters = sum(c.isalpha() for c in sentence)
            if (min_words <= len(words) <= max_words and sentence[0].isupper()
                    and sentence[-1] in '.!?' and sentence.isprintable()
                    and letters >= 0.75 * len(sentence.replace(' ', ''))):
                sentences.append(sentence)
    return sentences


def python_docs_corpus(out_path: str, max_bytes: int = 10_000_000,
                       roots: Optional[Sequence[str]] = None, min_sentences: int = 1) -> Dict:
    """Write the docstring corpus to ``out_path`` (one sentence a line, documents blank-separated).

    Parameters
    ----------
    out_path : str
        The text file to write (its folder is created).
    max_bytes : int
        Stop once the file holds this many bytes (UTF-8; the last document is kept whole).
    roots : sequence of str, optional
        Folders to scan, in order; defaults to :func:`default_roots` (stdlib, site-packages).
    min_sentences : int
        Skip docstrings with fewer prose sentences.

    Returns
    -------
    dict
        ``path, documents, sentences, bytes, files`` (source files read).
    """
    roots = list(roots) if roots is not None else default_roots()
    seen = set()
    stats = {'path': out_path, 'documents': 0, 'sentences': 0, 'bytes': 0, 'files': 0}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + '.tmp'
    # The scan reads thousands of source files: a bar over the bytes written shows it moving.
    bar = progress(total=max_bytes, unit='B', unit_scale=True, desc='docstring corpus')
    with open(tmp, 'w', encoding='utf-8') as out:
        for root in roots:
            for path in _python_files(root):
                stats['files'] += 1
                for doc in iter_docstrings(path):
                    sentences = docstring_sentences(doc)
                    if len(sentences) < min_sentences:
                        continue
                    text = '\n'.join(sentences) + '\n\n'
                    digest = hashlib.sha1(text.encode('utf-8')).digest()
                    if digest in seen:
                        continue
                    seen.add(digest)
                    out.write(text)
                    stats['documents'] += 1
                    stats['sentences'] += len(sentences)
                    stats['bytes'] += len(text.encode('utf-8'))
                    bar.update(min(len(text.encode('utf-8')), max_bytes - bar.n))
                    if stats['bytes'] >= max_bytes:
                        break
                if stats['bytes'] >= max_bytes:
                    break
            if stats['bytes'] >= max_bytes:
                break
    bar.close()
    os.replace(tmp, out_path)
    log.info('python docs corpus: %(documents)d documents, %(sentences)d sentences, '
             '%(bytes)d bytes from %(files)d files', stats)
    return stats
