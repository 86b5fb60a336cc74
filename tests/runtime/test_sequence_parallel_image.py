"""Ulysses and Ring on the image families (FLUX.1, FLUX.2, Qwen-Image, Z-Image) on 2 gloo ranks.

Joint attention over text + image tokens, both streams split over the ranks (each padded on its own), the rotary
tables split with them, key masks (Qwen-Image's text padding, Z-Image's batch of sequences of two lengths) gathered;
:class:`~videox_fun.runtime.parallel.JointSequenceParallel` attaches through each transformer's declarations. Every
rank's result must equal one process's within 1e-5 (fp32): the tiny transformers' forward (15 image tokens and 7
text tokens: both pad to the ranks; Z-Image's 32-padded sequences of 64 and 96 tokens with a key mask) and short
guided generations (2 steps at 48x80: 15 image tokens; Z-Image's Fun control hints too). The CLI under ``torchrun``
writes the one-process PNG.

``pytest tests/runtime/test_sequence_parallel_image.py -s`` prints every max abs difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import max_diff, read_png
from parallel_harness import TOLERANCE, spawn

from videox_fun.api import RuntimeOptions
from videox_fun.cli import main
from videox_fun.models.attention import attention
from videox_fun.models.flux import tiny as flux_tiny
from videox_fun.models.flux.transformer import FluxTransformer
from videox_fun.models.flux2 import tiny as flux2_tiny
from videox_fun.models.flux2.transformer import Flux2Transformer
from videox_fun.models.qwenimage import tiny as qwen_tiny
from videox_fun.models.qwenimage.transformer import QwenImageTransformer
from videox_fun.models.zimage import tiny as zimage_tiny
from videox_fun.models.zimage.transformer import ZImageTransformer
from videox_fun.pipelines.flux import FluxPipeline
from videox_fun.pipelines.flux2 import Flux2Pipeline
from videox_fun.pipelines.qwenimage import QwenImagePipeline
from videox_fun.pipelines.zimage import ZImagePipeline
from videox_fun.registry import CACHE_ENV
from videox_fun.runtime.cache import SHARDED_RELATIVE_L1
from videox_fun.runtime.distributed import init_distributed
from videox_fun.runtime.parallel import JointSequenceParallel, _Stream, build_groups, local_chunk, setup_parallel
from videox_fun.runtime.points import ExtensionPointError
from videox_fun.serve.process import free_port

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("flux", "flux2", "qwenimage", "zimage")
LAYOUTS = {"ulysses2": (2, 1), "ring2": (1, 2)}
IMAGE_TOKENS, TEXT_TOKENS = 15, 7  # odd: both streams pad to 2 ranks


def transformer(family: str) -> torch.nn.Module:
    """The family's tiny transformer, seeded."""
    torch.manual_seed(5)
    classes = {"flux": (FluxTransformer, flux_tiny), "flux2": (Flux2Transformer, flux2_tiny),
               "qwenimage": (QwenImageTransformer, qwen_tiny), "zimage": (ZImageTransformer, zimage_tiny)}  # fmt: skip
    cls, tiny = classes[family]
    return cls.from_model_config(tiny.tiny_transformer_config()).eval()


def inputs(family: str, model: torch.nn.Module) -> dict:
    """Seeded inputs of a batch of 2 (as batched CFG runs) with odd token counts."""
    g, config = torch.Generator().manual_seed(7), model.config
    if family == "zimage":  # 15 patches -> 32; captions 7 -> 32 and 40 -> 64: sequences of 64 and 96, a key mask
        latents = [torch.randn(16, 1, 6, 10, generator=g) for _ in range(2)]
        captions = [torch.randn(n, config.cap_feat_dim, generator=g) for n in (TEXT_TOKENS, 40)]
        return {"x": latents, "t": torch.tensor([0.3, 0.3]), "cap_feats": captions, "return_dict": False}
    found = {
        "hidden_states": torch.randn(2, IMAGE_TOKENS, config.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, config.joint_attention_dim, generator=g),
        "timestep": torch.tensor([0.6, 0.6]),
        "return_dict": False,
    }
    if family == "qwenimage":  # the second sample's text has 4 real tokens: its padding is masked
        mask = torch.ones(2, TEXT_TOKENS, dtype=torch.long)
        mask[1, 4:] = 0
        return found | {"encoder_hidden_states_mask": mask, "img_shapes": [[(1, 3, 5)]] * 2}
    axes = 3 if family == "flux" else 4
    found |= {"img_ids": torch.randint(0, 8, (IMAGE_TOKENS, axes), generator=g).float(),
              "txt_ids": torch.randint(0, 8, (TEXT_TOKENS, axes), generator=g).float(),
              "guidance": torch.tensor([3.5, 3.5]) if config.guidance_embeds else None}  # fmt: skip
    if family == "flux":
        found["pooled_projections"] = torch.randn(2, config.pooled_projection_dim, generator=g)
    return found


