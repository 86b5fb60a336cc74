"""CogVideoX models: released configs (parameter counts on the meta device), strict loading, variants, tokenizers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videox_fun.models.cogvideox.text_encoder import CogVideoXTextEncoder, load_t5_tokenizer
from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder, tiny_transformer_config
from videox_fun.models.cogvideox.transformer import CogVideoXTransformer, count_parameters
from videox_fun.models.cogvideox.vae import CogVideoXVAE
from videox_fun.models.cogvideox.variants import PRESETS, variant_of
from videox_fun.models.loading import CheckpointMismatchError

# sum(p.numel()) of diffusers' CogVideoXTransformer3DModel with the released configs (model-facts.md).
PARAMETERS = {
    "CogVideoX-2b": 1_693_783_872,
    "CogVideoX-5b": 5_570_283_072,
    "CogVideoX1.5-5B": 5_570_676_352,
    "CogVideoX1.5-5B-I2V": 5_571_594_880,
    "CogVideoX-Fun-V1.1-2b-InP": 1_693_914_432,
    "CogVideoX-Fun-V1.1-5b-InP": 5_570_491_968,
    "CogVideoX-Fun-V1.1-5b-Control": 5_570_479_680,
}
KINDS = {"CogVideoX-2b": "t2v", "CogVideoX1.5-5B-I2V": "i2v", "CogVideoX-Fun-V1.1-5b-Control": "control"}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_released_configs_have_the_released_parameter_counts(name: str):
    with torch.device("meta"):
        model = CogVideoXTransformer.from_model_config(PRESETS[name])
    assert count_parameters(model) == PARAMETERS[name]
    if name in KINDS:
        assert variant_of(model.config).kind == KINDS[name]


def test_variants_are_read_off_the_config():
    assert variant_of(PRESETS["CogVideoX-5b-I2V"]).kind == "i2v"  # learned positions
    assert variant_of(PRESETS["CogVideoX-Fun-V1.1-2b-Control"]).kind == "control"
    inp = variant_of(PRESETS["CogVideoX-Fun-V1.5-5b-InP"])
    assert (inp.kind, inp.version, inp.patch_size_t) == ("inp", "1.5", 2)
    with pytest.raises(ValueError, match="in_channels 20"):
        variant_of({"in_channels": 20})


def test_extension_points_are_declared():
    assert CogVideoXTransformer._block_lists == ("transformer_blocks",)
    assert CogVideoXTransformer._repeated_blocks == ("CogVideoXBlock",)
    assert "proj_out" in CogVideoXTransformer._fp8_skip_modules
    model = CogVideoXTransformer.from_model_config(tiny_transformer_config("inp"))
    assert hasattr(model, "time_embedding") and model.config.add_noise_in_inpaint_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cogvideox_folder(tmp_path_factory.mktemp("cog") / "t2v", "t2v", seed=2)


def test_loading_is_exact_and_rebuilds_the_sincos_table(folder: Path):
    model = CogVideoXTransformer.from_pretrained(folder / "transformer")
    saved = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    torch.manual_seed(0)
    reference = CogVideoXTransformer.from_model_config(tiny_transformer_config("t2v"))
    assert torch.equal(model.patch_embed.pos_embedding, reference.patch_embed.pos_embedding)  # not stored


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    dst.mkdir(parents=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    edit(state)
    save_file(state, str(dst / "diffusion_pytorch_model.safetensors"))
    return dst


def test_a_missing_key_fails_naming_it(folder: Path, tmp_path: Path):
    broken = _edit_weights(folder / "transformer", tmp_path / "t", lambda s: s.pop("proj_out.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: proj_out\.weight"):
        CogVideoXTransformer.from_pretrained(broken)


def test_a_misshaped_key_fails_naming_it(folder: Path, tmp_path: Path):
    def edit(state):
        state["norm_final.weight"] = torch.zeros(3)

    broken = _edit_weights(folder / "transformer", tmp_path / "t", edit)
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped keys: norm_final\.weight \(checkpoint \(3,\)"):
        CogVideoXTransformer.from_pretrained(broken)


def test_an_unexpected_vae_key_fails_naming_it(folder: Path, tmp_path: Path):
    def edit(state):
        state["encoder.extra.weight"] = torch.zeros(1)

    broken = _edit_weights(folder / "vae", tmp_path / "v", edit)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: encoder\.extra\.weight"):
        CogVideoXVAE.from_pretrained(broken)


def test_vae_round_trip_shapes_and_layout(folder: Path):
    vae = CogVideoXVAE.from_pretrained(folder / "vae")
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    latents = vae.encode(video)
    assert latents.shape == (1, 3, 16, 4, 4)  # (B, F', C, h, w), the transformer's layout
    raw = vae.model.encode(video).latent_dist.mode() * vae.scaling_factor  # (B, C, F', h, w)
    torch.testing.assert_close(latents, raw.permute(0, 2, 1, 3, 4))
    assert vae.decode(latents).shape == (1, 3, 9, 32, 32)


def test_text_encoder_pads_to_226_without_a_mask(folder: Path):
    encoder = CogVideoXTextEncoder.from_pretrained(folder / "text_encoder", folder / "tokenizer")
    embeds = encoder.encode(["a red circle", ""])
    assert embeds.shape == (2, 226, 32)
    ids = encoder.tokenizer(["a red circle"], padding="max_length", max_length=226, return_tensors="pt").input_ids
    assert ids[0, :4].tolist()[-1] == 1 and ids[0, 4:].eq(0).all()  # </s>, then <pad>
    torch.testing.assert_close(embeds[:1], encoder.model(ids)[0])  # padding encoded, no attention mask


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed")
def test_a_spiece_only_tokenizer_folder_says_what_to_install(tmp_path: Path):
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(ImportError, match="pip install sentencepiece protobuf"):
        load_t5_tokenizer(tmp_path)


def test_a_released_spiece_model_tokenizer_folder_reads_as_sentencepiece_encodes(tmp_path):
    """The released CogVideoX tokenizer/ holds spiece.model (no tokenizer.json): a small SentencePiece model
    trained here stands in for it, and our loader gives sentencepiece's own ids plus T5's end token."""
    import random

    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from videox_fun.models.cogvideox.text_encoder import load_t5_tokenizer

    words = ["a", "red", "green", "blue", "circle", "square", "triangle", "moving", "left", "right", "up", "down"]
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=32,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)  # fmt: skip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 226, "extra_ids": 0}))
    tokenizer = load_t5_tokenizer(tmp_path)
    reference = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    for text in ("a red circle moving left", "blue triangle up"):
        assert tokenizer(text).input_ids == [*reference.encode(text), 1]
