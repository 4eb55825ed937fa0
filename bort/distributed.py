"""Workers and their communication: the one module that imports Horovod.

Everything else receives a :class:`Comm` (rank, size, context and a few collective operations).
Single-process is the default and needs no Horovod; under ``horovodrun`` :func:`init_comm`
returns a Horovod-backed communicator (Gloo on CPU, NCCL on GPU, as Horovod was built).

A worker's native code: Horovod loads its MXNet extension ``RTLD_GLOBAL``, which puts
``libmxnet.so`` (a dependency of it; GCC 4.8, old C++ ABI) into the process's global symbol scope.
A C++ library loaded later binds its unresolved and interposable symbols there first: the
project's operator libraries are linked ``-Bsymbolic`` for this (:mod:`bort.kernels`), and
PyTorch, whose initialisers crash on libmxnet's ``std::`` containers, must not be imported in a
worker (:mod:`bort.log` keeps tensorboardX from importing it).
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import mxnet as mx
import numpy as np

__all__ = ['Comm', 'init_comm', 'launched_by_horovod']

log = logging.getLogger(__name__)

_HOROVOD_ENV = ('HOROVOD_RANK', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK')


def launched_by_horovod() -> bool:
    """True when this process was started by ``horovodrun`` (or mpirun)."""
    return any(var in os.environ for var in _HOROVOD_ENV)


@dataclass
class Comm:
    """This process's place among the workers, and the collectives the library needs.

    Attributes
    ----------
    rank, size, local_rank : int
    ctx : mx.Context
        The device this worker computes on.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    ctx: mx.Context = field(default_factory=mx.cpu)
    _hvd: Any = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def allreduce_mean(self, value) -> np.ndarray:
        """Average a number or array over the workers (returned as a numpy array)."""
        array = np.asarray(value, dtype=np.float64)
        if not self.distributed:
            return array
        # Horovod cannot reduce 0-d tensors: reduce a 1-d view and give the shape back.
        flat = mx.nd.array(array.reshape(-1), dtype='float64')
        return self._hvd.allreduce(flat, average=True).asnumpy().reshape(array.shape)

    def allreduce_sum(self, value) -> np.ndarray:
        """Sum a number or array over the workers."""
        return self.allreduce_mean(value) * self.size

    def allgather_object(self, obj) -> List:
        """Every worker's ``obj``, in rank order (pickled through a byte tensor)."""
        if not self.distributed:
            return [obj]
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        sizes = self._hvd.allgather(mx.nd.array([payload.size], dtype='int64')).asnumpy()
        padded = np.zeros(int(sizes.max()), dtype=np.uint8)
        padded[:payload.size] = payload
        gathered = self._hvd.allgather(mx.nd.array(padded[None], dtype='uint8')).asnumpy()
        return [pickle.loads(gathered[r, :int(sizes[r])].tobytes()) for r in range(self.size)]

    def broadcast_object(self, obj, root: int = 0):
        """``obj`` from rank ``root`` on every worker."""
        if not self.distributed:
            return obj
        return self.allgather_object(obj if self.rank == root else None)[root]

    def barrier(self) -> None:
        if self.distributed:
            self.allreduce_mean(0.0)

    def broadcast_parameters(self, params: mx.gluon.ParameterDict, root: int = 0) -> None:
        """Make every worker's parameters equal to rank ``root``'s (after initialisation)."""
        if self.distributed:
            self._hvd.broadcast_parameters(params, root_rank=root)

    def trainer(self, params: mx.gluon.ParameterDict, optimizer: str,
                optimizer_params: Dict) -> mx.gluon.Trainer:
        """A Gluon trainer whose gradients are averaged over the workers.

        ``trainer.step(batch_size)`` divides by ``batch_size``: pass the per-worker batch size,
        Horovod's trainer then averages the rescaled gradients over workers.
        """
        if self.distributed:
            trainer = self._hvd.DistributedTrainer(params, optimizer, optimizer_params)
            # Without NCCL averaging (CPU/Gloo builds) Horovod *sums* the gradients in
            # allreduce_grads and divides by the worker count inside the update; record it so
            # that clipping (bort.optim.optimizer_step) measures the averaged gradient.
            trainer.grad_sum_workers = self.size if getattr(
                trainer, '_average_in_framework', False) else 1
            return trainer
        return mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=None)

    def shard(self, items: List) -> List:
        """This worker's share of ``items``: every ``size``-th one starting at ``rank``."""
        return items[self.rank::self.size]


def init_comm(use_horovod: Optional[bool] = None, gpu: bool = False) -> Comm:
    """Start (or skip) Horovod and pick this worker's device.

    Parameters
    ----------
    use_horovod : bool, optional
        None starts Horovod only when launched by ``horovodrun``.
    gpu : bool
        Compute on GPU ``local_rank`` instead of the CPU.
    """
    if use_horovod is None:
        use_horovod = launched_by_horovod()
    if not use_horovod:
        return Comm(ctx=mx.gpu(0) if gpu else mx.cpu())
    try:
        import horovod.mxnet as hvd  # the only Horovod import of the project
    except ImportError as err:
        raise RuntimeError('this run was launched by horovodrun but horovod.mxnet cannot be '
                           f'imported ({err}); install Horovod built with MXNet support') from err
    hvd.init()
    comm = Comm(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
                ctx=mx.gpu(hvd.local_rank()) if gpu else mx.cpu(), _hvd=hvd)
    if comm.is_root:
        log.info('Horovod: %d workers', comm.size)
    return comm
