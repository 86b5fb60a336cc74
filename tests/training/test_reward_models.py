"""VideoX-Fun's reward models (Aesthetic v2 / v2.5, HPS v2.0 / v2.1, MPS) from files in their released layouts.

Every model is tiny and built here: transformers CLIP / SigLIP configs saved as local folders, heads and
checkpoints written under the released key names. The HPS checkpoint is written in open_clip's layout by
:func:`open_clip_state`, whose names and shapes come from open_clip's model definition (``model.py`` /
``transformer.py`` of open_clip 2.x, which hpsv2 bundles), and a reference forward of that layout
(:func:`open_clip_image_features`, :func:`open_clip_text_features`, from the same source) checks the
conversion's meaning, not only its round trip.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_reward_training import reward_config  # noqa: F401 (a fixture)
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from videox_fun.models.wan.text_encoder import build_word_tokenizer
from videox_fun.training.mps_head import MPSHead
from videox_fun.training.open_clip_layout import open_clip_to_transformers
from videox_fun.training.reward_models import clip_pixels, condition_mask, load_reward, projected
from videox_fun.training.trainer import train

WORDS = ["a", "red", "blue", "green", "circle", "square", "triangle", "moving", "right", "left", "up", "down"]
PROMPTS = ["a red circle moving right", "a blue square moving up"]
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
PROJECTION = 16
CONTEXT = 16  # the tiny text context (CLIP's is 77)


def tiny_clip_config(eos_token_id: int = 1) -> CLIPConfig:
    """A two-layer CLIP of CLIP-H's design (exact GELU, as open_clip's ViT-H-14) at width 32, 32x32 images."""
    text = dict(vocab_size=len(WORDS) + 4, max_position_embeddings=CONTEXT, bos_token_id=1, eos_token_id=eos_token_id,
                pad_token_id=0, hidden_act="gelu", **TINY)  # fmt: skip
    vision = dict(image_size=32, patch_size=8, hidden_act="gelu", **TINY)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION)


def tiny_clip_folder(folder: Path, seed: int = 0) -> tuple[Path, CLIPModel]:
    """A CLIP folder (weights, config, word tokenizer: eos 1, pad 0) and the model it holds."""
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config()).eval()
    model.save_pretrained(folder)
    build_word_tokenizer(WORDS).save_pretrained(folder)
    return folder, model


def random_frames(seed: int = 1) -> torch.Tensor:
    """Two videos (2, 3, 3, 40, 48) in [-1, 1] with gradients: resized to 32x32 by the rewards."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 3, 3, 40, 48, generator=generator) * 2 - 1).requires_grad_(True)


def check_reward(name: str, kwargs: dict) -> torch.Tensor:
    """Load ``name`` and check its rewards (B,): finite, deterministic, differentiable to every frame."""
    reward = load_reward(name, json.dumps(kwargs))
    frames = random_frames()
    rewards = reward(frames, PROMPTS)
    rewards.sum().backward()
    assert rewards.shape == (2,) and torch.isfinite(rewards).all(), rewards
    assert torch.equal(rewards.detach(), reward(frames.detach(), PROMPTS))
    assert (frames.grad.abs().sum(dim=(0, 1, 3, 4)) > 0).all()  # every frame moves the reward
    assert not any(p.requires_grad for module in reward.modules() for p in module.parameters())
    return rewards.detach()


