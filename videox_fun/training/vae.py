"""Training a VAE (diffusers ``AutoencoderKLWan``, ``AutoencoderKLCogVideoX`` or the image ``AutoencoderKL`` of
FLUX.1 / Z-Image) on a video or image dataset, with resume.

Used to make the toy world's tiny VAEs; it works for any metadata dataset. What differs between
the two classes (a fresh model's posterior, the unclamped decode, the decoder side, the latent
statistics, widening) lives in one :class:`VAEKind` per class, chosen by ``VAETrainConfig.vae_class``.
The loss is L1 + MSE on the reconstruction plus a small KL term; the posterior is sampled while training. Checkpoints
are diffusers-layout folders written atomically (temp folder + rename), with the optimizer state,
so a killed run continues with ``resume=True``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, AutoencoderKLCogVideoX, AutoencoderKLWan
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..io.files import atomic_dir, atomic_path, reset_tree_modes
from ..models.cpu_kernels import CPUFastPaths
from ..models.loading import public_config
from .data import BucketBatchSampler, DataConfig, VideoDataset, collate
from .data.workers import worker_context


@dataclass
class VAETrainConfig:
    """What a VAE run needs; the data fields are those of :class:`DataConfig`."""

    output_dir: str
    train_data_meta: str
    # Which VAE: "wan" (AutoencoderKLWan), "cogvideox" (AutoencoderKLCogVideoX) or "flux" (the image
    # AutoencoderKL of FLUX.1 / Z-Image, trained on images); see VAE_KINDS.
    vae_class: str = "wan"
    vae_config: dict = field(default_factory=dict)
    init_from: str | None = None
    video_sample_size: int = 64
    video_sample_n_frames: int = 9
    batch_size: int = 4
    learning_rate: float = 1e-3
    # Linear warm-up before the cosine decay: a fresh Adam moves every weight by about the
    # learning rate per step, which undoes much of a fine-tuned decoder in its first steps.
    lr_warmup_steps: int = 0
    max_train_steps: int = 1000
    kl_weight: float = 1e-6
    # Extra loss weight on foreground pixels (brightest channel above -0.4 in [-1, 1]): on mostly
    # black frames the all-black output is a strong local minimum without it.
    foreground_weight: float = 0.0
    # Weight of the L1 term beside the MSE. L1 keeps the black background exact early on; a last
    # phase with 0 (and no foreground weight) minimises plain MSE, which is what PSNR measures.
    l1_weight: float = 1.0
    # Train on crops of this size centred (with jitter) on the foreground: a fully convolutional
    # VAE learns the same thing at a quarter of the cost when frames are mostly empty.
    crop_size: int | None = None
    # End the run early (as a kill would) without changing the LR schedule, which spans max_train_steps.
    stop_after_steps: int | None = None
    # A VAE built from its config starts with this posterior log-variance. Its default init gives
    # std ~0.65 against means ~1: the decoder then learns to ignore its noisy latents (blurry
    # output, ~22 dB after 600 steps), and the tiny KL term never shrinks it. Starting at
    # std ~0.02 keeps the latents informative; fine-tunes of existing weights are left alone.
    initial_logvar: float = -8.0
    # Train the decoder (post_quant_conv + decoder) alone: the encoder, and so every latent and
    # every transformer trained on them, stays exactly as it was.
    decoder_only: bool = False
    # Start from ``init_from`` with a decoder this many times wider (see :func:`widen_decoder`):
    # the same reconstruction at step 0, more capacity for what the narrow decoder blurs.
    widen_decoder: int = 1
    # Decoder robustness: noise of up to this many standard deviations of the latents (per clip, a
    # scale drawn uniformly from [0, latent_noise]) is added to the sampled latents before decoding.
    # A decoder trained on exact latents rounds a transformer's slightly-off latents (a square's
    # corners, drawn from ~2x2 latent pixels, come out round); one trained so draws them sharp.
    latent_noise: float = 0.0
    checkpointing_steps: int = 100
    seed: int = 0
    num_workers: int = 0


def _data(config: VAETrainConfig) -> tuple[VideoDataset, BucketBatchSampler]:
    data = DataConfig(
        train_data_meta=config.train_data_meta,
        video_sample_size=config.video_sample_size,
        image_sample_size=config.video_sample_size,
        video_sample_n_frames=config.video_sample_n_frames,
        video_sample_stride=1,
        text_drop_ratio=0.0,
        seed=config.seed,
    )
    dataset = VideoDataset(data)
    return dataset, BucketBatchSampler(dataset, config.batch_size, seed=config.seed, drop_last=True)


def decode_unclamped(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode`` without its final clamp to [-1, 1]: (B, z, F', h, w) -> (B, 3, F, H, W).

    The clamp has zero gradient wherever the output overshoots, so a decoder that starts by
    overshooting to below -1 on mostly black frames gets no signal to draw anything (it stays
    all black). Training therefore uses the same frame-by-frame causal decode, unclamped.
    """
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
        )
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def reconstruction_loss(
    vae: AutoencoderKLWan | AutoencoderKLCogVideoX,
    video: torch.Tensor,
    kl_weight: float,
    foreground_weight: float = 0.0,
    frozen_encoder: bool = False,
    l1_weight: float = 1.0,
    latent_noise: float = 0.0,
) -> torch.Tensor:
    """Weighted L1 + MSE of a sampled reconstruction plus ``kl_weight`` * KL.  video: (B, 3, F, H, W) in [-1, 1].

    With ``frozen_encoder`` the encoding builds no graph and the KL term (constant then) is left out.
    ``latent_noise``: see :attr:`VAETrainConfig.latent_noise` (drawn from the global RNG, as the
    posterior sample is, so a resume restores it).
    """
    with CPUFastPaths():  # the RMS norms' normalize is ~70x faster this way on a CPU
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_encoder):
            posterior = kind_of(vae).posterior(vae, video)
        recon = kind_of(vae).decode_unclamped(vae, perturbed_latents(posterior.sample(), latent_noise))
    if frozen_encoder:
        kl_weight = 0.0
    weight = 1.0 + foreground_weight * (video.amax(dim=1, keepdim=True) > -0.4).float()  # (B, 1, F, H, W)
    error = recon - video
    pixel = (weight * (l1_weight * error.abs() + error.pow(2))).sum() / (weight.sum() * video.shape[1])
    return pixel + kl_weight * posterior.kl().mean()


