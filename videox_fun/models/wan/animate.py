"""Wan2.2-Animate-14B: the Wan2.1 I2V DiT driven by a pose video and a face video.

The release (Wan-AI's ``WanAnimateModel``) keeps the I2V main stack (CLIP image branch included) and adds,
in the released key names:

- ``pose_patch_embedding``: a Conv3d (16 latent channels -> dim) over the pose video's latents, added to the
  video tokens of every latent frame after the first (frame 0 is the reference image);
- ``motion_encoder``: the LIA encoder (StyleGAN-style equalised convolutions, ``enc.net_app.convs.*`` and
  ``enc.fc.*``) that turns each 512 x 512 face crop into a motion code, expressed in the orthonormal basis of
  ``dec.direction``: one ``motion_encoder_dim`` vector per video frame;
- ``face_encoder``: causal temporal convolutions (two of stride 2: 4 video frames per latent frame) that turn
  the motion vectors into ``face_encoder_num_heads`` tokens per latent frame, plus a learnt padding token;
- ``face_adapter.fuser_blocks.N``: cross-attention from the video tokens of each latent frame to that frame's
  face tokens, its output added after main block ``N * face_adapter_interval`` (0, 5, ..., 35 in the release).

The main blocks, head, embeddings and rope are :class:`WanTransformer3DModel`'s. The pose is added in
``embed_video``, the face adapter runs in the block-runner seam (``run_blocks``), as VACE's hints do, so step
caches and memory modes attach as to any Wan model; a cached step skips the face adapter with the blocks.
Under sequence parallelism each rank's face blocks take its chunk of the video tokens (placed in the clip through
``sharded_side_streams``) and every frame's face tokens.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..attention import attention
from .keys import CLIP_DIM
from .transformer import WanLayerNorm, WanRMSNorm, WanTransformer3DModel

logger = logging.getLogger(__name__)

ANIMATE_KEY = "motion_encoder.dec.direction.weight"  # present in every Animate checkpoint (diffusers keys on it too)
# LIA's appearance-encoder widths by feature-map resolution (512 x 512 crops: 32 channels, up to 512 at 32 x 32).
LIA_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)  # StyleGAN's anti-aliasing filter before each stride-2 convolution
LEAKY_SLOPE, LEAKY_GAIN = 0.2, math.sqrt(2.0)  # StyleGAN's leaky ReLU, rescaled to keep unit variance


def is_animate_config(config: Mapping[str, Any]) -> bool:
    """Whether a transformer config describes a Wan-Animate model (``model_type: animate``)."""
    return config.get("model_type") == "animate"


def animate_config_from_weights(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model_type": "animate"}`` when a checkpoint holds the motion encoder and its config does not say so.

    The released config.json's fields are Wan's plus ``motion_encoder_dim`` / ``use_img_emb``; whatever its
    ``model_type``, the weights tell an Animate checkpoint apart. Returns {} otherwise.
    """
    if ANIMATE_KEY not in state or is_animate_config(config):
        return {}
    logger.info("checkpoint carries Wan-Animate's motion encoder; loading it as model_type animate")
    return {"model_type": "animate"}


