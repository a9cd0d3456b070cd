"""Run under torchrun (gloo, 2 processes): one torch.optim.Muon step on a matrix that FSDP2
shards by rows, against the same step on the whole matrix in one process, and against
orthogonalising each rank's rows alone. Prints MUON_SHARDS whole=<max diff> per_shard=<max diff>."""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from parallel.sharding import fully_shard

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
weight, grad = torch.randn(96, 32), torch.randn(96, 32)  # the same on every rank


def one_step(module, g):
    module.weight.grad = g
    opt = torch.optim.Muon([module.weight], lr=0.02, weight_decay=0.0)
    opt.step()
    return module.weight


whole = torch.nn.Linear(32, 96, bias=False)
with torch.no_grad():
    whole.weight.copy_(weight)
whole = one_step(whole, grad).detach()

sharded = torch.nn.Linear(32, 96, bias=False)
with torch.no_grad():
    sharded.weight.copy_(weight)
fully_shard(sharded, mesh=init_device_mesh("cpu", (world,)))
local_grad = grad.chunk(world)[rank]
dgrad = DTensor.from_local(local_grad, sharded.weight.device_mesh, sharded.weight.placements)
on_shards = one_step(sharded, dgrad).full_tensor().detach()

rows = [torch.nn.Linear(32, 96 // world, bias=False) for _ in range(world)]
per_shard = []
for part, w, g in zip(rows, weight.chunk(world), grad.chunk(world)):
    with torch.no_grad():
        part.weight.copy_(w)
    per_shard.append(one_step(part, g.clone()).detach())
per_shard = torch.cat(per_shard)
if rank == 0:
    print(
        f"MUON_SHARDS whole={(on_shards - whole).abs().max().item():.3e} "
        f"per_shard={(per_shard - whole).abs().max().item():.3e}",
        flush=True,
    )
dist.destroy_process_group()
