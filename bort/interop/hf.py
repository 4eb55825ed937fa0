"""Hugging Face checkpoints: the tensor-name mapping, the config <-> architecture rules, file I/O.

The project's parameter names (GluonNLP's, see :mod:`bort.model`) map one to one onto Hugging
Face ``BertModel``/``RobertaModel`` names; dense weights are (out, in) on both sides, so no
transpose is needed. Two things are not one to one:

- RoBERTa's position table has ``padding_idx + 1`` leading rows that no real token uses (fairseq
  numbers positions from ``padding_idx + 1``); ours starts at 0, so those rows are sliced off.
- The masked-LM decoder weight is tied to the word embedding on both sides; a checkpoint that
  stores it separately must hold the same values.

Only numpy and ``safetensors`` are needed to read ``.safetensors`` files; torch is imported, lazily,
only to read ``pytorch_model.bin``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..arch import Architecture
from ..errors import UserError

__all__ = ['FAMILIES', 'UnsupportedCheckpointError', 'hf_names', 'arch_from_config',
           'config_from_arch', 'read_state_dict', 'write_safetensors', 'normalise_names',
           'tied_names', 'check_tied', 'split_known', 'IGNORED_SUFFIXES', 'DROPPED_PREFIXES']

log = logging.getLogger(__name__)

#: ``model_type`` -> naming family. CamemBERT and XLM-R use RoBERTa's layout.
FAMILIES = {'bert': 'bert', 'roberta': 'roberta', 'xlm-roberta': 'roberta',
            'camembert': 'roberta'}
#: Buffers that some checkpoints store; not weights.
IGNORED_SUFFIXES = ('embeddings.position_ids', 'embeddings.token_type_ids')
#: Heads this project has no place for; dropped with a warning.
DROPPED_PREFIXES = ('cls.seq_relationship.',)


class UnsupportedCheckpointError(UserError, ValueError):
    """A checkpoint of a model family or setting this project cannot represent."""


def _head_names(family: str) -> Dict[str, str]:
    if family == 'bert':
        return {'decoder.0.weight': 'cls.predictions.transform.dense.weight',
                'decoder.0.bias': 'cls.predictions.transform.dense.bias',
                'decoder.2.gamma': 'cls.predictions.transform.LayerNorm.weight',
                'decoder.2.beta': 'cls.predictions.transform.LayerNorm.bias',
                'decoder.3.bias': 'cls.predictions.bias'}
    return {'decoder.0.weight': 'lm_head.dense.weight', 'decoder.0.bias': 'lm_head.dense.bias',
            'decoder.2.gamma': 'lm_head.layer_norm.weight',
            'decoder.2.beta': 'lm_head.layer_norm.bias', 'decoder.3.bias': 'lm_head.bias'}


def tied_names(family: str) -> Dict[str, str]:
    """Tied copies a HF checkpoint may also store: their name -> the HF name they must equal."""
    base = 'bert' if family == 'bert' else 'roberta'
    head = 'cls.predictions' if family == 'bert' else 'lm_head'
    return {f'{head}.decoder.weight': f'{base}.embeddings.word_embeddings.weight',
            f'{head}.decoder.bias': f'{head}.bias'}


def hf_names(arch: Architecture, family: str = 'bert', with_decoder: bool = False
             ) -> Dict[str, str]:
    """Project parameter name -> Hugging Face tensor name, for every parameter of ``arch``.

    Names carry the base-model prefix (``bert.`` or ``roberta.``); head names are top level.
    """
    base = 'bert' if family == 'bert' else 'roberta'
    emb = f'{base}.embeddings'
    names = {'word_embed.0.weight': f'{emb}.word_embeddings.weight',
             'encoder.position_weight': f'{emb}.position_embeddings.weight',
             'encoder.layer_norm.gamma': f'{emb}.LayerNorm.weight',
             'encoder.layer_norm.beta': f'{emb}.LayerNorm.bias'}
    if arch.token_type_vocab_size:
        names['token_type_embed.0.weight'] = f'{emb}.token_type_embeddings.weight'
    cell_map = {'attention_cell.proj_query': 'attention.self.query',
                'attention_cell.proj_key': 'attention.self.key',
                'attention_cell.proj_value': 'attention.self.value',
                'proj': 'attention.output.dense', 'ffn.ffn_1': 'intermediate.dense',
                'ffn.ffn_2': 'output.dense'}
    norm_map = {'layer_norm': 'attention.output.LayerNorm', 'ffn.layer_norm': 'output.LayerNorm'}
    for i in range(arch.num_layers):
        ours, theirs = f'encoder.transformer_cells.{i}', f'{base}.encoder.layer.{i}'
        for a, b in cell_map.items():
            names[f'{ours}.{a}.weight'] = f'{theirs}.{b}.weight'
            names[f'{ours}.{a}.bias'] = f'{theirs}.{b}.bias'
        for a, b in norm_map.items():
            names[f'{ours}.{a}.gamma'] = f'{theirs}.{b}.weight'
            names[f'{ours}.{a}.beta'] = f'{theirs}.{b}.bias'
    if arch.use_pooler:
        names['pooler.weight'] = f'{base}.pooler.dense.weight'
        names['pooler.bias'] = f'{base}.pooler.dense.bias'
    if with_decoder:
        names.update(_head_names(family))
    return names


def normalise_names(tensors: Dict[str, np.ndarray], family: str) -> Dict[str, np.ndarray]:
    """Give every tensor its full name: base prefix added where a bare ``BertModel`` was saved,
    old ``LayerNorm.gamma/beta`` renamed ``weight/bias``."""
    base = 'bert' if family == 'bert' else 'roberta'
    out = {}
    for name, value in tensors.items():
        if name.startswith(('embeddings.', 'encoder.', 'pooler.')):
            name = f'{base}.{name}'
        if 'LayerNorm.' in name or 'layer_norm.' in name:
            name = name.replace('.gamma', '.weight').replace('.beta', '.bias')
        out[name] = value
    return out


def _config_value(config: Dict, key: str, path: str):
    if key not in config:
        raise UnsupportedCheckpointError(f'{path}: config has no {key!r}')
    return config[key]


def arch_from_config(config: Dict, path: str = 'config.json', name: str = ''
                     ) -> Tuple[Architecture, str, int]:
    """The architecture a HF config describes, its naming family and its position offset.

    Returns
    -------
    arch : Architecture
        ``use_pooler`` is set True here; the caller turns it off when no pooler tensor exists.
    family : str
        ``'bert'`` or ``'roberta'``.
    offset : int
        Leading position rows to drop (``pad_token_id + 1`` for RoBERTa, else 0).
    """
    model_type = config.get('model_type')
    if model_type not in FAMILIES:
        raise UnsupportedCheckpointError(
            f'{path}: model_type {model_type!r} is not supported; supported families: '
            f'{", ".join(sorted(FAMILIES))} (BERT and RoBERTa layouts)')
    family = FAMILIES[model_type]
    act = config.get('hidden_act', 'gelu')
    if act != 'gelu':
        raise UnsupportedCheckpointError(
            f'{path}: hidden_act {act!r}; the project\'s encoder uses the exact (erf) GELU, '
            f'as GluonNLP does, so only hidden_act "gelu" converts without changing outputs')
    pos_type = config.get('position_embedding_type', 'absolute')
    if pos_type != 'absolute':
        raise UnsupportedCheckpointError(f'{path}: position_embedding_type {pos_type!r}; only '
                                         f'absolute positions are supported')
    offset = config.get('pad_token_id', 1) + 1 if family == 'roberta' else 0
    dropout = config.get('hidden_dropout_prob', 0.1)
    if config.get('attention_probs_dropout_prob', dropout) != dropout:
        log.warning('%s: attention dropout %s differs from hidden dropout %s; the project has '
                    'one dropout rate and uses the hidden one', path,
                    config['attention_probs_dropout_prob'], dropout)
    arch = Architecture(
        num_layers=_config_value(config, 'num_hidden_layers', path),
        num_heads=_config_value(config, 'num_attention_heads', path),
        units=_config_value(config, 'hidden_size', path),
        hidden_size=_config_value(config, 'intermediate_size', path),
        vocab_size=_config_value(config, 'vocab_size', path),
        max_length=_config_value(config, 'max_position_embeddings', path) - offset,
        dropout=dropout, layer_norm_eps=config.get('layer_norm_eps', 1e-12),
        token_type_vocab_size=config.get('type_vocab_size', 2), use_pooler=True,
        embedding_dropout='after_norm', name=name)
    return arch, family, offset


def config_from_arch(arch: Architecture, with_decoder: bool, pad_token_id: int = 0) -> Dict:
    """A ``BertConfig`` dict for ``arch``; ``bort_arch`` keeps the exact architecture.

    A model without token types gets ``type_vocab_size`` 1 (its single row is written as zeros),
    because BERT always adds a token-type embedding.
    """
    return {
        'architectures': ['BertForMaskedLM' if with_decoder else 'BertModel'],
        'model_type': 'bert', 'vocab_size': arch.vocab_size, 'hidden_size': arch.units,
        'num_hidden_layers': arch.num_layers, 'num_attention_heads': arch.num_heads,
        'intermediate_size': arch.hidden_size, 'hidden_act': 'gelu',
        'hidden_dropout_prob': arch.dropout, 'attention_probs_dropout_prob': arch.dropout,
        'max_position_embeddings': arch.max_length,
        'type_vocab_size': max(1, arch.token_type_vocab_size), 'initializer_range': 0.02,
        'layer_norm_eps': arch.layer_norm_eps, 'pad_token_id': pad_token_id,
        'position_embedding_type': 'absolute', 'tie_word_embeddings': True,
        'torch_dtype': 'float32', 'bort_arch': arch.to_dict(),
    }


def _load_safetensors(path: str) -> Dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(f'reading {path} needs the safetensors package '
                          f'(pip install safetensors, or pip install .[hf])') from err
    return load_file(path)


def _load_torch_bin(path: str) -> Dict[str, np.ndarray]:
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(f'reading {path} needs torch (pip install .[hf]); checkpoints in '
                          f'model.safetensors need only the safetensors package') from err
    state = torch.load(path, map_location='cpu', weights_only=True)
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def read_state_dict(folder: str) -> Tuple[Dict[str, np.ndarray], str]:
    """All tensors of a HF checkpoint folder (single file or sharded) and the file(s) read."""
    candidates = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                  'pytorch_model.bin.index.json']
    for name in candidates:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if name.endswith('.index.json'):
            with open(path) as f:
                shards = sorted(set(json.load(f)['weight_map'].values()))
            loader = _load_safetensors if 'safetensors' in name else _load_torch_bin
            tensors: Dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(loader(os.path.join(folder, shard)))
            return tensors, path
        loader = _load_safetensors if name.endswith('.safetensors') else _load_torch_bin
        return loader(path), path
    raise FileNotFoundError(f'no weights in {os.path.abspath(folder)}: looked for '
                            f'{", ".join(candidates)}')


def write_safetensors(tensors: Dict[str, np.ndarray], path: str) -> None:
    """Write float32 tensors with the ``format: pt`` metadata transformers expects."""
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, path,
              metadata={'format': 'pt'})


def check_tied(tensors: Dict[str, np.ndarray], family: str) -> List[str]:
    """Problems with stored tied copies (decoder weight/bias) that differ from their source."""
    problems = []
    for copy, source in tied_names(family).items():
        if copy in tensors and source in tensors and not np.array_equal(tensors[copy],
                                                                       tensors[source]):
            problems.append(f'{copy} differs from {source}, but the project ties them (the '
                            f'decoder weight is the word embedding)')
    return problems


def split_known(tensors: Dict[str, np.ndarray], family: str, expected: Optional[set] = None
                ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Tensors with buffers, tied copies and dropped heads removed, and the dropped heads' names."""
    tied = tied_names(family)
    kept, dropped = {}, []
    for name, value in tensors.items():
        if name.endswith(IGNORED_SUFFIXES) or name in tied:
            continue
        if name.startswith(DROPPED_PREFIXES) and not (expected and name in expected):
            dropped.append(name)
            continue
        kept[name] = value
    return kept, dropped