# ----------------------------------------------------------------------------------------
# The motion encoder (LIA, as the release trims it: the appearance encoder and the motion basis)
# ----------------------------------------------------------------------------------------
class EqualConv2d(nn.Module):
    """A bias-free convolution with StyleGAN's equalised learning rate: the weight is stored at unit scale and
    multiplied by 1 / sqrt(fan_in) when used (the release's checkpoints hold the unscaled weight)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = (in_channels * kernel_size**2) ** -0.5
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H', W')."""
        return F.conv2d(x, self.weight * self.scale, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """A linear layer with StyleGAN's equalised learning rate (weight scaled by 1 / sqrt(in_features) when used)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = in_features**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) -> (N, out)."""
        return F.linear(x, self.weight * self.scale, self.bias)


class BiasLeakyReLU(nn.Module):
    """StyleGAN's "fused" leaky ReLU: a per-channel bias, leaky ReLU (0.2), times sqrt(2).

    The bias is stored (1, C, 1, 1), as the release's checkpoints hold it.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> (N, C, H, W)."""
        return F.leaky_relu(x + self.bias.to(x.dtype), LEAKY_SLOPE) * LEAKY_GAIN


class Blur(nn.Module):
    """StyleGAN's FIR low-pass filter (outer product of ``BLUR_TAPS``, normalised), applied per channel.

    Its taps are a saved buffer (``kernel``) because the release saves them: its checkpoints hold the key.
    """

    def __init__(self, pad: tuple[int, int]):
        super().__init__()
        taps = torch.tensor(BLUR_TAPS)
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("kernel", kernel / kernel.sum())
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> (N, C, H + sum(pad) - 3, W + sum(pad) - 3)."""
        channels = x.shape[1]
        x = F.pad(x, (*self.pad, *self.pad))
        # A true convolution (flipped taps), as the release's upfirdn2d; one filter per channel.
        weight = self.kernel.flip(0, 1).to(x.dtype)[None, None].expand(channels, 1, -1, -1)
        return F.conv2d(x, weight, groups=channels)


def conv_layer(
    in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False, activate: bool = True
) -> nn.Sequential:
    """The release's ``ConvLayer``: [Blur when downsampling], EqualConv2d, [BiasLeakyReLU when activated].

    A Sequential, because its indices are the checkpoint's key names (``conv2.0.kernel``, ``conv2.1.weight``...).
    """
    layers: list[nn.Module] = []
    if downsample:
        # Pad so the blur and the stride-2 convolution together halve the size exactly.
        extra = len(BLUR_TAPS) - 2 + kernel_size - 1
        layers.append(Blur(((extra + 1) // 2, extra // 2)))
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=2))
    else:
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))
    if activate:
        layers.append(BiasLeakyReLU(out_channels))
    return nn.Sequential(*layers)


class DownResBlock(nn.Module):
    """Two 3 x 3 convolutions, the second halving the size, beside a 1 x 1 halving skip; the sum is rescaled by
    1 / sqrt(2) to keep unit variance."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv_layer(in_channels, in_channels, 3)
        self.conv2 = conv_layer(in_channels, out_channels, 3, downsample=True)
        self.skip = conv_layer(in_channels, out_channels, 1, downsample=True, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


def lia_channels(channels: Mapping[Any, int] | None) -> dict[int, int]:
    """Widths by resolution, keys as ints (a config.json gives them as strings); the release's when None."""
    return dict(LIA_CHANNELS) if channels is None else {int(size): int(width) for size, width in channels.items()}


class AppearanceEncoder(nn.Module):
    """LIA's ``net_app``: a 1 x 1 convolution, halving residual blocks down to 4 x 4, and a 4 x 4 convolution to
    one ``style_dim`` feature per image (``convs.0`` ... ``convs.N``)."""

    def __init__(self, size: int, style_dim: int, channels: dict[int, int]):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"motion_encoder_size must be a power of two >= 8, got {size}")
        sizes = [size >> i for i in range(int(math.log2(size)) - 1)]  # size, size/2, ..., 4
        missing = [s for s in sizes if s not in channels]
        if missing:
            raise ValueError(f"motion_encoder_channels gives no width for resolutions {missing}")
        self.convs = nn.ModuleList([conv_layer(3, channels[size], 1)])
        for resolution in sizes[1:]:
            self.convs.append(DownResBlock(channels[resolution * 2], channels[resolution]))
        self.convs.append(EqualConv2d(channels[4], style_dim, 4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, size, size) -> (N, style_dim)."""
        for conv in self.convs:
            images = conv(images)
        return images.flatten(1)  # the last convolution leaves 1 x 1


class MotionFeatureEncoder(nn.Module):
    """LIA's ``enc``: appearance features, then five equalised linears (no activation between them, as released)
    down to ``motion_dim`` coefficients."""

    def __init__(self, size: int, style_dim: int, motion_dim: int, channels: dict[int, int]):
        super().__init__()
        self.net_app = AppearanceEncoder(size, style_dim, channels)
        linears = [EqualLinear(style_dim, style_dim) for _ in range(4)]
        self.fc = nn.Sequential(*linears, EqualLinear(style_dim, motion_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, size, size) -> motion coefficients (N, motion_dim)."""
        return self.fc(self.net_app(images))


class MotionDirections(nn.Module):
    """LIA's learnt motion basis (``dec.direction``): ``motion_dim`` directions of ``out_dim``, orthonormalised by a
    QR decomposition when used; a motion code is the coefficient-weighted sum of the directions."""

    def __init__(self, out_dim: int, motion_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, motion_dim))

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        """coefficients (N, motion_dim) -> motion vectors (N, out_dim), in fp32 (QR wants it)."""
        # The release nudges the weight by 1e-8 (in its own dtype) before the QR; kept for the same basis.
        basis = torch.linalg.qr((self.weight + 1e-8).float())[0]  # (out_dim, motion_dim), orthonormal columns
        return coefficients.float() @ basis.T


class MotionEncoder(nn.Module):
    """Face crops -> one motion vector each (the release's LIA ``Generator``, trimmed to its motion path)."""

    def __init__(self, size: int, style_dim: int, motion_dim: int, out_dim: int, channels: dict[int, int]):
        super().__init__()
        self.size = size
        self.enc = MotionFeatureEncoder(size, style_dim, motion_dim, channels)
        self.dec = nn.ModuleDict({"direction": MotionDirections(out_dim, motion_dim)})

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """faces (N, 3, size, size) in [-1, 1] -> motion vectors (N, out_dim) in fp32."""
        return self.dec["direction"](self.enc(faces))


# ----------------------------------------------------------------------------------------
# The face encoder and the face adapter
# ----------------------------------------------------------------------------------------
class CausalConv1d(nn.Module):
    """A temporal convolution that sees only the past: the first frame is repeated kernel_size - 1 times in front."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.pad = kernel_size - 1
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T) -> (B, C_out, T') with T' = T for stride 1, (T - 1) // stride + 1 otherwise."""
        return self.conv(F.pad(x, (self.pad, 0), mode="replicate"))


class FaceEncoder(nn.Module):
    """Motion vectors per video frame -> ``num_heads`` face tokens + one learnt padding token per latent frame.

    ``conv1_local`` gives each head its own ``hidden_dim`` channels; two stride-2 causal convolutions then fold
    4 video frames into one latent frame (4k + 1 frames -> k + 1), each followed by LayerNorm and SiLU.
    """

    def __init__(self, in_dim: int, dim: int, hidden_dim: int = 1024, num_heads: int = 4, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.conv1_local = CausalConv1d(in_dim, hidden_dim * num_heads)
        self.conv2 = CausalConv1d(hidden_dim, hidden_dim, stride=2)
        self.conv3 = CausalConv1d(hidden_dim, hidden_dim, stride=2)
        self.norm1, self.norm2, self.norm3 = (WanLayerNorm(hidden_dim, eps, elementwise_affine=False) for _ in range(3))
        self.out_proj = nn.Linear(hidden_dim, dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """motion (B, T, in_dim) -> face tokens (B, T', num_heads + 1, dim), T' = (T - 1) // 4 + 1."""
        batch = motion.shape[0]
        x = self.conv1_local(motion.transpose(1, 2))  # (B, heads * hidden, T)
        x = x.unflatten(1, (self.num_heads, -1)).flatten(0, 1)  # (B * heads, hidden, T)
        x = F.silu(self.norm1(x.transpose(1, 2)))  # (B * heads, T, hidden)
        for conv, norm in ((self.conv2, self.norm2), (self.conv3, self.norm3)):
            x = F.silu(norm(conv(x.transpose(1, 2)).transpose(1, 2)))  # (B * heads, T', hidden)
        tokens = self.out_proj(x).unflatten(0, (batch, self.num_heads)).transpose(1, 2)  # (B, T', heads, dim)
        padding = self.padding_tokens.to(tokens.dtype).expand(batch, tokens.shape[1], 1, -1)  # (B, T', 1, dim)
        return torch.cat([tokens, padding], dim=2)


class FaceBlock(nn.Module):
    """Cross-attention of each latent frame's video tokens to that frame's face tokens (``fuser_blocks.N``).

    Keys and values come from one fused projection (``linear1_kv``); q and k get an RMSNorm per head.
    """

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, head_dim = num_heads, dim // num_heads
        self.linear1_kv = nn.Linear(dim, 2 * dim)
        self.linear1_q = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)
        self.q_norm = WanRMSNorm(head_dim, eps)
        self.k_norm = WanRMSNorm(head_dim, eps)
        self.pre_norm_feat = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.pre_norm_motion = WanLayerNorm(dim, eps, elementwise_affine=False)

    def forward(
        self, x: torch.Tensor, face: torch.Tensor, first_token: int = 0, frame_tokens: int | None = None
    ) -> torch.Tensor:
        """x (B, L, C) video tokens ``first_token`` to ``first_token + L - 1`` of the clip, frame-major with
        ``frame_tokens`` per latent frame (default: the whole clip, L / T each); face (B, T, N, C) tokens of the
        clip's T latent frames -> (B, L, C). Tokens past the clip's end (a sequence split's padding) get zeros.

        A chunk of the clip (sequence parallelism) may start and end inside a frame: its queries are padded to
        whole frames so each frame is still one attention to its own face tokens, then the padding is cut.
        """
        frames = face.shape[1]
        frame_tokens = frame_tokens or x.shape[1] // frames
        inside = max(0, min(x.shape[1], frames * frame_tokens - first_token))  # tokens of the clip, not padding
        if inside == 0:
            return torch.zeros_like(x)
        first_frame, lead = divmod(first_token, frame_tokens)  # lead: tokens of the first frame before the chunk
        span = (lead + inside - 1) // frame_tokens + 1  # latent frames the chunk touches
        kv = self.linear1_kv(self.pre_norm_motion(face[:, first_frame : first_frame + span]))  # (B, span, N, 2C)
        k, v = kv.unflatten(-1, (2, self.num_heads, -1)).unbind(-3)  # (B, span, N, H, D) each
        k = self.k_norm(k)
        q = self.q_norm(self.linear1_q(self.pre_norm_feat(x[:, :inside])).unflatten(-1, (self.num_heads, -1)))
        q = F.pad(q, (0, 0, 0, 0, lead, span * frame_tokens - lead - inside))  # (B, span * frame_tokens, H, D)
        # One attention per latent frame: its frame_tokens tokens to its N face tokens.
        q = q.unflatten(1, (span, frame_tokens)).flatten(0, 1)  # (B * span, frame_tokens, H, D)
        out = attention(q, k.flatten(0, 1).to(q.dtype), v.flatten(0, 1).to(q.dtype))  # (B * span, frame_tokens, H, D)
        out = out.flatten(2).unflatten(0, (-1, span)).flatten(1, 2)[:, lead : lead + inside]  # (B, inside, C)
        return F.pad(self.linear2(out), (0, 0, 0, x.shape[1] - inside))  # (B, L, C)


class FaceAdapter(nn.Module):
    """The face blocks (``face_adapter.fuser_blocks.N``), one per ``face_adapter_interval`` main blocks."""

    def __init__(self, dim: int, num_heads: int, num_blocks: int, eps: float = 1e-6):
        super().__init__()
        self.fuser_blocks = nn.ModuleList(FaceBlock(dim, num_heads, eps) for _ in range(num_blocks))


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------
@dataclass
class _AnimateCall:
    """What one forward pass hands to ``embed_video`` and the block runner besides their own arguments."""

    pose: torch.Tensor  # (B, 16, F - 1, H, W) pose latents for the frames after the reference
    face: torch.Tensor  # (B, F, N + 1, C) face tokens per latent frame (zeros for the reference frame)
    num_tokens: int = 0  # video tokens of the whole clip, set once the video is embedded
    # The clip index of the block runner's first token while it holds a chunk of them (sequence parallelism),
    # else None (the runner holds the whole clip).
    first_token: int | None = None


class WanAnimateTransformer3DModel(WanTransformer3DModel):
    """Wan2.2-Animate: the Wan I2V DiT with pose, motion and face modules. Constructor fields are those of the
    released ``config.json`` (Wan's, ``motion_encoder_dim``, ``use_img_emb``) with its defaults, plus the
    widths the release hard-codes (``motion_*``, ``face_*``), so tests can build it small."""

    _no_split_modules = ("WanAttentionBlock", "FaceBlock", "DownResBlock")
    # Regional compile compiles the face blocks too (one graph for all of them, as for the main blocks).
    _repeated_blocks = ("WanAttentionBlock", "FaceBlock")
    # The face blocks group the runner's tokens by latent frame: under sequence parallelism they must learn
    # where the rank's chunk sits in the clip (the face tokens themselves are few: every rank keeps them whole).
    _sequence_side_streams = "sharded_side_streams"
    # fp8 stores the face blocks' linears too: like the main blocks' attention they act on every video token and
    # add to the residual stream, and they hold 839M of the release's 17.3B weights. The motion and face encoders
    # (40M, convolutions and equalised layers that run once per video) stay in high precision.
    _fp8_side_modules = ("face_adapter",)
    original_class_name = "WanAnimateModel"
    # The base constructor registers these Fun fields too: an Animate config carries none of them.
    ignore_for_config = (
        "add_ref_conv",
        "in_dim_ref_conv",
        "add_control_adapter",
        "in_dim_control_adapter",
        "downscale_factor_control_adapter",
    )

    @register_to_config
    def __init__(
        self,
        model_type: str = "animate",
        patch_size: tuple[int, int, int] = (1, 2, 2),
        text_len: int = 512,
        in_dim: int = 36,
        dim: int = 5120,
        ffn_dim: int = 13824,
        freq_dim: int = 256,
        text_dim: int = 4096,
        out_dim: int = 16,
        num_heads: int = 40,
        num_layers: int = 40,
        window_size: tuple[int, int] = (-1, -1),
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        motion_encoder_dim: int = 512,
        use_img_emb: bool = True,
        rope_theta: float = 10000.0,
        image_dim: int | None = CLIP_DIM,
        motion_encoder_size: int = 512,
        motion_style_dim: int = 512,
        motion_dim: int = 20,
        motion_encoder_channels: Mapping[Any, int] | None = None,
        face_encoder_hidden_dim: int = 1024,
        face_encoder_num_heads: int = 4,
        face_adapter_interval: int = 5,
    ):
        if model_type not in ("animate", "i2v"):  # VideoX-Fun's class hard-codes i2v: read as the same model
            raise ValueError(f"a Wan-Animate model has model_type animate, got {model_type!r}")
        if num_layers % face_adapter_interval:
            raise ValueError(
                f"num_layers {num_layers} is not a multiple of face_adapter_interval {face_adapter_interval}: the "
                "release places one face block after every face_adapter_interval-th main block"
            )
        super().__init__(
            model_type="i2v" if use_img_emb else "t2v",
            patch_size=patch_size, text_len=text_len, in_dim=in_dim, dim=dim, ffn_dim=ffn_dim, freq_dim=freq_dim,
            text_dim=text_dim, out_dim=out_dim, num_heads=num_heads, num_layers=num_layers, window_size=window_size,
            qk_norm=qk_norm, cross_attn_norm=cross_attn_norm, eps=eps, rope_theta=rope_theta, image_dim=image_dim,
        )  # fmt: skip
        # The base class's own registration just recorded its model_type: the config keeps Animate's.
        self.register_to_config(model_type="animate")
        # The pose video is VAE-encoded like the noise: as many channels as the latents (out_dim).
        self.pose_patch_embedding = nn.Conv3d(out_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        channels = lia_channels(motion_encoder_channels)
        self.motion_encoder = MotionEncoder(
            motion_encoder_size, motion_style_dim, motion_dim, motion_encoder_dim, channels
        )
        self.face_encoder = FaceEncoder(motion_encoder_dim, dim, face_encoder_hidden_dim, face_encoder_num_heads, eps)
        self.face_adapter = FaceAdapter(dim, num_heads, num_layers // face_adapter_interval, eps)
        self._animate_call: _AnimateCall | None = None

    @property
    def face_layers(self) -> list[int]:
        """The main layers each followed by a face block, in face-block order."""
        return list(range(0, self.config.num_layers, self.config.face_adapter_interval))

    def encode_face(self, face_pixel_values: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Face crops (B, 3, T, S, S) in [-1, 1] -> face tokens (B, (T - 1) // 4 + 2, N + 1, C).

        The motion encoder takes ``batch_size`` crops at a time (the release's 8: its activations at 512 x 512
        are large). A zero frame goes in front, for the reference image's latent frame.
        """
        batch, _, frames, height, width = face_pixel_values.shape
        size = self.config.motion_encoder_size
        if (height, width) != (size, size):
            raise ValueError(f"face crops are {height}x{width}, the motion encoder takes {size}x{size}")
        crops = face_pixel_values.transpose(1, 2).flatten(0, 1)  # (B * T, 3, S, S)
        dtype = self.pose_patch_embedding.weight.dtype
        motion = torch.cat([self.motion_encoder(chunk.to(dtype)) for chunk in crops.split(batch_size)])  # (B*T, M)
        tokens = self.face_encoder(motion.to(dtype).unflatten(0, (batch, frames)))  # (B, T', N + 1, C)
        return F.pad(tokens, (0, 0, 0, 0, 1, 0))  # (B, T' + 1, N + 1, C)

    @contextlib.contextmanager
    def _animating(self, pose: torch.Tensor, face: torch.Tensor) -> Iterator[_AnimateCall]:
        """Hand the pose latents and face tokens to ``embed_video`` and ``run_blocks`` for one forward pass (their
        signatures are the base's, which runtime hooks call)."""
        self._animate_call = _AnimateCall(pose, face)
        try:
            yield self._animate_call
        finally:
            self._animate_call = None

    @contextlib.contextmanager
    def sharded_side_streams(self, shard: Callable[[torch.Tensor, int], torch.Tensor]) -> Iterator[None]:
        """While the block runner runs on this rank's chunk of the video tokens: tell the face blocks which clip
        token the chunk starts at (sequence parallelism's seam; ``shard`` cuts a tensor along its token dimension
        as the tokens are cut). The clip's token numbers are cut that way; the split pads with zeros, so they
        count from 1 and a 0 is padding."""
        call = self._animate_call
        if call is None:  # no forward pass under way: nothing to place
            yield
            return
        numbers = shard(torch.arange(1, call.num_tokens + 1)[None], 1)[0]  # (chunk,) 1-based clip positions
        real = numbers[numbers > 0]
        first = int(real[0]) - 1 if real.numel() else call.num_tokens  # all padding: it starts past the end
        if not torch.equal(real, torch.arange(first + 1, first + 1 + real.numel())):
            raise ValueError("Wan-Animate's face blocks take a contiguous chunk of the clip's tokens per rank")
        call.first_token = first
        try:
            yield
        finally:
            call.first_token = None

    def _call(self) -> _AnimateCall:
        if self._animate_call is None:
            raise RuntimeError("a Wan-Animate model's blocks run inside its forward, which gives them pose and face")
        return self._animate_call

    def embed_video(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        camera: torch.Tensor | None,
        ref_latent: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[int, int, int], int]:
        """The base's tokens (B, L, C) with the pose tokens added to every latent frame after the first."""
        call = self._call()
        tokens, grid, prefix = super().embed_video(x, y, camera, ref_latent)
        dtype = self.pose_patch_embedding.weight.dtype
        pose = self.pose_patch_embedding(call.pose.to(dtype)).flatten(2).transpose(1, 2)  # (B, (F-1) h w, C)
        per_frame = grid[1] * grid[2]
        call.num_tokens = tokens.shape[1]
        return torch.cat([tokens[:, :per_frame], tokens[:, per_frame:] + pose], dim=1), grid, prefix

    def run_blocks(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None,
        rope: torch.Tensor,
        context_bias: torch.Tensor | None = None,
        blocks: slice = slice(None),
    ) -> torch.Tensor:
        """The main stack (B, L, C) -> (B, L, C), or its ``blocks`` slice, each face layer followed by its face
        block's residual."""
        call = self._call()
        if call.first_token is None and x.shape[1] != call.num_tokens:
            raise ValueError(
                f"the block runner got {x.shape[1]} of the clip's {call.num_tokens} tokens: a hook that splits the "
                "tokens must say where its chunk starts (through sharded_side_streams)"
            )
        # The face blocks' place of these tokens in the clip: their first token's index, tokens per latent frame.
        place = (call.first_token or 0, call.num_tokens // call.face.shape[1])
        interval = self.config.face_adapter_interval
        start, stop, _ = blocks.indices(len(self.blocks))
        for index in range(start, stop):
            x = super().run_blocks(x, e0, context, context_img, rope, context_bias, blocks=slice(index, index + 1))
            if index % interval:
                continue
            face_block = self.face_adapter.fuser_blocks[index // interval]
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = x + self._gradient_checkpointing_func(face_block, x, call.face, *place)
            else:
                x = x + face_block(x, call.face, *place)
        return x

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        pose_latents: torch.Tensor | None = None,
        face_pixel_values: torch.Tensor | None = None,
        motion_batch_size: int = 8,
    ) -> torch.Tensor:
        """Predict the flow velocity of x (B, 16, F, H, W), whose latent frame 0 is the reference image.

        y: (B, 20, F, H, W) 4 mask + 16 conditioning-latent channels (reference, then the carried-over or
        background frames); clip_fea: (B, 257, 1280) CLIP tokens of the reference; pose_latents:
        (B, 16, F - 1, H, W) latents of the pose video; face_pixel_values: (B, 3, 4(F - 2) + 1, 512, 512) face
        crops in [-1, 1] (all -1 for the release's face-free guidance pass). Returns (B, out_dim, F, H, W).
        """
        if pose_latents is None or face_pixel_values is None:
            raise ValueError(
                "a Wan-Animate model needs pose_latents (B, 16, F - 1, H, W) and face_pixel_values "
                f"(B, 3, T, {self.config.motion_encoder_size}, {self.config.motion_encoder_size})"
            )
        frames = x.shape[2]
        if pose_latents.shape[2:] != (frames - 1, *x.shape[3:]):
            raise ValueError(
                f"pose latents cover {tuple(pose_latents.shape[2:])} (frames, height, width); the latents "
                f"{tuple(x.shape[2:])} less the reference frame need {(frames - 1, *x.shape[3:])}"
            )
        face = self.encode_face(face_pixel_values, motion_batch_size)
        if face.shape[1] != frames:
            raise ValueError(
                f"{face_pixel_values.shape[2]} face frames make {face.shape[1] - 1} latent frames, the latents have "
                f"{frames - 1} after the reference: give 4 * {frames - 2} + 1 = {4 * (frames - 2) + 1} face frames"
            )
        with self._animating(pose_latents, face):
            return super().forward(x, t, context, clip_fea, y)