def perturbed_latents(z: torch.Tensor, latent_noise: float) -> torch.Tensor:
    """``z`` (B, C, ...) plus Gaussian noise of ``scale`` x its own std per clip, ``scale`` ~ U(0, latent_noise)."""
    if latent_noise <= 0:
        return z
    dims = tuple(range(1, z.dim()))
    scale = latent_noise * torch.rand((z.shape[0],) + (1,) * (z.dim() - 1), dtype=z.dtype)  # (B, 1, ...)
    return z + scale * z.detach().std(dim=dims, keepdim=True) * torch.randn_like(z)


def foreground_crops(video: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Crop (B, 3, F, H, W) to (B, 3, F, size, size) around each clip's foreground centroid (+- size/4)."""
    b, _, _, h, w = video.shape
    crops = []
    for i in range(b):
        fg = (video[i].amax(dim=0) > -0.4).any(dim=0)  # (H, W) pixels with content in any frame
        ys, xs = fg.nonzero(as_tuple=True)
        cy, cx = (ys.float().mean().item(), xs.float().mean().item()) if len(ys) else (h / 2, w / 2)
        jitter = (torch.rand(2, generator=generator) - 0.5) * (size / 2)
        top = int(min(max(cy + jitter[0].item() - size / 2, 0), h - size))
        left = int(min(max(cx + jitter[1].item() - size / 2, 0), w - size))
        crops.append(video[i, :, :, top : top + size, left : left + size])
    return torch.stack(crops)


@dataclass
class _VAERun:
    """What the steps of a VAE run share: the model, its optimizer and schedule, the data, the crop RNG."""

    config: VAETrainConfig
    vae: AutoencoderKLWan
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dataset: VideoDataset
    sampler: BucketBatchSampler
    crop_generator: torch.Generator


def _save(run: _VAERun, step: int, folder: Path) -> None:
    """Write the VAE (diffusers layout) and the training state (optimizer, schedule, step, data and RNG states)."""
    # The new checkpoint replaces the previous one only once whole: a run killed while saving resumes from the old one.
    with atomic_dir(folder) as staging:
        run.vae.save_pretrained(str(staging))
        reset_tree_modes(staging)  # diffusers' safetensors would be 0600
        state = {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "step": step,
            "sampler": run.sampler.state_dict(),
            "rng": torch.get_rng_state(),
            "crop_rng": run.crop_generator.get_state(),
        }
        torch.save(state, staging / "training_state.pt")


def _restore(run: _VAERun, folder: Path) -> int:
    """Load the training state :func:`_save` wrote into ``run`` (and the global RNG); returns its step."""
    state = torch.load(folder / "training_state.pt", weights_only=False)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["rng"])
    run.crop_generator.set_state(state["crop_rng"])
    return state["step"]


