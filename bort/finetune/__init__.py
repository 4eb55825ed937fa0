"""Fine-tuning on GLUE, SuperGLUE and RACE, plain or with Agora (SPEC section 6).

- :mod:`~bort.finetune.config`: the settings (:class:`FinetuneConfig`, :class:`AgoraConfig`,
  :class:`RunOptions`), which are ``run_finetune.py``'s flags;
- :mod:`~bort.finetune.tasks`: the table of task specs (files, columns, labels, metric, output);
- :mod:`~bort.finetune.readers`: official file layouts -> examples;
- :mod:`~bort.finetune.castings`: task records <-> (text_a, text_b) classification examples;
- :mod:`~bort.finetune.metrics`: each benchmark's metrics;
- :mod:`~bort.finetune.submission`: leaderboard submission files;
- :mod:`~bort.finetune.classifier`: the head, pair encoding, fine-tuned folders;
- :mod:`~bort.finetune.data`: the training split of a run and each epoch's batches;
- :mod:`~bort.finetune.loop`: :func:`finetune`, one plain fine-tuning run;
- :mod:`~bort.finetune.evaluate`: scoring a model or a fine-tuned folder on a split;
- :mod:`~bort.finetune.agora`: Agora; :mod:`~bort.finetune.transforms`: its transformations;
- :mod:`~bort.finetune.run`: :func:`run_finetune_job`, the job behind ``run_finetune.py``.
"""
from .config import AgoraConfig, FinetuneConfig, RunOptions
from .agora import run_agora
from .loop import finetune
from .run import run_finetune_job

__all__ = ['FinetuneConfig', 'finetune', 'AgoraConfig', 'run_agora', 'RunOptions',
           'run_finetune_job']
