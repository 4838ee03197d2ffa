# gloo all-reduce of resnet18's gradient size between 2 local processes (what DDP does per step)
import os, time, torch, torch.distributed as dist, torch.multiprocessing as mp
def run(rank, n):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    t = torch.randn(n)
    for _ in range(3): dist.all_reduce(t)
    dist.barrier(); ts = []
    for _ in range(20):
        t0 = time.perf_counter(); dist.all_reduce(t); ts.append(time.perf_counter() - t0)
    if rank == 0:
        ts.sort(); print(f"{n} floats ({n*4/2**20:.1f} MiB): all_reduce p50 {ts[10]*1000:.1f} ms, min {ts[0]*1000:.1f} ms")
    dist.destroy_process_group()
if __name__ == "__main__":
    mp.spawn(run, args=(11_178_564,), nprocs=2)