def _fresh_vae(config: VAETrainConfig) -> AutoencoderKLWan | AutoencoderKLCogVideoX:
    """A VAE of ``config.vae_class`` from ``config.vae_config`` whose posterior starts nearly deterministic."""
    kind = vae_kind(config.vae_class)
    vae = kind.model_class(**config.vae_config)
    conv, z_dim = kind.moments_conv(vae)
    with torch.no_grad():
        # The conv's output channels are [mean (z_dim), logvar (z_dim)]; zero weights on the
        # logvar half make it the constant ``initial_logvar`` until training moves it.
        conv.weight[z_dim:].zero_()
        conv.bias[z_dim:].fill_(config.initial_logvar)
    return vae


# Decoder convolutions whose output channels are several tensors side by side: the attention's
# [q | k | v] and the temporal upsampler's [frame 2t | frame 2t+1]. Widening keeps each group whole.
_OUTPUT_GROUPS = {"to_qkv": 3, "upsamplers.0.time_conv": 2}


def _output_groups(name: str) -> int:
    return next((groups for key, groups in _OUTPUT_GROUPS.items() if key in name), 1)


def _widened_indices(narrow: int, wide: int, groups: int) -> torch.Tensor:
    """Source channel of each wide channel: every group of ``narrow / groups`` is repeated whole."""
    if wide == narrow:
        return torch.arange(narrow)
    size, copies = narrow // groups, wide // narrow
    # wide channel (group, copy, c) reads narrow channel (group, c)
    return (
        (torch.arange(groups)[:, None, None] * size + torch.arange(size)[None, None, :])
        .expand(groups, copies, size)
        .reshape(-1)
    )