# ----------------------------------------------------------------------------------------
# Aesthetic predictor v2 / v2.5
# ----------------------------------------------------------------------------------------
def linear_head(prefix: str, indices: list[int], sizes: list[int], seed: int = 2) -> dict[str, torch.Tensor]:
    """Linear weights under ``{prefix}.{i}.weight|bias`` (sizes: in, hidden..., out) as the released heads."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for i, (n_in, n_out) in zip(indices, itertools.pairwise(sizes), strict=True):
        state[f"{prefix}.{i}.weight"] = torch.randn(n_out, n_in, generator=generator) / n_in**0.5
        state[f"{prefix}.{i}.bias"] = torch.randn(n_out, generator=generator) * 0.1
    return state


# sac+logos+ava1-l14-linearMSE.pth: Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64),
# Dropout, Linear(64, 16), Linear(16, 1): the tiny CLIP's 16-wide embedding in place of 768.
V2_INDICES, V2_SIZES = [0, 2, 4, 6, 7], [PROJECTION, 1024, 128, 64, 16, 1]


def test_aesthetic_v2_is_the_clip_embedding_through_the_released_mlp(tmp_path):
    encoder, clip = tiny_clip_folder(tmp_path / "clip-vit-large-patch14")
    head = linear_head("layers", V2_INDICES, V2_SIZES)
    torch.save(head, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    kwargs = {"encoder_path": str(encoder), "predictor_path": str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")}
    rewards = check_reward("AestheticReward", kwargs)
    reward = load_reward("aesthetic", json.dumps(kwargs))
    assert (reward.max_reward, reward.loss_scale) == (10.0, 0.1)  # VideoX-Fun's defaults
    # By hand: every frame squashed to 32x32, CLIP-normalised, its projected embedding L2-normalised, the MLP.
    frames = random_frames()
    images = frames.detach().transpose(1, 2).reshape(6, 3, 40, 48)
    with torch.no_grad():
        x = F.normalize(projected(clip.get_image_features(pixel_values=clip_pixels(images, 32, crop=False))), dim=-1)
    for i in V2_INDICES:
        x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    expected = x.view(2, 3).mean(dim=1)
    print(f"aesthetic v2 (tiny): {rewards.tolist()}, by hand {expected.tolist()}")
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)


def test_aesthetic_v2_5_is_siglip_and_the_released_head(tmp_path):
    torch.manual_seed(0)
    tiny = dict(TINY, hidden_size=24, num_attention_heads=2)
    config = SiglipConfig(
        text_config=dict(vocab_size=16, **tiny), vision_config=dict(image_size=32, patch_size=8, **tiny)
    )
    SiglipModel(config).save_pretrained(tmp_path / "siglip-so400m-patch14-384")  # the release is a whole SigLIP
    # aesthetic_predictor_v2_5.pth: scoring_head = Linear(1152, 1024), Dropout, ..., Linear(16, 1); a training
    # checkpoint of it wraps the state in model_state_dict with torch.compile's _orig_mod. prefix.
    head = linear_head("scoring_head", [0, 2, 4, 6, 8], [24, 1024, 128, 64, 16, 1])
    torch.save({"model_state_dict": {f"_orig_mod.{k}": v for k, v in head.items()}}, tmp_path / "v2_5.pth")
    kwargs = {"encoder_path": str(tmp_path / "siglip-so400m-patch14-384"), "predictor_path": str(tmp_path / "v2_5.pth"),
              "version": "v2.5"}  # fmt: skip
    rewards = check_reward("AestheticReward", kwargs)
    print(f"aesthetic v2.5 (tiny): {rewards.tolist()}")


# ----------------------------------------------------------------------------------------
# HPS: an open_clip checkpoint
# ----------------------------------------------------------------------------------------
# (transformers CLIPEncoderLayer name, open_clip ResidualAttentionBlock name)
BLOCK_NAMES = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))  # fmt: skip


def open_clip_state(model: CLIPModel) -> dict[str, torch.Tensor]:
    """``model``'s weights under open_clip ``CLIP``'s names and shapes (W: a tower's width, E: embed_dim).

    From open_clip's source: ``CLIP.__init__`` keeps the text tower as ``transformer``, ``token_embedding``
    (vocab, W), ``positional_embedding`` (context, W), ``ln_final``, ``text_projection`` (W, E) used as
    ``x @ text_projection``, ``logit_scale`` (); ``VisionTransformer`` is ``visual`` with ``conv1`` (W, 3, P, P)
    without bias, ``class_embedding`` (W,), ``positional_embedding`` (grid^2 + 1, W), ``ln_pre``, ``transformer``,
    ``ln_post``, ``proj`` (W, E); each ``ResidualAttentionBlock`` of ``transformer.resblocks`` has ``ln_1``,
    ``attn`` (``nn.MultiheadAttention``: ``in_proj_weight`` (3W, W) rows q, k, v, ``in_proj_bias`` (3W,),
    ``out_proj``), ``ln_2``, ``mlp.c_fc`` (4W, W) and ``mlp.c_proj`` (W, 4W).
    """
    s = model.state_dict()
    out = {"logit_scale": s["logit_scale"], "text_projection": s["text_projection.weight"].T.clone(),
           "visual.proj": s["visual_projection.weight"].T.clone()}  # fmt: skip
    for tower, ours, theirs in (("vision", "vision_model.", "visual."), ("text", "text_model.", "")):
        layers = getattr(model.config, f"{tower}_config").num_hidden_layers
        for i in range(layers):
            a, b = f"{ours}encoder.layers.{i}.", f"{theirs}transformer.resblocks.{i}."
            for p in ("weight", "bias"):
                out[f"{b}attn.in_proj_{p}"] = torch.cat([s[f"{a}self_attn.{n}_proj.{p}"] for n in "qkv"])
                for mine, open_clip in BLOCK_NAMES:
                    out[f"{b}{open_clip}.{p}"] = s[f"{a}{mine}.{p}"]
    for p in ("weight", "bias"):
        out[f"visual.ln_pre.{p}"] = s[f"vision_model.pre_layrnorm.{p}"]
        out[f"visual.ln_post.{p}"] = s[f"vision_model.post_layernorm.{p}"]
        out[f"ln_final.{p}"] = s[f"text_model.final_layer_norm.{p}"]
    out["visual.conv1.weight"] = s["vision_model.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = s["vision_model.embeddings.class_embedding"]
    out["visual.positional_embedding"] = s["vision_model.embeddings.position_embedding.weight"]
    out["token_embedding.weight"] = s["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = s["text_model.embeddings.position_embedding.weight"]
    return {k: v.clone() for k, v in out.items()}


def tiny_open_clip_config() -> dict:
    """The tiny CLIP as an open_clip model config (``model_configs/*.json``'s layout)."""
    return {
        "embed_dim": PROJECTION,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                       "mlp_ratio": 37 / 32},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": len(WORDS) + 4, "width": 32, "heads": 2, "layers": 2,
                     "mlp_ratio": 37 / 32},
    }  # fmt: skip


def open_clip_blocks(x: torch.Tensor, state: dict, prefix: str, layers: int, heads: int, mask=None) -> torch.Tensor:
    """open_clip's ``Transformer``: x (N, L, W) through ``ResidualAttentionBlock``s (pre-norm, exact GELU)."""
    width = x.shape[-1]
    for i in range(layers):
        p = f"{prefix}resblocks.{i}."
        attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)  # open_clip's module, its weights
        attention.load_state_dict({k: state[f"{p}attn.{k}"] for k in ("in_proj_weight", "in_proj_bias",
                                                                      "out_proj.weight", "out_proj.bias")})  # fmt: skip
        y = F.layer_norm(x, (width,), state[f"{p}ln_1.weight"], state[f"{p}ln_1.bias"])
        x = x + attention(y, y, y, need_weights=False, attn_mask=mask)[0]
        y = F.layer_norm(x, (width,), state[f"{p}ln_2.weight"], state[f"{p}ln_2.bias"])
        hidden = F.gelu(F.linear(y, state[f"{p}mlp.c_fc.weight"], state[f"{p}mlp.c_fc.bias"]))
        x = x + F.linear(hidden, state[f"{p}mlp.c_proj.weight"], state[f"{p}mlp.c_proj.bias"])
    return x


def open_clip_image_features(state: dict, pixels: torch.Tensor) -> torch.Tensor:
    """open_clip's ``VisionTransformer.forward`` (class-token pool): pixels (N, 3, S, S) -> (N, E)."""
    w = state["visual.conv1.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)  # (N, grid^2, W)
    x = torch.cat([state["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = x + state["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = open_clip_blocks(x, state, "visual.transformer.", 2, 2)
    pooled = F.layer_norm(x[:, 0], x.shape[-1:], state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    return pooled @ state["visual.proj"]


def open_clip_text_features(state: dict, ids: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text``: ids (N, context) -> (N, E), pooled at the ids' argmax (end of text)."""
    x = F.embedding(ids, state["token_embedding.weight"]) + state["positional_embedding"]
    causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)  # build_attention_mask
    x = open_clip_blocks(x, state, "transformer.", 2, 2, causal)
    x = F.layer_norm(x, x.shape[-1:], state["ln_final.weight"], state["ln_final.bias"])
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ state["text_projection"]


def test_the_open_clip_conversion_runs_open_clips_math(tmp_path):
    torch.manual_seed(0)
    eot = len(WORDS) + 3  # as CLIP's BPE: the end-of-text token is the highest id
    state = open_clip_state(CLIPModel(tiny_clip_config(eos_token_id=eot)))
    converted = open_clip_to_transformers(state, tiny_open_clip_config(), eot, "tiny")
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.zeros(2, CONTEXT, dtype=torch.long)  # open_clip's tokenizer pads with 0 to the context
    ids[0, :5], ids[1, :3] = torch.tensor([1, 4, 5, 6, eot]), torch.tensor([1, 7, eot])
    with torch.no_grad():
        image = projected(converted.get_image_features(pixel_values=pixels))
        text = projected(converted.get_text_features(input_ids=ids))
        image_error = (image - open_clip_image_features(state, pixels)).abs().max().item()
        text_error = (text - open_clip_text_features(state, ids)).abs().max().item()
    print(
        f"open_clip layout -> transformers CLIP vs open_clip's forward: image {image_error:.1e}, text {text_error:.1e}"
    )
    assert image_error < 1e-5 and text_error < 1e-5


@pytest.mark.parametrize("version", ["v2.0", "v2.1"])
def test_hps_loads_an_open_clip_checkpoint_losslessly(tmp_path, version):
    folder, clip = tiny_clip_folder(tmp_path / "CLIP-ViT-H-14")
    torch.save({"state_dict": open_clip_state(clip)}, tmp_path / "HPS.pt")  # HPS_v2*_compressed.pt's layout
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_open_clip_config()))
    kwargs = {"model_path": str(tmp_path / "HPS.pt"), "version": version, "processor_name_or_path": str(folder),
              "open_clip_config": str(tmp_path / "tiny.json")}  # fmt: skip
    rewards = check_reward("HPSReward", kwargs)
    reward = load_reward("hpsv2", json.dumps(kwargs))
    pixels, ids = torch.randn(3, 3, 32, 32), torch.tensor([[1, 4, 5, 6, 1, 0], [1, 7, 8, 1, 0, 0]])
    with torch.no_grad():
        image = [projected(m.get_image_features(pixel_values=pixels)) for m in (reward.model, clip)]
        text = [projected(m.get_text_features(input_ids=ids)) for m in (reward.model, clip)]
    errors = [(ours - source).abs().max().item() for ours, source in (image, text)]
    print(f"HPS {version} (tiny): rewards {rewards.tolist()}; converted vs source CLIP: image {errors[0]:.1e}, "
          f"text {errors[1]:.1e}")  # fmt: skip
    assert max(errors) < 1e-5 and (rewards.abs() <= 1).all()  # a cosine


# ----------------------------------------------------------------------------------------
# MPS
# ----------------------------------------------------------------------------------------
def mps_head_state(layers: int = 2, dim: int = PROJECTION, heads: int = 2, dim_head: int = 8, ff_mult: int = 4
                   ) -> dict[str, torch.Tensor]:  # fmt: skip
    """Kolors' ``Cross_model`` weights by name and shape (``cross_modeling.py``; released: dim 1024, 4 layers,
    16 heads of 64, ff_mult 4): per layer ``{i}.0.fn`` a ``CrossAttention`` (``norm`` weight + zero bias buffer,
    ``to_q`` (h d, D), ``to_kv`` (2 d, D), ``to_out`` (D, h d), ``ff.0`` (2 F, D), ``ff.2`` (D, F)) and ``{i}.1.fn`` a
    ``ParallelTransformerBlock`` (``norm``, ``rotary_emb.inv_freq`` (d / 2,), ``fused_attn_ff_proj`` (h d + 2 d +
    2 F, D), ``attn_out`` (D, h d), ``ff_out.1`` (D, F)); no biases in the Linears."""
    generator = torch.Generator().manual_seed(3)
    ff = dim * ff_mult

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) / shape[-1] ** 0.5

    state = {}
    for i in range(layers):
        c, p = f"layers.{i}.0.fn.", f"layers.{i}.1.fn."
        for prefix in (c, p):
            state[f"{prefix}norm.weight"], state[f"{prefix}norm.bias"] = 1 + 0.1 * w(dim), torch.zeros(dim)
        state.update({f"{c}to_q.weight": w(heads * dim_head, dim), f"{c}to_kv.weight": w(2 * dim_head, dim),
                      f"{c}to_out.weight": w(dim, heads * dim_head), f"{c}ff.0.weight": w(2 * ff, dim),
                      f"{c}ff.2.weight": w(dim, ff)})  # fmt: skip
        state[f"{p}rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head))
        state.update({f"{p}fused_attn_ff_proj.weight": w(heads * dim_head + 2 * dim_head + 2 * ff, dim),
                      f"{p}attn_out.weight": w(dim, heads * dim_head), f"{p}ff_out.1.weight": w(dim, ff)})  # fmt: skip
    return state


def test_mps_loads_videox_funs_state_dict_and_scores_every_frame(tmp_path):
    folder, clip = tiny_clip_folder(tmp_path / "CLIP-ViT-H-14")
    state = {f"model.{k}": v for k, v in clip.state_dict().items()}
    state.update({f"cross_model.{k}": v for k, v in mps_head_state().items()})
    torch.save(state, tmp_path / "MPS_overall.pth")
    kwargs = {"model_path": str(tmp_path / "MPS_overall.pth"), "processor_name_or_path": str(folder)}
    rewards = check_reward("MPSReward", kwargs)
    print(f"MPS (tiny): {rewards.tolist()}")
    assert (rewards.abs() <= 1).all()
    assert load_reward("mps", json.dumps({**kwargs, "condition": "red"})).condition == "red"


def kolors_cross_model(state: dict, layers: int, heads: int, queries, context, mask) -> torch.Tensor:
    """Kolors' ``Cross_model.forward`` transcribed from ``cross_modeling.py`` (its einsums, its order), functional."""

    def swiglu(x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x

    def rotate_half(x: torch.Tensor) -> torch.Tensor:  # rearrange "... (j d) -> ... j d", j=2
        x1, x2 = x.unflatten(-1, (2, -1)).unbind(dim=-2)
        return torch.cat((-x2, x1), dim=-1)

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # "b n (h d) -> b h n d"
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, add: torch.Tensor | float) -> torch.Tensor:
        sim = torch.einsum("b h i d, b j d -> b h i j", q, k) + add
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        return torch.einsum("b h i j, b j d -> b h i d", attn, v).transpose(1, 2).flatten(2)  # b n (h d)

    for i in range(layers):
        c, p = (
            {k.split(".fn.")[1]: v for k, v in state.items() if k.startswith(f"layers.{i}.{j}.fn.")} for j in (0, 1)
        )
        x = F.layer_norm(queries, queries.shape[-1:], c["norm.weight"], c["norm.bias"])
        q = heads_first(x @ c["to_q.weight"].T)
        q = q * q.shape[-1] ** -0.5
        k, v = (context @ c["to_kv.weight"].T).chunk(2, dim=-1)
        out = attend(q, k, v, mask.unsqueeze(1).repeat(1, heads, 1, 1)) @ c["to_out.weight"].T
        queries = out + swiglu(x @ c["ff.0.weight"].T) @ c["ff.2.weight"].T + queries
        x = F.layer_norm(queries, queries.shape[-1:], p["norm.weight"], p["norm.bias"])
        dim_head, ff_inner = p["rotary_emb.inv_freq"].shape[0] * 2, p["ff_out.1.weight"].shape[1]
        fused = x @ p["fused_attn_ff_proj.weight"].T
        q, k, v, ff = fused.split((fused.shape[-1] - 2 * dim_head - 2 * ff_inner, dim_head, dim_head, 2 * ff_inner), -1)
        freqs = torch.einsum("i , j -> i j", torch.arange(x.shape[1]).float(), p["rotary_emb.inv_freq"])
        pos = torch.cat((freqs, freqs), dim=-1)
        q, k = (t * pos.cos() + rotate_half(t) * pos.sin() for t in (heads_first(q), k))
        out = attend(q * dim_head**-0.5, k, v, 0.0) @ p["attn_out.weight"].T
        queries = out + swiglu(ff) @ p["ff_out.1.weight"].T + queries
    return queries


def test_the_mps_head_is_kolors_cross_model():
    state = mps_head_state()
    head = MPSHead.from_state(state)
    head.load_state_dict(state)
    generator = torch.Generator().manual_seed(4)
    queries, context = (
        torch.randn(3, 5, PROJECTION, generator=generator),
        torch.randn(3, 6, PROJECTION, generator=generator),
    )
    mask = torch.zeros(3, 5, 6)
    mask[:, :, 4:] = float("-inf")  # the last context tokens do not resemble the condition
    with torch.no_grad():
        error = (head(queries, context, mask) - kolors_cross_model(state, 2, 2, queries, context, mask)).abs().max()
    print(f"MPS head vs Kolors' Cross_model transcribed: max abs diff {error:.1e}")
    assert error < 1e-5


def test_mps_attends_to_the_prompt_tokens_that_resemble_the_condition():
    # Prompt tokens along, across and against the condition's direction; the second prompt resembles it nowhere.
    text = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [[0.0, 1.0], [-1.0, 0.0], [0.0, 1.0]]])
    condition = torch.tensor([[[1.0, 0.0], [0.5, 0.0]], [[1.0, 0.0], [0.5, 0.0]]])
    mask = condition_mask(text, condition)  # (2, 1, 3)
    inf = float("inf")
    assert mask.tolist() == [[[0.0, -inf, -inf]], [[0.0, 0.0, 0.0]]]  # no token passes: all kept, not a NaN


# ----------------------------------------------------------------------------------------
# Missing or wrong weights: one line naming the argument and the path
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs", "argument"),
    [
        ("AestheticReward", {"predictor_path": "/nowhere/sac+logos+ava1-l14-linearMSE.pth"}, "predictor_path"),
        ("AestheticReward", {"version": "v2.5"}, "predictor_path"),
        ("HPSReward", {"version": "v2.1"}, "model_path"),
        ("HPSReward", {"model_path": "/nowhere/HPS_v2_compressed.pt"}, "model_path"),
        ("MPSReward", {"model_path": "/nowhere/MPS_overall.pth"}, "model_path"),
    ],
)
def test_a_missing_weight_file_is_one_line_naming_its_argument(name, kwargs, argument):
    with pytest.raises(ValueError) as raised:
        load_reward(name, json.dumps(kwargs))
    message = str(raised.value)
    print(message)
    assert "\n" not in message and f"{argument}=" in message and "nothing is downloaded" in message
    assert str(kwargs.get(argument)) in message


def test_a_missing_folder_or_a_wrong_checkpoint_is_one_line(tmp_path):
    torch.save(linear_head("layers", V2_INDICES, V2_SIZES), tmp_path / "head.pth")
    kwargs = {"predictor_path": str(tmp_path / "head.pth"), "encoder_path": str(tmp_path / "no-clip")}
    with pytest.raises(ValueError, match=r"encoder_path=.*no-clip.*no such folder") as raised:
        load_reward("AestheticReward", json.dumps(kwargs))
    folder, clip = tiny_clip_folder(tmp_path / "clip")
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "not_open_clip.pt")  # transformers names, not open_clip's
    kwargs = {"model_path": str(tmp_path / "not_open_clip.pt"), "processor_name_or_path": str(folder)}
    with pytest.raises(ValueError, match=r"HPSReward: model_path=.*not an open_clip CLIP") as wrong:
        load_reward("HPSReward", json.dumps(kwargs))
    with pytest.raises(ValueError, match=r"version 'v3' is unknown") as version:
        load_reward("HPSReward", json.dumps({"version": "v3"}))
    assert all("\n" not in str(e.value) for e in (raised, wrong, version)), wrong.value


# ----------------------------------------------------------------------------------------
# A reward LoRA step with each
# ----------------------------------------------------------------------------------------
def reward_kwargs(name: str, folder: Path) -> dict:
    """Tiny weights for ``name`` under ``folder`` and the --reward_fn_kwargs that load them."""
    clip_folder, clip = tiny_clip_folder(folder / "clip")
    if name == "AestheticReward":
        torch.save(linear_head("layers", V2_INDICES, V2_SIZES), folder / "head.pth")
        return {"encoder_path": str(clip_folder), "predictor_path": str(folder / "head.pth")}
    if name == "HPSReward":
        torch.save({"state_dict": open_clip_state(clip)}, folder / "HPS.pt")
        (folder / "tiny.json").write_text(json.dumps(tiny_open_clip_config()))
        return {"model_path": str(folder / "HPS.pt"), "processor_name_or_path": str(clip_folder),
                "open_clip_config": str(folder / "tiny.json"), "version": "v2.1"}  # fmt: skip
    state = {**{f"model.{k}": v for k, v in clip.state_dict().items()},
             **{f"cross_model.{k}": v for k, v in mps_head_state().items()}}  # fmt: skip
    torch.save(state, folder / "MPS_overall.pth")
    return {"model_path": str(folder / "MPS_overall.pth"), "processor_name_or_path": str(clip_folder)}


@pytest.mark.parametrize("name", ["AestheticReward", "HPSReward", "MPSReward"])
def test_a_reward_lora_step_runs_with_each_model(reward_config, tmp_path, name):  # noqa: F811 (the fixture)
    kwargs = reward_kwargs(name, tmp_path)
    config = reward_config(reward_fn=name, reward_fn_kwargs=json.dumps(kwargs), max_train_steps=1, train_batch_size=1)
    result = train(config)
    print(f"{name}: one reward LoRA step, loss {result.losses}")
    assert len(result.losses) == 1 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.lora_path is not None and Path(result.lora_path).exists()
