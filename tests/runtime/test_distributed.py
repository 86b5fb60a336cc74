"""Reading the torchrun environment and checking a layout against the world size (no processes started)."""

from __future__ import annotations

import argparse

import pytest
import torch

from videox_fun.argparsing import add_parallel_arguments  # the flags live with the CLI; the runtime takes typed options
from videox_fun.runtime.distributed import check_world_size, dist_info_from_env, init_distributed
from videox_fun.runtime.parallel import default_degrees, init_parallel


def test_a_plain_process_is_a_world_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()


def test_torchrun_environment_is_read(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info_from_env("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (5, 8, 1, False)
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        dist_info_from_env("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        dist_info_from_env("cpu")


@pytest.mark.parametrize(
    ("ulysses", "ring", "cfg", "world"), [(2, 1, False, 2), (1, 4, False, 4), (2, 2, True, 8), (4, 2, False, 8)]
)
def test_layouts_that_fill_the_world_pass(ulysses, ring, cfg, world):
    check_world_size(ulysses, ring, cfg, world)


def test_a_layout_that_does_not_fill_the_world_names_the_product():
    with pytest.raises(ValueError) as err:
        check_world_size(4, 2, True, 8)
    assert "ulysses-degree 4 x ring-degree 2 x 2 (cfg-parallel) = 16 processes" in str(err.value)
    assert "world size is 8" in str(err.value)
    assert "--nproc-per-node=16" in str(err.value)
    with pytest.raises(ValueError, match="--ring-degree must be at least 1"):
        check_world_size(2, 0, False, 2)


@pytest.mark.parametrize(
    ("given", "cfg", "world", "expected"),
    [
        ((None, None), False, 8, (8, 1)),  # a bare torchrun: every process on Ulysses
        ((None, None), True, 8, (4, 1)),  # half of them per CFG branch
        ((None, 2), False, 8, (1, 2)),  # a given degree is kept (and then checked against the world)
        ((None, None), False, 1, (1, 1)),
    ],
)
def test_unset_degrees_default_to_filling_the_world(given, cfg, world, expected):
    assert default_degrees(*given, cfg, world) == expected


def test_flags_parse_and_a_single_process_rejects_parallel_degrees(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parser = argparse.ArgumentParser()
    add_parallel_arguments(parser)
    args = parser.parse_args(["--ulysses-degree", "2", "--ring-degree", "2", "--cfg-parallel", "--fsdp-dit"])
    assert (args.ulysses_degree, args.ring_degree, args.cfg_parallel, args.fsdp_dit) == (2, 2, True, True)
    with pytest.raises(ValueError, match="= 8 processes, but the world size is 1"):
        init_parallel(args)
    runtime = init_parallel(parser.parse_args([]))
    assert runtime.is_main and not runtime.distributed and runtime.groups.sp_degree == 1
    assert type(runtime.guidance(5.0)).__name__ == "ClassifierFreeGuidance"
