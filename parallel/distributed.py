"""Processes that train together under torchrun: start-up, agreement, faults, teardown.

- local_device() picks the process's device; setup() joins the process group (NCCL on GPUs, gloo on CPUs) with a collective timeout,
  and a gloo group for the small CPU-side agreements each step makes.
- Every step each rank writes its step count to torchrun's key-value store (a heartbeat).
  When a collective times out, the ranks still alive read those counts and name the rank
  that stopped answering, instead of hanging or printing only a timeout.
- any_rank() tells every rank whether any rank asked to stop (a preemption signal).
- teardown() leaves no communication thread running into interpreter shutdown.
"""

import dataclasses
import datetime
import importlib
import os
import time

import torch
import torch.distributed as dist

from errors import UserError
from parallel.devices import configure, pick_device

# These torch modules bind `group.WORLD` as a default argument when first imported. Imported
# after init_process_group they keep the process group, and with it gloo's worker threads,
# alive past destroy_process_group into interpreter shutdown, where a worker that frees a
# finished all-reduce's tensors needs the GIL of a finalizing interpreter: the process aborts
# with "terminate called without an active exception". DDP's constructor imports them.
_BIND_WORLD_AT_IMPORT = ("torch.distributed.nn", "torch.distributed.fsdp.sharded_grad_scaler")
NCCL_EXTRA_TIMEOUT_S = 60  # NCCL's watchdog waits longer, so the message naming the rank comes first
FAILURE_GRACE_S = 10  # after a collective fails, how long ranks wait to hear which others saw it fail


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    control: object = None  # the gloo group for CPU-side agreement (None: one process)
    heartbeats: object = None  # a store client for the per-step heartbeat (None: one process)
    timeout_s: int = 0

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def device_kind(self) -> str:
        """What a rank is, for messages: processes on CPUs, GPUs on GPUs."""
        return "GPUs" if self.device.type == "cuda" else "processes"


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_env() -> int:
    """This process's rank in a torchrun launch (0 alone), known before any process group."""
    return int(os.environ.get("RANK", "0"))


def local_device(device_name: str) -> torch.device:
    """This process's device, made current and configured: under torchrun with several
    processes, the GPU of its local rank."""
    world, local_rank = world_size_from_env(), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank if world > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    configure(device)
    return device


def setup(device: torch.device, timeout_s: int, join: bool) -> Dist:
    """This process's place in the launch: in the process group of a torchrun launch when
    join (resolve.Resolved.joins_process_group says when), else alone."""
    world, rank = world_size_from_env(), rank_from_env()
    if not join:
        return Dist(device=device)
    for module in _BIND_WORLD_AT_IMPORT:
        importlib.import_module(module)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _attempt_store(rank, world, timeout) if world > 1 else dist.HashStore()
    if device.type == "cuda":
        dist.init_process_group(
            "nccl",
            store=store,
            rank=rank,
            world_size=world,
            timeout=timeout + datetime.timedelta(seconds=NCCL_EXTRA_TIMEOUT_S),
        )
        control = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
        control = dist.group.WORLD
    heartbeats = dist.PrefixStore("heartbeat/", store) if world > 1 else None
    return Dist(rank, world, device, control if world > 1 else None, heartbeats, timeout_s)


def _attempt_store(rank: int, world: int, timeout: datetime.timedelta):
    """The key-value store at MASTER_ADDR:MASTER_PORT (torchrun's agent serves it; without
    torchrun, rank 0), under a prefix for this attempt. torchrun keeps one store across
    restarts, and a process group joining under the keys of the attempt before reads the
    addresses of processes that are gone ("Gloo connectFullMesh failed ... Connection refused")."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size=world,
        is_master=not agent and rank == 0,
        timeout=timeout,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", base)


def heartbeat(env: Dist, step: int):
    if env.heartbeats is not None:
        env.heartbeats.set(str(env.rank), str(step))


class CollectiveFailure(UserError, RuntimeError):
    """A collective timed out or lost a peer; the message names the rank that stopped."""


def is_collective_failure(error: Exception, env: Dist) -> bool:
    if env.world == 1:
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return any(
        s in text
        for s in (
            "timed out",
            "timeout",
            "connection closed",
            "connection reset",
            "broken pipe",
            "gloo",
            "nccl",
        )
    )


def all_reduce_sum(t: torch.Tensor, env: Dist) -> torch.Tensor:
    if env.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor, env: Dist) -> torch.Tensor:
    # SUM then divide: gloo lacks ReduceOp.AVG in the older torch releases we support
    return all_reduce_sum(t, env) / env.world


def any_rank(env: Dist, flag: bool) -> bool:
    """True on every rank when flag is True on any rank (a CPU all-reduce: no GPU sync)."""
    if env.world == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control)
    return bool(t.item())


def barrier(env: Dist):
    if env.world > 1:
        dist.barrier(group=env.control)


def describe_stuck_ranks(env: Dist, grace_s: float = FAILURE_GRACE_S) -> str:
    """Which ranks stopped answering: every rank whose collective fails says so in the store
    and waits up to grace_s for the others to say the same; those that never do are stuck
    (hung, or far slower than the rest). Their heartbeats give their last completed step."""
    if env.heartbeats is None:
        return ""
    try:
        env.heartbeats.set(f"failed/{env.rank}", "1")
        deadline = time.time() + grace_s
        while True:
            failed = {r for r in range(env.world) if env.heartbeats.check([f"failed/{r}"])}
            if len(failed) == env.world or time.time() > deadline:
                break
            time.sleep(0.2)
        stuck = [r for r in range(env.world) if r not in failed]
        done = {
            r: int(env.heartbeats.get(str(r)).decode()) if env.heartbeats.check([str(r)]) else 0
            for r in stuck
        }
    except Exception:  # the store itself is gone (its host died): nothing more to learn
        return ""
    if not stuck:
        return "every rank saw its collective fail: a network problem rather than a stuck rank"
    return "; ".join(f"rank {r} stopped answering after completing {done[r]:,} steps" for r in stuck)


def explain_failure(env: Dist, error: Exception, stopping: bool) -> str:
    """One message for a rank whose collective failed: what failed, who is stuck, what to do.
    stopping: this process was told to stop (torchrun does that when another rank exits), so
    it does not wait to learn which rank is stuck."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    timed_out = "timed out" in first.lower() or "timeout" in first.lower()
    stuck = (
        describe_stuck_ranks(env, min(FAILURE_GRACE_S, env.timeout_s)) if timed_out and not stopping else ""
    )
    return (
        f"rank {env.rank}: a collective failed ({first})"
        + (f"; {stuck}" if stuck else "")
        + f". Collectives wait collective_timeout_s={env.timeout_s} s. Resume from the last "
        f"checkpoint with --resume (torchrun --max_restarts=N does it unattended)"
    )


def teardown(env: Dist, clean: bool):
    """Destroy the process group while Python is fully alive, which joins gloo's worker
    threads. clean: the run ended normally on every rank, so wait for all ranks first."""
    if not dist.is_initialized():
        return
    if clean and env.world > 1:
        dist.barrier(group=env.control)
    env.heartbeats = env.control = None
    dist.destroy_process_group()
