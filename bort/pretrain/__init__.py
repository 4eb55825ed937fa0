"""Pretraining by knowledge distillation (SPEC section 5): data, masking, losses, teacher, loop.

- :mod:`~bort.pretrain.config`: :class:`PretrainConfig`, every setting of a run (its flags);
- :mod:`~bort.pretrain.corpus`: a corpus of real English on any machine (installed docstrings);
- :mod:`~bort.pretrain.prepare`: text files -> npz shards (``python -m bort.pretrain.prepare``);
- :mod:`~bort.pretrain.shards`: the shard layout and a data folder's metadata;
- :mod:`~bort.pretrain.masking`: dynamic masking (80/10/10);
- :mod:`~bort.pretrain.stream`: length-bucketed training batches, resumable;
- :mod:`~bort.pretrain.losses`: masked-LM and distillation losses;
- :mod:`~bort.pretrain.teacher`: the frozen teacher and the vocabulary checks;
- :mod:`~bort.pretrain.evaluate`: held-out masked-LM accuracy, curves;
- :mod:`~bort.pretrain.loop`: :func:`pretrain`, the whole run;
- :mod:`~bort.pretrain.mlm_head`: fitting a masked-LM head onto an encoder that has none;
- :mod:`~bort.pretrain.default_teacher`: the built-in default teacher (MLM-adapted MiniLM).
"""
from .config import PretrainConfig
from .loop import NonFiniteLossError, pretrain
from .masking import MaskingConfig, mask_tokens

# prepare (``python -m bort.pretrain.prepare``) is not imported here: a package that imports the
# module run with -m makes runpy warn that it was imported twice.
__all__ = ['PretrainConfig', 'pretrain', 'NonFiniteLossError', 'MaskingConfig', 'mask_tokens']
