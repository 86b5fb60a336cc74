"""The extension points: what Wan declares resolves to its modules, and a bad declaration is named."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from helpers import seeded_transformer
from torch import nn

from videox_fun.models.wan.transformer import WanAttentionBlock
from videox_fun.models.wan.variants import tiny_config
from videox_fun.runtime import points
from videox_fun.runtime.fp8 import block_linears


@pytest.fixture(scope="module")
def wan():
    return seeded_transformer(tiny_config("t2v", dim=48, num_heads=2))


def test_wan_declarations_resolve_to_its_modules(wan):
    assert points.block_lists(wan) == [wan.blocks]
    assert points.blocks(wan) == list(wan.blocks)
    repeated = points.repeated_blocks(wan)
    assert repeated == list(wan.blocks) and all(isinstance(b, WanAttentionBlock) for b in repeated)
    assert points.cache_indicator_module(wan, "time_embedding") is wan.time_embedding
    assert points.cache_indicator_module(wan, "time_projection") is wan.time_projection
    assert points.fp8_skip(wan) == ()
    assert points.block_runner(wan) == "run_blocks"


def test_wan_fp8_layers_are_every_block_linear(wan):
    expected = [f"blocks.{n}" for n, m in wan.blocks.named_modules() if isinstance(m, nn.Linear)]
    assert block_linears(wan) == expected  # what fp8 stored before the declarations, in the same order


class Misdeclared(nn.Module):
    _block_lists = ("layers", "head")
    _cache_indicators: ClassVar[dict[str, str]] = {"time_embedding": "missing"}
    _block_runner = "run"

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(2, 2)])
        self.head = nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (points.block_lists, "entry 'head' is a Linear, not an nn.ModuleList"),
        (points.repeated_blocks, "Misdeclared declares no _repeated_blocks: runtime feature regional compile"),
        (lambda m: points.cache_indicator_module(m, "time_embedding"), "declares 'missing' in _cache_indicators"),
        (points.fp8_skip, "declares no _fp8_skip_modules"),
        (points.block_runner, "declares _block_runner 'run', but has no such method"),
    ],
    ids=["not_a_list", "no_repeated", "no_indicator_module", "no_fp8_skip", "no_runner"],
)
def test_bad_declarations_are_named(read, message):
    with pytest.raises(points.ExtensionPointError, match=message):
        read(Misdeclared())


def test_repeated_blocks_are_found_through_wrapper_subclasses(wan):
    # FSDP's fully_shard swaps a module's class for a subclass named FSDP<Name>: still a repeated block.
    block = wan.blocks[0]
    original = type(block)
    block.__class__ = type(f"FSDP{original.__name__}", (original,), {})
    try:
        assert block in points.repeated_blocks(wan)
    finally:
        block.__class__ = original
    assert torch.is_tensor(block.modulation)
