"""USP (Ulysses 2 x Ring 2) and CFG parallelism with sequence parallelism inside, on 4 gloo ranks.

18 and 27 video tokens: neither divides by 4, so the padding path runs on every layout.
"""

from __future__ import annotations

import pytest
from helpers import max_diff
from parallel_harness import TOLERANCE, Case, run_cases

WORLD = 4
CASES = [
    Case("usp2x2-t2v-18tok", "t2v", 32, 48, ulysses=2, ring=2),
    Case("usp2x2-t2v-27tok", "t2v", 48, 48, ulysses=2, ring=2),
    Case("usp2x2-i2v-27tok", "i2v", 48, 48, ulysses=2, ring=2),
    Case("cfg2+ulysses2-t2v-27tok", "t2v", 48, 48, ulysses=2, cfg=True),
    Case("cfg2+ring2-i2v-27tok", "i2v", 48, 48, ring=2, cfg=True),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_cases(WORLD, CASES, tmp_path_factory.mktemp("usp"), transformer_layouts=[(2, 2)])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_four_ranks_match_one_process(case, runs):
    assert case.tokens % 4  # the padding path
    parallel_results, references = runs
    for rank, results in enumerate(parallel_results):
        diff = max_diff(results[case.name], references[case.name])
        assert diff <= TOLERANCE, f"{case.name} rank {rank}: max abs diff {diff:.2e}"


def test_usp_with_padded_heads_and_per_token_timesteps(runs):
    """3 heads (padded to 4 for Ulysses 2), 27 tokens over 4 ranks, per-token timesteps."""
    parallel_results, references = runs
    for rank, results in enumerate(parallel_results):
        diff = max_diff(results["transformer-u2r2"], references["transformer"])
        assert diff <= TOLERANCE, f"rank {rank}: max abs diff {diff:.2e}"
