"""DistributedDataParallel trains a cnnkit network as one process does.

Two CPU processes (gloo backend) each take half of every batch; DDP averages
their gradients, which equals the gradient of the mean loss over the whole
batch. After a few SGD steps the parameters must equal those of one process
trained on the full batches.
"""
from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import cnnkit

WORLD_SIZE = 2
STEPS = 4
BATCH = 8  # per step, split evenly between the processes
TIMEOUT_S = 60


def make_model():
    """A small network with every kind of learnable cnnkit layer, no BatchNorm
    (its batch statistics would differ between a half batch and a whole one)."""
    torch.manual_seed(0)
    return nn.Sequential(
        cnnkit.nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), cnnkit.nn.MaxPool2d(2),      # 12 -> 6
        cnnkit.nn.TiledConv2d(6, 8, 3, tiles=2), nn.ReLU(),                           # 6 -> 4
        cnnkit.nn.ConvTranspose2d(8, 4, 2, stride=2), nn.ReLU(),                      # 4 -> 8
        cnnkit.nn.LocallyConnected2d(4, 4, 3, in_size=(8, 8), stride=2), nn.ReLU(),  # 8 -> 3
        cnnkit.nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    )


def make_batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 1, 12, 12, generator=g), torch.randint(0, 3, (BATCH,), generator=g))
            for _ in range(STEPS)]


def train(model, batches, shard=None):
    """SGD with momentum over `batches`; with shard=(rank, world) each process
    takes its contiguous slice of every batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        if shard is not None:
            rank, world = shard
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _worker(rank, port, out_path):
    """One DDP process: join the group through the parent's store, train on
    its shard, and (rank 0) save the parameters."""
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE,
                            timeout=timeout)
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        train(model, make_batches(), shard=(rank, WORLD_SIZE))
        if rank == 0:
            torch.save(model.module.state_dict(), out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path, monkeypatch):
    # The children read these at start-up: one thread each, loopback for gloo.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    # The parent holds the rendezvous store on a port the OS picks: no race
    # for a "free" port between choosing it and binding it.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=TIMEOUT_S))
    out_path = str(tmp_path / "ddp_state.pt")
    context = mp.start_processes(_worker, args=(store.port, out_path), nprocs=WORLD_SIZE,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=0.5):  # raises if a child failed
            if time.monotonic() > deadline:
                pytest.fail(f"DDP processes did not finish within {TIMEOUT_S} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
                p.join()
    ddp_state = torch.load(out_path)

    single = train(make_model(), make_batches())
    initial = make_model().state_dict()
    assert ddp_state.keys() == single.state_dict().keys()
    for name, value in single.state_dict().items():
        # Training moved every parameter, and both runs moved it the same way.
        assert not torch.equal(value, initial[name]), name
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
