"""Thin helpers over :mod:`torch.distributed` for the synchronous data-parallel topology.

Two ways of keeping M learner replicas in agreement, both built only on
``torch.distributed`` collectives (nothing hand-written):

* **synchronous data-parallel SGD**: every replica computes a gradient on its own batch,
  the gradients are averaged with one all-reduce (:func:`allreduce_mean_`) and every replica
  applies the same mean gradient with its own optimizer, so replicas that start equal stay
  equal (e.g. Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour").
* **local SGD / parameter averaging**: replicas take independent steps and periodically
  replace their parameters by the average theta <- (1/M) sum_i theta_i
  (:func:`average_parameters_`; Stich 2019, "Local SGD Converges Fast and Communicates
  Little"; McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", FedAvg).

Rendezvous is through a :class:`torch.distributed.FileStore` (``file://`` init method, the
local runtime: no TCP store, no ports), or torch's TCP store at an address the Ray
runtime's driver picks (``tcp://``).
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def init_process_group(rank: int, world_size: int, init_file: str, backend: str = "auto",
                       timeout_s: float = 300.0) -> str:
    """Join the default process group through a rendezvous.

    Args:
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of processes.
        init_file: where the ranks meet: the absolute path of a rendezvous file, the same
            for every rank, on a filesystem all ranks see (the local runtime; it must not be
            left over from an earlier group: use a fresh path per run; torch deletes it when
            the group is torn down cleanly), or ``tcp://HOST:PORT`` (the Ray runtime, whose
            learners may share no filesystem: rank 0 serves torch's TCP store there).
        backend: ``"gloo"``, ``"nccl"`` or ``"auto"``: NCCL when CUDA is available and there are
            at least ``world_size`` visible GPUs (NCCL needs one GPU per rank), else Gloo.
            With NCCL the current CUDA device is set to ``rank % device_count``.
        timeout_s: timeout of the rendezvous and of each collective.

    Returns:
        The backend used (``"gloo"`` or ``"nccl"``).

    ``GLOO_SOCKET_IFNAME`` defaults to ``lo`` (``os.environ.setdefault``) for a file or a
    loopback rendezvous, so Gloo stays on the loopback interface on a single machine; set it
    beforehand for multi-host runs.

    Raises:
        ValueError: invalid rank / world size / backend.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if backend == "auto":
        use_nccl = torch.cuda.is_available() and torch.cuda.device_count() >= world_size
        backend = "nccl" if use_nccl else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    tcp = init_file.startswith("tcp://")
    if not tcp or init_file.startswith(("tcp://127.", "tcp://localhost:")):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        backend=backend,
        init_method=init_file if tcp else f"file://{os.path.abspath(init_file)}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return backend


def allreduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """In place: ``t <- (1/M) sum_i t_i`` over the M ranks (SUM all-reduce, then divide by M).

    Synchronous data-parallel SGD averages the replicas' gradients this way (Goyal et al.
    2017). Every rank ends with the same bits. Collective: every rank must call it with a
    tensor of the same shape and dtype, in the same order. With NCCL, ``t`` must be on the
    rank's CUDA device.

    Args:
        t: floating-point tensor, any shape.

    Returns:
        ``t`` itself.

    Raises:
        TypeError: ``t`` is not floating point.
        RuntimeError: no process group (see :func:`init_process_group`).
    """
    if not t.is_floating_point():
        raise TypeError(f"allreduce_mean_ needs a floating-point tensor, got {t.dtype}")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t.div_(dist.get_world_size())
    return t


def average_parameters_(module: nn.Module) -> None:
    """Parameter averaging: ``theta <- (1/M) sum_i theta_i`` for every parameter of ``module``,
    with one flat all-reduce (local SGD, Stich 2019; FedAvg, McMahan et al. 2017).

    Collective: every rank must pass a module of the same architecture (same parameter order,
    shapes and dtype). Buffers are not averaged; optimizer state is left as it is.
    """
    params = [p for p in module.parameters()]
    if not params:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        allreduce_mean_(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def destroy_process_group(barrier_timeout_s: float = 10.0) -> None:
    """Leave the default process group (no-op when none is initialised).

    With gloo the ranks first meet at a ``monitored_barrier`` (at most ``barrier_timeout_s``;
    a missing peer is logged, not waited for): a rank that tears its group down while a peer
    still waits in a collective can abort that peer's process. NCCL has no such bounded
    barrier, so its ranks leave directly.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=barrier_timeout_s))
        except RuntimeError as exc:  # a peer died or is stuck: leave anyway
            log.warning("learner %d: peers did not reach the final barrier (%s)", dist.get_rank(), exc)
    dist.destroy_process_group()


class DistCollective:
    """The :class:`~distdqn.topologies.base.Collective` of one learner process among
    ``world_size`` (the default process group, :func:`init_process_group`)."""

    @staticmethod
    def allreduce_mean_(t: torch.Tensor) -> torch.Tensor:
        return allreduce_mean_(t)

    @staticmethod
    def average_(learners: list) -> None:
        for lr in learners:
            average_parameters_(lr.online)
