"""Ulysses, Ring and CFG parallelism (and FSDP) on 2 gloo ranks against one process, same weights.

The tiny pipelines run two guided steps; the latents of every rank must match the single-process
run within 1e-5 (fp32), for token counts that do and do not divide by the degree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import max_diff
from parallel_harness import TOLERANCE, Case, run_cases

from videox_fun.models.attention import attention_with_lse
from videox_fun.runtime.parallel import layout_ranks, merge_attention

WORLD = 2
CASES = [
    Case("ulysses2-t2v-18tok", "t2v", 32, 48, ulysses=2),
    Case("ulysses2-t2v-27tok", "t2v", 48, 48, ulysses=2),
    Case("ring2-t2v-18tok", "t2v", 32, 48, ring=2),
    Case("ring2-t2v-27tok", "t2v", 48, 48, ring=2),
    Case("cfg2-t2v-27tok", "t2v", 48, 48, cfg=True),
    Case("ulysses2-i2v-27tok", "i2v", 48, 48, ulysses=2),
    Case("ring2-i2v-27tok", "i2v", 48, 48, ring=2),
    Case("cfg2-i2v-18tok", "i2v", 32, 48, cfg=True),
    Case("fsdp+ulysses2-t2v-27tok", "t2v", 48, 48, ulysses=2, fsdp=True),
    Case("first-block+ulysses2-t2v-27tok", "t2v", 48, 48, ulysses=2, cache="first-block", steps=6),
    Case("teacache+ring2-i2v-27tok", "i2v", 48, 48, ring=2, cache="teacache", steps=6),
]


# -- the math, in one process -------------------------------------------------------------
def test_attention_with_lse_matches_sdpa_and_logsumexp():
    q, k, v = torch.randn(2, 7, 3, 12), torch.randn(2, 11, 3, 12), torch.randn(2, 11, 3, 12)
    out, lse = attention_with_lse(q, k, v)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / 12**0.5  # (B, H, Lq, Lk)
    assert max_diff(out, expected.transpose(1, 2)) < 1e-6
    assert max_diff(lse, torch.logsumexp(scores, -1).transpose(1, 2)) < 1e-5


def test_merging_partial_attention_over_key_blocks_is_exact():
    q, k, v = torch.randn(1, 5, 2, 12), torch.randn(1, 13, 2, 12), torch.randn(1, 13, 2, 12)
    full, full_lse = attention_with_lse(q, k, v)
    a, lse_a = attention_with_lse(q, k[:, :4], v[:, :4])
    b, lse_b = attention_with_lse(q, k[:, 4:], v[:, 4:])
    merged, merged_lse = merge_attention(a, lse_a, b, lse_b)
    assert max_diff(merged, full) < 1e-6
    assert max_diff(merged_lse, full_lse) < 1e-5


def test_layout_puts_ulysses_groups_on_consecutive_ranks():
    ranks = layout_ranks(ulysses_degree=2, ring_degree=2, cfg_parallel=True)
    assert ranks["ulysses"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert ranks["ring"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert ranks["sp"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert ranks["cfg"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


# -- 2 ranks against one process ----------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # One spawn for everything: starting ranks costs more than the tiny runs.
    mismatch = {"ulysses_degree": 2, "ring_degree": 1, "cfg_parallel": True}
    return run_cases(WORLD, CASES, tmp_path_factory.mktemp("sp2"), [(2, 1), (1, 2)], mismatch)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_two_ranks_match_one_process(case, runs):
    assert case.tokens % 2 == (1 if "27tok" in case.name else 0)
    parallel_results, references = runs
    for rank, results in enumerate(parallel_results):
        diff = max_diff(results[case.name], references[case.name])
        assert diff <= TOLERANCE, f"{case.name} rank {rank}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("case", [c for c in CASES if c.cache], ids=[c.name for c in CASES if c.cache])
def test_step_caches_skip_the_same_steps_on_every_rank_as_in_one_process(case, runs):
    parallel_results, references = runs
    assert references[case.name + ":skipped"] > 0  # the thresholds make the cache act
    assert [r[case.name + ":skipped"] for r in parallel_results] == [references[case.name + ":skipped"]] * WORLD


def test_fsdp_holds_half_of_each_block_weight(runs):
    # dim 24 rows of blocks.0.self_attn.q.weight split over 2 ranks.
    assert [r["fsdp+ulysses2-t2v-27tok:shard_rows"] for r in runs[0]] == [12, 12]


def test_head_count_not_divisible_and_per_token_timesteps(runs):
    """3 heads over Ulysses 2 (padded to 4), 27 tokens, per-token t; the hook removes cleanly."""
    parallel_results, references = runs
    for rank, results in enumerate(parallel_results):
        for layout in ("transformer-u2r1", "transformer-u1r2"):
            diff = max_diff(results[layout], references["transformer"])
            assert diff <= TOLERANCE, f"{layout} rank {rank}: max abs diff {diff:.2e}"
        assert not results["hooks_left"]
        # the model's own path again (the ranks run 1 thread, this process more: not bit-equal)
        assert max_diff(results["transformer-removed"], references["transformer"]) <= 1e-6


def test_mismatched_world_size_fails_on_every_rank_with_the_product(runs):
    for rank, results in enumerate(runs[0]):
        message = results["mismatch"]
        assert "ulysses-degree 2 x ring-degree 1 x 2 (cfg-parallel) = 4 processes" in message, (rank, message)
        assert "world size is 2" in message