def forward(family: str, model: torch.nn.Module) -> torch.Tensor:
    """The transformer's output on the family's inputs, stacked (Z-Image returns a list)."""
    with torch.no_grad():
        out = model(**inputs(family, model))[0]
    return torch.stack(out) if isinstance(out, list) else out


def hooks_left(model: torch.nn.Module) -> bool:
    """Whether anything of a sequence-parallel hook is still on the model (a hook, a replaced seam, the measure)."""
    hooked = any(module._forward_pre_hooks or module._forward_hooks for module in model.modules())
    seams = any("attend" in vars(module.processor) for module in model.modules() if hasattr(module, "processor"))
    return hooked or seams or SHARDED_RELATIVE_L1 in vars(model)


# -- whole generations ------------------------------------------------------------------------------------------
PROMPT, HEIGHT, WIDTH, STEPS = "a red circle moving right", 48, 80, 2  # 6x10 latents: 15 image tokens
# name -> (pipeline class, folder builder, variant, call settings): guided where the family guides (Qwen-Image's
# true CFG with the texts' padding masked, Z-Image base's batched CFG over captions of two lengths).
GENERATIONS = {
    "flux": (FluxPipeline, flux_tiny.build_tiny_flux_folder, "dev", {}),
    "flux2": (Flux2Pipeline, flux2_tiny.build_tiny_flux2_folder, "dev", {}),
    "qwenimage": (QwenImagePipeline, qwen_tiny.build_tiny_qwenimage_folder, "t2i", {"guidance_scale": 4.0}),
    "zimage": (ZImagePipeline, zimage_tiny.build_tiny_zimage_folder, "base", {"guidance_scale": 4.0}),
    "zimage-control": (ZImagePipeline, zimage_tiny.build_tiny_zimage_folder, "turbo-control", {"mode": "control"}),
    "flux2-control": (Flux2Pipeline, flux2_tiny.build_tiny_flux2_folder, "dev-control", {"mode": "control"}),
    "qwenimage-control": (
        QwenImagePipeline,
        qwen_tiny.build_tiny_qwenimage_folder,
        "t2i-control",
        {"mode": "control", "guidance_scale": 4.0},
    ),
}


def build_folders(root: Path) -> dict[str, Path]:
    """Each generation's tiny folder."""
    return {name: build(root / name, variant, seed=2) for name, (_, build, variant, _) in GENERATIONS.items()}


def generate(name: str, pipe) -> torch.Tensor:
    """``STEPS`` steps of the generation's mode; the final latents."""
    settings = dict(GENERATIONS[name][3])
    if settings.get("mode") == "control":
        settings["control_video"] = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    out = pipe(PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, seed=1, progress=False, **settings)
    return out.latents


# -- the joint attention alone: a whole stream beside a split one, key masks, heads that do not divide ------------
def joint_attention_case() -> tuple[torch.Tensor, ...]:
    """q, k, v (2, 12, 3, 8) of 5 text tokens (kept whole on every rank, as CogVideoX's) then 7 image tokens (split:
    4 + 3 and a pad), and a key mask hiding 2 text keys and 1 image key of the second sample."""
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 12, 3, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, [3, 4, 7]] = False
    return q, k, v, mask


def joint_attention_on_ranks(ulysses: int, ring: int, rank: int) -> torch.Tensor:
    """This rank's queries' attention through :meth:`JointSequenceParallel.attend_joint` (streams as a first block
    records them), real tokens only: 5 text + this rank's image tokens."""
    q, k, v, mask = joint_attention_case()
    hook = JointSequenceParallel(build_groups(ulysses, ring))
    hook._streams = [_Stream("encoder_hidden_states", 5, 5, split=False), _Stream("hidden_states", 7, 4, split=True)]
    local = [torch.cat([t[:, :5], local_chunk(t[:, 5:], 1, 4, 2, rank)], dim=1) for t in (q, k, v, mask)]
    out = hook.attend_joint(*local[:3], text_len=5, key_mask=local[3])
    return out[:, : 5 + min(4, 7 - 4 * rank)]


def rank_worker(rank: int, folders: dict[str, Path], out_dir: Path) -> None:
    """The joint attention, every family's transformer, then every generation, under each layout; hooks removed
    after each."""
    init_distributed("cpu")
    results = {f"attention:{name}": joint_attention_on_ranks(*layout, rank) for name, layout in LAYOUTS.items()}
    for family in FAMILIES:
        model = transformer(family)
        for name, (ulysses, ring) in LAYOUTS.items():
            hook = JointSequenceParallel(build_groups(ulysses, ring)).attach(model)
            results[f"{family}:{name}"] = forward(family, model)
            hook.remove()
        results[f"{family}:hooks_left"] = hooks_left(model)
    for name, folder in folders.items():
        pipe = GENERATIONS[name][0].from_pretrained(folder)
        for layout, (ulysses, ring) in LAYOUTS.items():
            runtime = setup_parallel(RuntimeOptions(device="cpu", ulysses_degree=ulysses, ring_degree=ring), pipe)
            results[f"{name}:generate:{layout}"] = generate(name, pipe)
            runtime.remove_hooks()
        results[f"{name}:generate:hooks_left"] = hooks_left(pipe.transformer)
        control = getattr(pipe, "control", None)
        results[f"{name}:control:hooks_left"] = control is not None and hooks_left(control)
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-sp")
    folders = build_folders(root)
    spawn(2, rank_worker, folders, root)
    ranks = [torch.load(root / f"rank{rank}.pt") for rank in range(2)]
    references = {family: forward(family, transformer(family)) for family in FAMILIES}
    for name, folder in folders.items():
        references[f"{name}:generate"] = generate(name, GENERATIONS[name][0].from_pretrained(folder))
    return ranks, references


