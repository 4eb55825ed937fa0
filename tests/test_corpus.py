"""The docstring corpus: prose kept, the rest dropped, deterministic files."""
from bort.pretrain.corpus import docstring_sentences, python_docs_corpus

DOC = '''Compute the thing from the other thing.

The :func:`compute` function reads ``x`` and returns *twice* its value. It never fails,
e.g. on large inputs it still works.

>>> compute(2)
4

.. note:: a directive that is dropped.

Parameters
----------
x : int
    The value to double, which is a sentence we do not want.
'''


def test_docstring_sentences_keep_prose_only():
    assert docstring_sentences(DOC) == [
        'Compute the thing from the other thing.',
        'The compute function reads x and returns twice its value.',
        'It never fails, e.g. on large inputs it still works.',
    ]
    assert docstring_sentences('Short one.') == []  # under four words
    assert docstring_sentences('Returns a = b + c when x[0] > 1.') == []  # reads as code


def _package(root):
    pkg = root / 'pkg'
    (pkg / 'tests').mkdir(parents=True)
    (pkg / '__init__.py').write_text('"""The package holds two small modules for testing."""\n')
    (pkg / 'alpha.py').write_text(
        '"""Alpha does the first part of the work.\n\nIt is careful and slow by design."""\n\n'
        'class Worker:\n    """A worker keeps its own small queue."""\n\n'
        '    def run(self):\n        """Run every queued job in order."""\n\n'
        'def helper():\n    """A worker keeps its own small queue."""\n')
    (pkg / 'broken.py').write_text('def (:\n')
    (pkg / 'tests' / 'test_alpha.py').write_text('"""Tests are never part of the corpus."""\n')
    return pkg


def test_python_docs_corpus_is_deterministic(tmp_path):
    _package(tmp_path)
    first, second = tmp_path / 'a.txt', tmp_path / 'b.txt'
    stats = python_docs_corpus(str(first), 10_000, roots=[str(tmp_path)])
    python_docs_corpus(str(second), 10_000, roots=[str(tmp_path)])
    text = first.read_text()
    assert text == second.read_text()
    assert text == ('The package holds two small modules for testing.\n\n'
                    'Alpha does the first part of the work.\nIt is careful and slow by design.\n\n'
                    'A worker keeps its own small queue.\n\n'
                    'Run every queued job in order.\n\n')  # the repeated docstring once
    assert stats['documents'] == 4 and stats['sentences'] == 5
    assert stats['bytes'] == len(text.encode('utf-8'))


def test_python_docs_corpus_stops_at_max_bytes(tmp_path):
    _package(tmp_path)
    stats = python_docs_corpus(str(tmp_path / 'c.txt'), 60, roots=[str(tmp_path)])
    assert stats['documents'] == 2  # the document crossing the limit is kept whole
    assert (tmp_path / 'c.txt').read_text().endswith('design.\n\n')