def _split_over_copies(shape: torch.Size, copies: int, generator: torch.Generator) -> torch.Tensor:
    """Random positive shares along dim 1 (laid out copy-major) that sum to 1 over the copies of a channel."""
    out, wide_in, *rest = shape
    share = torch.rand(out, copies, wide_in // copies, *rest, generator=generator) + 0.5  # (O, copies, I, ...)
    return (share / share.sum(dim=1, keepdim=True)).reshape(shape)


def widen_decoder(vae: AutoencoderKLWan, factor: int, generator: torch.Generator) -> AutoencoderKLWan:
    """A copy of ``vae`` whose decoder has ``factor`` times the channels and decodes identically.

    Net2Net widening: every decoder channel is repeated ``factor`` times, and each weight reading a
    repeated channel is split among its copies in random shares that sum to one, so the wide
    decoder computes the same video (RMS norms see the same normalised values; the attention's
    q and k are scaled so that their logits stay the same) while the copies, reached through
    different weights, receive different gradients and can learn apart. The encoder, the
    latents and their statistics are untouched.
    """
    narrow_dim = vae.config.decoder_base_dim or vae.config.base_dim
    # Private keys such as ``_use_default_values`` would make from_config drop decoder_base_dim.
    config = public_config(vae.config)
    wide = AutoencoderKLWan.from_config({**config, "decoder_base_dim": narrow_dim * factor})
    narrow_state = vae.state_dict()
    wide_state = {}
    for name, target in wide.state_dict().items():
        source = narrow_state[name]
        if target.shape == source.shape:
            wide_state[name] = source.clone()
            continue
        rows = _widened_indices(source.shape[0], target.shape[0], _output_groups(name))
        value = source.index_select(0, rows)
        if value.ndim > 1 and target.shape[1] != source.shape[1]:
            copies = target.shape[1] // source.shape[1]
            value = value.index_select(1, torch.arange(source.shape[1]).repeat(copies))
            value = value * _split_over_copies(value.shape, copies, generator)
        if "to_qkv" in name:
            # q . k sums over `factor` times the channels and SDPA divides by sqrt(factor) more:
            # factor ** -0.25 on each of q and k gives the narrow logits back.
            qk = 2 * target.shape[0] // 3
            value[:qk] *= factor**-0.25
        wide_state[name] = value
    wide.load_state_dict(wide_state)  # built in float32, as training wants
    return wide


class VAEKind:
    """What a VAE class needs of its own to be trained here; one subclass per class (see :data:`VAE_KINDS`)."""

    name: ClassVar[str]
    model_class: ClassVar[type]

    @staticmethod
    def moments_conv(vae: Any) -> tuple[torch.nn.Conv3d, int]:
        """The convolution whose output is the posterior's [mean | logvar], and the latent channels."""
        raise NotImplementedError

    @staticmethod
    def posterior(vae: Any, video: torch.Tensor) -> DiagonalGaussianDistribution:
        """The posterior of a video (B, 3, F, H, W): its latents are (B, z, F', h, w)."""
        return vae.encode(video).latent_dist

    @staticmethod
    def decode_unclamped(vae: Any, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, z, F', h, w) -> video (B, 3, F, H, W) with a gradient everywhere (no clamp)."""
        raise NotImplementedError

    @staticmethod
    def decoder_side(vae: Any) -> list[torch.nn.Parameter]:
        """The parameters a decoder-only phase trains: everything after the latents."""
        raise NotImplementedError

    @staticmethod
    def widen(vae: Any, factor: int, generator: torch.Generator) -> Any:
        """A copy with a ``factor`` times wider decoder that decodes identically (see :func:`widen_decoder`)."""
        raise NotImplementedError

    @staticmethod
    def statistics(mean: torch.Tensor, std: torch.Tensor, overall_std: float) -> dict:
        """The config entries that normalise this VAE's latents, from the per-channel mean / std of its
        posterior means and the std over all their values."""
        raise NotImplementedError


class WanVAEKind(VAEKind):
    """``AutoencoderKLWan``: quant_conv gives the moments; per-channel ``latents_mean`` / ``latents_std``."""

    name = "wan"
    model_class = AutoencoderKLWan

    @staticmethod
    def moments_conv(vae: AutoencoderKLWan) -> tuple[torch.nn.Conv3d, int]:
        return vae.quant_conv, vae.config.z_dim

    @staticmethod
    def decode_unclamped(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
        return decode_unclamped(vae, z)

    @staticmethod
    def decoder_side(vae: AutoencoderKLWan) -> list[torch.nn.Parameter]:
        return [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]

    @staticmethod
    def widen(vae: AutoencoderKLWan, factor: int, generator: torch.Generator) -> AutoencoderKLWan:
        return widen_decoder(vae, factor, generator)

    @staticmethod
    def statistics(mean: torch.Tensor, std: torch.Tensor, overall_std: float) -> dict:
        return {
            "latents_mean": [round(v, 6) for v in mean.tolist()],
            "latents_std": [round(v, 6) for v in std.tolist()],
        }


class CogVideoXVAEKind(VAEKind):
    """``AutoencoderKLCogVideoX``: the encoder's conv_out gives the moments when there is no quant_conv
    (the releases have none); one ``scaling_factor`` = 1 / std of the latents, no shift."""

    name = "cogvideox"
    model_class = AutoencoderKLCogVideoX

    @staticmethod
    def moments_conv(vae: AutoencoderKLCogVideoX) -> tuple[torch.nn.Conv3d, int]:
        conv = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out.conv
        return conv, vae.config.latent_channels

    @staticmethod
    def decode_unclamped(vae: AutoencoderKLCogVideoX, z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z).sample  # its decode does not clamp

    @staticmethod
    def decoder_side(vae: AutoencoderKLCogVideoX) -> list[torch.nn.Parameter]:
        post = [] if vae.post_quant_conv is None else list(vae.post_quant_conv.parameters())
        return [*post, *vae.decoder.parameters()]

    @staticmethod
    def widen(vae: AutoencoderKLCogVideoX, factor: int, generator: torch.Generator) -> AutoencoderKLCogVideoX:
        raise ValueError(
            "widen_decoder is not supported for AutoencoderKLCogVideoX: its decoder has no width of its own "
            "(block_out_channels sets the encoder's and the decoder's), so a wider decoder is another VAE config"
        )

    @staticmethod
    def statistics(mean: torch.Tensor, std: torch.Tensor, overall_std: float) -> dict:
        return {"scaling_factor": round(1.0 / overall_std, 6)}


def _frames_as_images(video: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B * F, C, H, W): every frame an image of its own."""
    return video.transpose(1, 2).flatten(0, 1)


def _images_as_frames(images: torch.Tensor, frames: int) -> torch.Tensor:
    """(B * F, C, H, W) -> (B, C, F, H, W), the inverse of :func:`_frames_as_images`."""
    return images.unflatten(0, (-1, frames)).transpose(1, 2)


class FluxVAEKind(VAEKind):
    """FLUX.1's (and Z-Image's) image ``AutoencoderKL``: every frame is encoded and decoded as an image of its own
    (image datasets give one-frame clips); the moments come from the encoder's conv_out when there is no quant_conv
    (the releases have none); latents ``(mu - shift_factor) * scaling_factor``, one shift and one scale."""

    name = "flux"
    model_class = AutoencoderKL

    @staticmethod
    def moments_conv(vae: AutoencoderKL) -> tuple[torch.nn.Conv2d, int]:
        conv = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
        return conv, vae.config.latent_channels

    @staticmethod
    def posterior(vae: AutoencoderKL, video: torch.Tensor) -> DiagonalGaussianDistribution:
        # The moments laid out as a video's, so sampling and the callers' (B, z, F, h, w) view stay the same. Its
        # KL then sums over (z, F, h) and averages over w as well: a constant factor on a term weighted 1e-6.
        moments = vae.encode(_frames_as_images(video)).latent_dist.parameters  # (B * F, 2z, h, w)
        return DiagonalGaussianDistribution(_images_as_frames(moments, video.shape[2]))

    @staticmethod
    def decode_unclamped(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
        return _images_as_frames(vae.decode(_frames_as_images(z)).sample, z.shape[2])  # its decode does not clamp

    @staticmethod
    def decoder_side(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
        post = [] if vae.post_quant_conv is None else list(vae.post_quant_conv.parameters())
        return [*post, *vae.decoder.parameters()]

    @staticmethod
    def widen(vae: AutoencoderKL, factor: int, generator: torch.Generator) -> AutoencoderKL:
        raise ValueError("widen_decoder is not supported for AutoencoderKL: train a wider decoder config instead")

    @staticmethod
    def statistics(mean: torch.Tensor, std: torch.Tensor, overall_std: float) -> dict:
        # Every channel holds as many values, so the mean over all values is the channels' mean.
        return {"shift_factor": round(float(mean.mean()), 6), "scaling_factor": round(1.0 / overall_std, 6)}


VAE_KINDS: dict[str, type[VAEKind]] = {kind.name: kind for kind in (WanVAEKind, CogVideoXVAEKind, FluxVAEKind)}


def vae_kind(name: str) -> type[VAEKind]:
    """The :class:`VAEKind` of ``VAETrainConfig.vae_class`` ``name``."""
    try:
        return VAE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown vae_class {name!r}; choose one of {sorted(VAE_KINDS)}") from None


def kind_of(vae: torch.nn.Module) -> type[VAEKind]:
    """The :class:`VAEKind` of a VAE instance."""
    for kind in VAE_KINDS.values():
        if isinstance(vae, kind.model_class):
            return kind
    raise TypeError(f"no VAE training support for {type(vae).__name__}")


def kind_of_folder(folder: str | Path) -> type[VAEKind]:
    """The :class:`VAEKind` of a diffusers VAE folder, from its config's ``_class_name`` (Wan when absent)."""
    name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name", AutoencoderKLWan.__name__)
    for kind in VAE_KINDS.values():
        if kind.model_class.__name__ == name:
            return kind
    raise ValueError(f"{folder}: no VAE training support for {name}")


def _trainable_parameters(
    vae: AutoencoderKLWan | AutoencoderKLCogVideoX, decoder_only: bool
) -> list[torch.nn.Parameter]:
    """Every parameter, or only the decoder side's (the rest frozen) when ``decoder_only``."""
    if not decoder_only:
        return list(vae.parameters())
    vae.requires_grad_(False)
    decoder_side = kind_of(vae).decoder_side(vae)
    for parameter in decoder_side:
        parameter.requires_grad_(True)
    return decoder_side


def train_vae(config: VAETrainConfig, resume: bool = True) -> Path:
    """Train until ``max_train_steps``; returns the folder of the last checkpoint (diffusers layout)."""
    kind = vae_kind(config.vae_class)
    if config.widen_decoder > 1 and kind is not WanVAEKind:
        kind.widen(None, config.widen_decoder, torch.Generator())  # raises: say so before any work
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vae_train_config.json").write_text(json.dumps(asdict(config), indent=2))
    latest = out / "checkpoint-latest"
    resuming = resume and latest.is_dir()
    run = _start_run(config, latest if resuming else config.init_from)
    step = _restore(run, latest) if resuming else 0
    _train_steps(run, step, latest)
    return latest


def _start_run(config: VAETrainConfig, source: Path | str | None) -> _VAERun:
    """The VAE from ``source`` (a checkpoint, ``init_from``, or None: a fresh one), its optimizer, schedule and data."""
    torch.manual_seed(config.seed)
    kind = vae_kind(config.vae_class)
    vae = kind.model_class.from_pretrained(source) if source else _fresh_vae(config)
    if config.widen_decoder > 1 and source == config.init_from:  # not when resuming: the checkpoint is wide already
        vae = kind.widen(vae, config.widen_decoder, torch.Generator().manual_seed(config.seed))
    vae.train()
    trainable = _trainable_parameters(vae, config.decoder_only)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps
    )
    dataset, sampler = _data(config)
    crop_generator = torch.Generator().manual_seed(config.seed)
    return _VAERun(config, vae, trainable, optimizer, scheduler, dataset, sampler, crop_generator)


def _train_steps(run: _VAERun, step: int, folder: Path) -> None:
    """Optimizer steps from ``step`` to ``max_train_steps`` (or ``stop_after_steps``), checkpointing to ``folder``."""
    config = run.config
    # The loader's own generator: creating an iterator then draws nothing from the global RNG,
    # which the posterior sampling uses and a resume restores.
    loader = DataLoader(
        run.dataset,
        batch_sampler=run.sampler,
        collate_fn=collate,
        num_workers=config.num_workers,
        multiprocessing_context=worker_context(config.num_workers),
        generator=torch.Generator().manual_seed(config.seed),
    )
    bar = tqdm(total=config.max_train_steps, initial=step, desc="vae")
    last = min(config.max_train_steps, config.stop_after_steps or config.max_train_steps)
    while step < last:
        for batch in loader:
            loss = _optimizer_step(run, batch["pixel_values"])
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % config.checkpointing_steps == 0 or step == last:
                _save(run, step, folder)
            if step >= last:
                break
    bar.close()


def _optimizer_step(run: _VAERun, video: torch.Tensor) -> torch.Tensor:
    """One step on a batch ``video`` (B, 3, F, H, W): the crops, the loss, its clipped gradient; returns the loss."""
    config = run.config
    if config.crop_size:
        video = foreground_crops(video, config.crop_size, run.crop_generator)
    loss = reconstruction_loss(
        run.vae,
        video,
        config.kl_weight,
        config.foreground_weight,
        frozen_encoder=config.decoder_only,
        l1_weight=config.l1_weight,
        latent_noise=config.latent_noise,
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.trainable, 1.0)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return loss


def fit_latent_statistics(
    vae_folder: str | Path, train_data_meta: str, max_clips: int = 256, n_frames: int = 17, sample_size: int = 64
) -> dict:
    """Measure the statistics of the posterior means over a dataset; write them to the config.

    For a CogVideoX VAE (found from the folder's config) that is one ``scaling_factor``: 1 / the
    std of every latent value (its DiTs take ``mu * scaling_factor``, no shift); the return value
    then holds ``scaling_factor`` and ``clips``. For FLUX.1's ``AutoencoderKL`` it is the mean of every
    latent value as ``shift_factor`` and that ``scaling_factor`` (its DiTs take ``(mu - shift) * scale``).
    Wan DiTs expect normalised latents ``(mu - latents_mean) / latents_std`` of about unit
    variance. A newly trained VAE has its own statistics, not the Wan2.1 ones its config was
    created with, so ``latents_mean`` / ``latents_std`` in ``vae_folder/config.json`` are
    replaced by the measured ones. Returns ``{"latents_mean": [...], "latents_std": [...], "clips": n}``
    (n: the clips read).
    """
    folder = Path(vae_folder)
    kind = kind_of_folder(folder)
    vae = kind.model_class.from_pretrained(str(folder)).eval()
    probe = VAETrainConfig(
        output_dir=str(folder),
        train_data_meta=train_data_meta,
        video_sample_size=sample_size,
        video_sample_n_frames=n_frames,
    )
    dataset, _ = _data(probe)
    total = total_sq = None
    count = used = 0
    all_sum = all_sq = 0.0
    clips = min(max_clips, len(dataset))
    with torch.no_grad(), CPUFastPaths():  # one clip at a time: the batch-1 convolutions' fast route
        for index in tqdm(range(clips), desc="latent statistics"):
            sample = dataset[index]
            if sample is None:  # an unreadable clip with no usable substitute
                continue
            video = sample["pixel_values"][None]  # (1, 3, F, H, W)
            mu = kind.posterior(vae, video).mode().double()  # (1, z, F', h, w)
            per_channel = mu.transpose(0, 1).flatten(1)  # (z, N)
            total = per_channel.sum(1) if total is None else total + per_channel.sum(1)
            total_sq = per_channel.pow(2).sum(1) if total_sq is None else total_sq + per_channel.pow(2).sum(1)
            count += per_channel.shape[1]
            all_sum += per_channel.sum().item()
            all_sq += per_channel.pow(2).sum().item()
            used += 1
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    values = count * mean.numel()
    overall_std = max(all_sq / values - (all_sum / values) ** 2, 1e-12) ** 0.5
    stats = kind.statistics(mean, std, overall_std)
    config = json.loads((folder / "config.json").read_text())
    config.update(stats)
    with atomic_path(folder / "config.json") as temporary:  # a crash must not leave the VAE without a config
        temporary.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {**stats, "clips": used}