@pytest.mark.parametrize("layout", LAYOUTS)
def test_joint_attention_with_a_whole_stream_and_key_masks(layout, runs):
    """Each rank's text and image queries attend as in one process: padded, masked keys and the other ranks' copies
    of the whole stream left out (3 heads on Ulysses 2: padded heads)."""
    ranks, _ = runs
    q, k, v, mask = joint_attention_case()
    bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    expected = attention(q, k, v, bias)  # (2, 12, 3, 8)
    for rank, results in enumerate(ranks):
        mine = torch.cat([expected[:, :5], expected[:, 5 + 4 * rank : 9 + 4 * rank]], dim=1)
        diff = max_diff(results[f"attention:{layout}"], mine)
        print(f"joint attention {layout} rank {rank}: max |parallel - one process| = {diff:.2e}")
        assert diff <= TOLERANCE


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_forward_matches_one_process(family, layout, runs):
    ranks, references = runs
    for rank, results in enumerate(ranks):
        diff = max_diff(results[f"{family}:{layout}"], references[family])
        print(f"{family} {layout} forward rank {rank}: max |parallel - one process| = {diff:.2e}")
        assert diff <= TOLERANCE, f"{family} {layout} rank {rank}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", GENERATIONS)
def test_generation_matches_one_process(name, layout, runs):
    ranks, references = runs
    for rank, results in enumerate(ranks):
        diff = max_diff(results[f"{name}:generate:{layout}"], references[f"{name}:generate"])
        print(f"{name} {layout} {STEPS}-step latents rank {rank}: max |parallel - one process| = {diff:.2e}")
        assert diff <= TOLERANCE, f"{name} {layout} rank {rank}: max abs diff {diff:.2e}"


def test_hooks_come_off(runs):
    ranks, _ = runs
    left = [key for results in ranks for key, value in results.items() if key.endswith("hooks_left") and value]
    assert not left, left


def test_the_cli_under_torchrun_writes_the_one_process_png(builtin_cache, tmp_path):
    """``torchrun --nproc-per-node=2 -m videox_fun.cli generate --model Z-Image-Tiny-Random ... --ulysses-degree 2``
    writes the PNG one process writes (its built-in defaults: 64x64, 4 steps, guidance 4)."""
    flags = ["generate", "--model", "Z-Image-Tiny-Random", "--prompt", "a red circle", "--quiet"]
    assert main([*flags, "--output", str(tmp_path / "one.png")]) == 0  # builds the built-in folder too
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}"]
    command = [*launch, "-m", "videox_fun.cli", *flags, "--ulysses-degree", "2", "--output", str(tmp_path / "sp.png")]
    env = {**os.environ, CACHE_ENV: str(builtin_cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one, parallel = read_png(tmp_path / "one.png").astype(int), read_png(tmp_path / "sp.png").astype(int)
    print(f"CLI PNG: {int((one != parallel).sum())} of {one.size} values differ, max {np.abs(one - parallel).max()}")
    assert np.array_equal(one, parallel)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_attention_processors_equal_diffusers(family):
    """Our processors (the seams sequence parallelism replaces) give diffusers' own transformer's output on the
    same weights: the odd token counts, Qwen-Image's text mask and Z-Image's key mask included."""
    ours = transformer(family)
    base = next(cls for cls in type(ours).__mro__ if cls.__module__.startswith("diffusers."))
    theirs = base.from_config({k: v for k, v in ours.config.items() if not k.startswith("_")}).eval()
    theirs.load_state_dict(ours.state_dict())
    assert type(theirs.transformer_blocks[0].attn.processor if family != "zimage" else
                theirs.layers[0].attention.processor).__module__.startswith("diffusers.")  # fmt: skip
    diff = max_diff(forward(family, ours), forward(family, theirs))
    print(f"{family}: max |ours - diffusers' processors| = {diff:.2e}")
    assert diff <= TOLERANCE


def test_a_malformed_declaration_is_one_line():
    model = transformer("flux")
    model._sequence_parallel_shards = {"hidden_states": "1"}
    with pytest.raises(ExtensionPointError, match=r"_sequence_parallel_shards\['hidden_states'\] = '1'"):
        JointSequenceParallel(build_groups(1, 1)).attach(model)
