"""The latent cache: what it stores equals what training computes from pixels, and training reads it alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from training_helpers import write_train_yaml

from videox_fun.cli import main
from videox_fun.pipelines.conditioning import mask_channels, masked_video
from videox_fun.training.cache import CachedLatentDataset, build_cache, cache_data_config, collate_cached
from videox_fun.training.data import BucketBatchSampler, VideoDataset, collate, generate_mask
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.specs.wan import CACHED_MASK_KINDS, PixelSource, WanSpec
from videox_fun.training.trainer import train


def test_cached_tensors_equal_the_pixel_path(make_config, tmp_path):
    config = make_config("inp", train_mode="inpaint", cache_dir=str(tmp_path / "cache"))
    assert main(["cache", "--config", str(write_train_yaml(config, tmp_path / "train.yaml"))]) == 0
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert [e["index"] for e in index["entries"]] == [0, 1, 2]
    assert {f"masked_latents_{k}" for k in CACHED_MASK_KINDS} <= set(index["entries"][0]["tensors"])

    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    dataset = VideoDataset(cache_data_config(config), progress=False)
    batch = collate([dataset[0]])
    source = PixelSource(spec, models, batch, torch.device("cpu"))
    record = load_file(str(tmp_path / "cache" / "00000000.safetensors"))
    torch.testing.assert_close(record["latents"], source.latents()[0], rtol=0, atol=1e-6)
    tokens = record["context"].shape[0]
    full = source.context([])[0]  # (text_len, C), zeros after the prompt's tokens
    torch.testing.assert_close(record["context"], full[:tokens], rtol=0, atol=1e-6)
    assert full[tokens:].abs().max() == 0
    _, _, f, h, w = batch["pixel_values"].shape
    i2v = generate_mask("i2v", f, h, w, torch.Generator())[None]  # (1, 1, F, H, W)
    expected = source.encode(masked_video(batch["pixel_values"], i2v, models.settings.masked_fill))
    torch.testing.assert_close(record["masked_latents_i2v"], expected[0], rtol=0, atol=1e-6)
    # Cached training builds whole-frame masks at latent resolution: the mask channels are the same.
    small = generate_mask("i2v", f, h // 8, w // 8, torch.Generator())[None]
    assert torch.equal(mask_channels(small, (h // 8, w // 8)), mask_channels(i2v, (h // 8, w // 8)))


def test_training_from_the_cache_needs_no_vae_or_text_encoder(make_config, model_folders, tmp_path):
    folder = tmp_path / "transformer_only"
    shutil.copytree(model_folders("control_ref"), folder)
    config = make_config("control_ref", train_mode="control_ref", cache_dir=str(tmp_path / "cache"), train_batch_size=2)
    assert main(["cache", "--config", str(write_train_yaml(config, tmp_path / "cache.yaml"))]) == 0
    assert "control_latents" in load_file(str(tmp_path / "cache" / "00000001.safetensors"))
    shutil.rmtree(folder / "vae")
    shutil.rmtree(folder / "text_encoder")
    cached = make_config(
        "control_ref",
        pretrained_model_name_or_path=str(folder),
        train_mode="control_ref",
        cache_dir=str(tmp_path / "cache"),
        use_cached_latents=True,
        train_batch_size=2,
        max_train_steps=3,
    )
    result = train(cached)
    assert result.global_step == 3 and all(torch.isfinite(torch.tensor(result.losses)))


def test_cached_batches_share_a_latent_shape(make_config, tmp_path):
    config = make_config("t2v", cache_dir=str(tmp_path / "cache"))
    config.video_sample_n_frames = 9  # the 9-frame clips: 3 latent frames
    main(["cache", "--config", str(write_train_yaml(config, tmp_path / "a.yaml"))])
    # Add a record of another shape, as a cache of a mixed dataset has.
    odd = load_file(str(tmp_path / "cache" / "00000002.safetensors"))
    odd["latents"] = odd["latents"][:, :2].contiguous()
    save_file(odd, str(tmp_path / "cache" / "00000002.safetensors"), metadata={"text": "x", "data_type": "video"})
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    index["entries"][2]["shape"] = list(odd["latents"].shape)
    (tmp_path / "cache" / "index.json").write_text(json.dumps(index))

    dataset = CachedLatentDataset(tmp_path / "cache", config)
    sampler = BucketBatchSampler(dataset, batch_size=2, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == [0, 1, 2]
    for requests in batches:
        batch = collate_cached([dataset[r] for r in requests])
        assert batch["latents"].shape[0] == len(requests)
        assert batch["context"].shape[1] == batch["empty_context"].shape[1]
    generators = sample_generators(0, 0, 0, range(2))
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    inputs = spec.build_inputs(models, collate_cached([dataset[0], dataset[1]]), "normal", generators, "cpu")
    assert inputs.latents.shape == (2, 16, 3, 4, 4)


def cache_listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_rebuild_holds_exactly_the_new_samples_and_a_failed_one_keeps_the_old_cache(
    make_config, video_data, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    assert (
        main(
            ["cache", "--config", str(write_train_yaml(make_config("t2v", cache_dir=str(cache)), tmp_path / "a.yaml"))]
        )
        == 0
    )
    assert len(json.loads((cache / "index.json").read_text())["entries"]) == 3
    one = tmp_path / "one.json"
    one.write_text(json.dumps(json.loads(video_data.read_text())[:1]))
    config = make_config("t2v", cache_dir=str(cache), train_data_meta=str(one), train_data_dir=str(video_data.parent))
    assert build_cache(config) == cache
    index = json.loads((cache / "index.json").read_text())
    assert [e["index"] for e in index["entries"]] == [0] and index["train_data_meta"] == str(one)
    assert sorted(p.name for p in cache.iterdir()) == [
        "00000000.safetensors",
        "empty_context.safetensors",
        "index.json",
    ]
    assert len(CachedLatentDataset(cache, config)) == 1

    # A build that fails midway leaves the previous cache whole, and no staging folder behind.
    before = cache_listing(cache)
    calls = []

    def fail_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(self, *args, **kwargs)

    encode = WanSpec.encode_for_cache
    monkeypatch.setattr(WanSpec, "encode_for_cache", fail_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        build_cache(make_config("t2v", cache_dir=str(cache)))
    assert len(calls) == 2 and cache_listing(cache) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_cache_dir_holding_other_files_or_a_file_is_refused_before_loading(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(WanSpec, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds other files than a latent cache \(notes.txt\)"):
        build_cache(make_config("t2v", cache_dir=str(folder)))
    assert (folder / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        build_cache(make_config("t2v", cache_dir=str(tmp_path / "file")))
