"""The differentiable rewards of reward fine-tuning (``--reward_fn``), by name, with their keyword arguments.

Every reward takes decoded videos ``(B, 3, F, H, W)`` in [-1, 1] (with gradients) and the prompts,
and returns one reward per video ``(B,)`` (the mean over its frames), higher is better. Each has its
own ``max_reward`` and ``loss_scale`` defaults, VideoX-Fun's (the loss is
``mean(|r - max_reward| * loss_scale)``), which ``--max_reward`` / ``--loss_scale`` or
``--reward_fn_kwargs`` override.

- ``toy_colour`` / ``toy_motion``: the toy world's rewards (:mod:`videox_fun.toyworld.rewards`): no download;
- ``PickScoreReward``: PickScore (a CLIP-H model scoring image-prompt agreement) through transformers
  (``{"model_path": ..., "processor_name_or_path": ...}``);
- ``AestheticReward``: the LAION aesthetic predictor v2 (CLIP ViT-L/14 image embedding -> MLP;
  ``{"encoder_path": ..., "predictor_path": ...}``) or v2.5 (SigLIP so400m + head, ``"version": "v2.5"``);
- ``HPSReward``: HPS v2.0 / v2.1 (open_clip ViT-H-14 checkpoints, converted to transformers' CLIP here;
  ``{"model_path": "HPS_v2.1_compressed.pt", "version": "v2.1", "processor_name_or_path": ...}``);
- ``MPSReward``: MPS (CLIP-H + its condition-aware head; ``{"model_path": "MPS_overall.pth",
  "processor_name_or_path": ...}``).

Nothing is downloaded at run time: the weights are files and folders the user has (a folder may also be
a Hugging Face id already in the local cache); one that is not there is one clear line naming its
argument. Frames are resized (and normalised) as each model's VideoX-Fun preprocessing, differentiably.
Short names are accepted too (``pickscore``, ``hpsv2``, ``aesthetic``, ``mps``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

BUILTIN_REWARDS = ("toy_colour", "toy_motion")
EXTERNAL_REWARDS = ("PickScoreReward", "HPSReward", "AestheticReward", "MPSReward")
REWARD_NAMES = BUILTIN_REWARDS + EXTERNAL_REWARDS
ALIASES = {"pickscore": "PickScoreReward", "hps": "HPSReward", "hpsv2": "HPSReward", "aesthetic": "AestheticReward",
           "mps": "MPSReward", "toy_color": "toy_colour"}  # fmt: skip
# CLIP's pixel statistics (openai/clip-vit-large-patch14's and laion CLIP-H's preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # google/siglip-so400m-patch14-384's preprocessor_config.json
# The CLIP-H folder whose tokenizer (and, for MPS, config) PickScore, HPS and MPS use, as VideoX-Fun names it.
CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
AESTHETIC_FILES = {"v2": "sac+logos+ava1-l14-linearMSE.pth", "v2.5": "aesthetic_predictor_v2_5.pth"}
AESTHETIC_ENCODERS = {"v2": "openai/clip-vit-large-patch14", "v2.5": "google/siglip-so400m-patch14-384"}
# MPS's default condition: every preference dimension (VideoX-Fun's MPSReward.condition).
MPS_CONDITION = (
    "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, "
    "structure, instance, texture, quantity, attributes, position, number, location, word, things."
)
CLIP_CONTEXT = 77  # CLIP's text context: prompts are cut there


class RewardFunction(Protocol):
    """A differentiable reward: decoded videos (B, 3, F, H, W) in [-1, 1] and prompts -> rewards (B,)."""

    name: str
    max_reward: float

    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def canonical_reward_name(name: str) -> str | None:
    """The reward ``--reward_fn name`` means (a name of :data:`REWARD_NAMES`), or None when unknown."""
    if name in REWARD_NAMES:
        return name
    return ALIASES.get(name.lower())


def unknown_reward_message(name: str) -> str:
    """One line: the reward is unknown, and which ones are known."""
    return f"--reward_fn {name!r} is unknown; choose one of {', '.join(REWARD_NAMES)}"


def parse_reward_kwargs(text: str | None) -> dict[str, Any]:
    """``--reward_fn_kwargs`` (a JSON object) as a dict; one-line ValueError when it is not one."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--reward_fn_kwargs is not JSON ({err.msg} at column {err.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--reward_fn_kwargs must be a JSON object such as '{{\"model_path\": ...}}', got {text!r}")
    return value


def load_reward(name: str, kwargs_text: str | None = None) -> RewardFunction:
    """The reward ``--reward_fn name`` with ``--reward_fn_kwargs``; one-line ValueError when it cannot load."""
    reward = canonical_reward_name(name)
    if reward is None:
        raise ValueError(unknown_reward_message(name))
    kwargs = parse_reward_kwargs(kwargs_text)
    if reward in BUILTIN_REWARDS:
        from ..toyworld.rewards import BUILTIN_REWARDS as TOY_REWARDS

        return _construct(TOY_REWARDS[reward], reward, kwargs)
    return _construct(MODEL_REWARDS[reward], reward, kwargs)


def _construct(cls: type, name: str, kwargs: dict[str, Any]) -> RewardFunction:
    """``cls(**kwargs)``, an unexpected keyword being one clear line."""
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"--reward_fn_kwargs do not fit {name}: {err}") from None


# ----------------------------------------------------------------------------------------
# Loading: local folders and files only, each failure one line naming its argument
# ----------------------------------------------------------------------------------------
def _kwargs_hint(argument: str) -> str:
    """How to give ``argument``: the end of every missing-weights line."""
    return f'give it with --reward_fn_kwargs \'{{"{argument}": "PATH"}}\' (nothing is downloaded at run time)'


def _load_local(loader: Any, path: str, argument: str, what: str, reward: str = "PickScoreReward") -> Any:
    """``loader.from_pretrained(path)`` from local files only; a missing folder is one clear line."""
    try:
        return loader.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        # A folder that is there but does not load says why; otherwise the hub's long message helps nobody.
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160] if Path(path).exists() else (
            "no such folder, nor in the Hugging Face cache")  # fmt: skip
        raise ValueError(
            f"--reward_fn {reward}: {what} is not on disk at {argument}={path!r} ({reason}); {_kwargs_hint(argument)}"
        ) from None


def load_weight_file(path: str | None, argument: str, what: str, reward: str) -> dict[str, torch.Tensor]:
    """The state dict in the file ``argument`` names (a pickle of plain tensors, or safetensors).

    One line when it is not given, not there or not readable; trainer wrappers are unwrapped
    (``state_dict``, ``model_state_dict``) and torch.compile's ``_orig_mod.`` prefix dropped.
    """
    from ..models.loading import read_state_dict

    if not path or not Path(path).is_file():
        raise ValueError(
            f"--reward_fn {reward}: {argument}={path!r} is no file on disk ({what}); {_kwargs_hint(argument)}"
        )
    try:
        state = read_state_dict(path)
    except ValueError as err:  # read_state_dict's errors name the file and the cause in their first line
        raise ValueError(f"--reward_fn {reward}: {argument}={path!r}: {str(err).splitlines()[0]}") from None
    state = state.get("model_state_dict", state)  # aesthetic-predictor-v2-5's training checkpoints
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # torch.compile's prefix


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], argument: str, path: str, reward: str) -> None:
    """Copy ``state`` into ``module`` strictly; a mismatch is one line naming the argument and its first keys."""
    from ..models.loading import CheckpointMismatchError, load_into

    try:
        load_into(module, state, path)
    except CheckpointMismatchError as err:
        raise ValueError(
            f"--reward_fn {reward}: {argument}={path!r} does not fit: {' '.join(str(err).split())[:400]}"
        ) from None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logging at errors only, for a load whose warnings are expected (unused towers)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode without trainable parameters: a reward judges, the LoRA learns."""
    module.eval()
    module.requires_grad_(False)
    return module


def projected(features: Any) -> torch.Tensor:
    """CLIP's projected features: a tensor (transformers 4), or the ``pooler_output`` of its output (transformers 5)."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


# ----------------------------------------------------------------------------------------
# Frames -> model inputs, features -> rewards
# ----------------------------------------------------------------------------------------
def clip_pixels(
    images: torch.Tensor,
    size: int,
    crop: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> a vision tower's input (N, 3, size, size), normalised by mean / std.

    crop: shorter side resized to ``size`` then centre crop (PickScore's ``Resize(224) + CenterCrop``); else
    resized to size x size, the aspect not kept (VideoX-Fun's ``Resize((224, 224))`` of HPS, Aesthetic, MPS).
    Differentiable (bicubic with antialiasing, as torchvision's ``Resize`` on tensors).
    """
    _, _, h, w = images.shape
    scale = size / min(h, w)
    target = (max(size, math.floor(h * scale + 0.5)), max(size, math.floor(w * scale + 0.5))) if crop else (size, size)
    resized = F.interpolate((images.float() + 1.0) / 2.0, size=target, mode="bicubic", align_corners=False,
                            antialias=True)  # fmt: skip
    top, left = (resized.shape[2] - size) // 2, (resized.shape[3] - size) // 2
    cropped = resized[:, :, top : top + size, left : left + size]
    mean_ = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_ = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (cropped - mean_) / std_


def frame_pixels(frames: torch.Tensor, size: int, crop: bool, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD) -> torch.Tensor:  # fmt: skip
    """Videos (B, 3, F, H, W) in [-1, 1] -> every frame as a model input (B F, 3, size, size), video-major."""
    b, _, f, h, w = frames.shape
    return clip_pixels(frames.transpose(1, 2).reshape(b * f, 3, h, w), size, crop, mean, std)


def per_video(scores: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-frame scores (B F,) -> the mean of each video's frames (B,), as VideoX-Fun averages them."""
    return scores.float().view(batch, -1).mean(dim=1)


def cosine_per_video(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Frame features (B F, d) and prompt features (B, d) -> the mean cosine of each video's frames (B,)."""
    b = text.shape[0]
    image = F.normalize(image.float(), dim=-1).view(b, -1, image.shape[-1])  # (B, F, d)
    return (image * F.normalize(text.float(), dim=-1)[:, None]).sum(dim=-1).mean(dim=1)


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device, pad_to_max: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Token ids and attention mask (B, L) of the prompts, cut at ``max_length`` (padded to it when asked)."""
    padding = "max_length" if pad_to_max else True
    tokens = tokenizer(list(prompts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)


class ModelReward:
    """What the rewards that run networks share: their defaults, moving their modules, their device."""

    name: str
    max_reward: float
    loss_scale: float

    def modules(self) -> list[nn.Module]:
        """The networks this reward runs."""
        return [value for value in vars(self).values() if isinstance(value, nn.Module)]

    def to(self, device: torch.device | str) -> ModelReward:
        """Move the networks to ``device``."""
        for module in self.modules():
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the networks are."""
        return next(self.modules()[0].parameters()).device


# ----------------------------------------------------------------------------------------
# CLIP image-prompt scores: PickScore, HPS
# ----------------------------------------------------------------------------------------
class ClipScoreReward(ModelReward):
    """Cosine of a transformers ``CLIPModel``'s image and prompt features, averaged over each video's frames.

    Subclasses load ``model`` and ``tokenizer`` and say how frames are fitted to the tower (``crop``).
    """

    model: nn.Module
    tokenizer: Any
    crop: bool

    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """frames (B, 3, F, H, W) in [-1, 1], one prompt per video -> rewards (B,)."""
        config = self.model.config
        pixels = frame_pixels(frames, config.vision_config.image_size, self.crop).to(self.device)  # (B F, 3, S, S)
        max_length = min(CLIP_CONTEXT, config.text_config.max_position_embeddings)
        ids, mask = tokenize(self.tokenizer, prompts, max_length, self.device)
        text = projected(self.model.get_text_features(input_ids=ids, attention_mask=mask))  # (B, d)
        image = projected(self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)))  # (B F, d)
        return cosine_per_video(image, text)


class PickScoreReward(ClipScoreReward):
    """PickScore (yuvalkirstain/PickScore_v1): cosine of CLIP image and prompt features, averaged over frames.

    As VideoX-Fun's ``PickScoreReward``: frames resized (shorter side) and centre-cropped to the
    vision tower's size, CLIP-normalised. Both folders must be on disk (a local folder, or already in
    the Hugging Face cache).
    """

    def __init__(
        self,
        model_path: str = "yuvalkirstain/PickScore_v1",
        processor_name_or_path: str = CLIP_H,
        max_reward: float = 1.0,
        loss_scale: float = 1.0,
    ):
        from transformers import AutoModel, AutoTokenizer

        self.name, self.max_reward, self.loss_scale, self.crop = "PickScoreReward", max_reward, loss_scale, True
        self.model = frozen(_load_local(AutoModel, model_path, "model_path", "the PickScore model"))
        self.tokenizer = _load_local(AutoTokenizer, processor_name_or_path, "processor_name_or_path", "its tokenizer")


class HPSReward(ClipScoreReward):
    """HPS v2.0 / v2.1 (Human Preference Score): an open_clip ViT-H-14 checkpoint, run as transformers' CLIP.

    The score is HPS's: the cosine of the normalised image and prompt features (no logit scale; about 0.2-0.35
    on real images), averaged over frames. As VideoX-Fun's ``HPSReward``: frames resized to 224x224 (aspect
    not kept), CLIP-normalised. The tokenizer is CLIP's BPE (open_clip's, the same vocabulary) from a
    transformers tokenizer folder (``processor_name_or_path``). ``open_clip_config``: another open_clip model
    config (a dict or a JSON file in ``model_configs/``'s layout) than ViT-H-14.
    """

    def __init__(
        self,
        model_path: str | None = None,
        version: str = "v2.0",
        processor_name_or_path: str = CLIP_H,
        open_clip_config: Mapping[str, Any] | str | None = None,
        max_reward: float = 1.0,
        loss_scale: float = 1.0,
    ):
        from transformers import AutoTokenizer

        from .open_clip_layout import VIT_H_14, open_clip_to_transformers

        if version not in HPS_FILES:
            raise ValueError(f"--reward_fn HPSReward: version {version!r} is unknown; choose v2.0 or v2.1")
        self.name, self.max_reward, self.loss_scale, self.crop = "HPSReward", max_reward, loss_scale, False
        state = load_weight_file(
            model_path, "model_path", f"the HPS {version} weights, {HPS_FILES[version]}", self.name
        )
        self.tokenizer = _load_local(AutoTokenizer, processor_name_or_path, "processor_name_or_path",
                                     "its tokenizer (CLIP's BPE)", self.name)  # fmt: skip
        if isinstance(open_clip_config, str):
            open_clip_config = json.loads(Path(open_clip_config).read_text())
        try:
            model = open_clip_to_transformers(state, open_clip_config or VIT_H_14, self.tokenizer.eos_token_id,
                                              str(model_path))  # fmt: skip
        except ValueError as err:
            raise ValueError(f"--reward_fn HPSReward: model_path={model_path!r} is not an open_clip CLIP of that "
                             f"config: {str(err).splitlines()[0]}") from None  # fmt: skip
        self.model = frozen(model)


# ----------------------------------------------------------------------------------------
# Aesthetic predictor v2 / v2.5
# ----------------------------------------------------------------------------------------
class LinearStack(nn.Module):
    """The aesthetic predictors' heads: Linear layers only, at the indices their keys name (``{prefix}.{i}``).

    v2 (``sac+logos+ava1-l14-linearMSE.pth``): ``layers.0/2/4/6/7``, 768-1024-128-64-16-1; v2.5
    (``aesthetic_predictor_v2_5.pth``): ``scoring_head.0/2/4/6/8``, 1152-1024-128-64-16-1. The indices
    between are Dropouts, identities at inference (all a reward runs), kept so the names match.
    """

    def __init__(self, state: Mapping[str, torch.Tensor], prefix: str):
        super().__init__()
        self.prefix = prefix
        indices = sorted({int(key.split(".")[1]) for key in state if key.startswith(f"{prefix}.")})
        layers: list[nn.Module] = [nn.Identity() for _ in range((indices[-1] + 1) if indices else 0)]
        for i in indices:
            out_features, in_features = state[f"{prefix}.{i}.weight"].shape
            layers[i] = nn.Linear(in_features, out_features, bias=f"{prefix}.{i}.bias" in state)
        self.add_module(prefix, nn.Sequential(*layers))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings (N, d) -> scores (N,)."""
        return getattr(self, self.prefix)(embeddings).squeeze(-1)


class AestheticReward(ModelReward):
    """The LAION aesthetic predictor (a 1-10 score of an image alone), averaged over each video's frames.

    v2: CLIP ViT-L/14's projected image embedding (a transformers ``CLIPModel`` folder, ``encoder_path``),
    L2-normalised, into the MLP of ``predictor_path`` (``sac+logos+ava1-l14-linearMSE.pth``). v2.5: SigLIP
    so400m's pooled image embedding (a ``SiglipModel`` / ``SiglipVisionModel`` folder), L2-normalised, into
    the head of ``aesthetic_predictor_v2_5.pth``. As VideoX-Fun's ``AestheticReward``: frames resized to the
    tower's size (aspect not kept), normalised by its statistics; max_reward 10, loss_scale 0.1.
    Prompts are not used.
    """

    def __init__(
        self,
        encoder_path: str | None = None,
        predictor_path: str | None = None,
        version: str = "v2",
        max_reward: float = 10.0,
        loss_scale: float = 0.1,
    ):
        from transformers import CLIPModel, SiglipVisionModel

        if version not in AESTHETIC_FILES:
            raise ValueError(f"--reward_fn AestheticReward: version {version!r} is unknown; choose v2 or v2.5")
        self.name, self.max_reward, self.loss_scale, self.version = "AestheticReward", max_reward, loss_scale, version
        what = f"the predictor, {AESTHETIC_FILES[version]}"
        state = load_weight_file(predictor_path, "predictor_path", what, self.name)
        encoder_path = encoder_path or AESTHETIC_ENCODERS[version]
        if version == "v2":
            loader, prefix, tower = CLIPModel, "layers", "CLIP ViT-L/14 image encoder"
            self.mean, self.std = CLIP_MEAN, CLIP_STD
        else:
            loader, prefix, tower = SiglipVisionModel, "scoring_head", "SigLIP so400m image encoder"
            self.mean, self.std = SIGLIP_MEAN, SIGLIP_STD
        with quiet_transformers():  # SigLIP's text tower, in the release's folder, is a report of unused keys
            self.encoder = frozen(_load_local(loader, encoder_path, "encoder_path", f"the {tower}", self.name))
        self.head = LinearStack(state, prefix)
        load_strict(self.head, state, "predictor_path", str(predictor_path), self.name)
        self.head = frozen(self.head)

    @property
    def image_size(self) -> int:
        """The vision tower's input side."""
        config = self.encoder.config
        return (config.vision_config if self.version == "v2" else config).image_size

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Model inputs (N, 3, S, S) -> L2-normalised image embeddings (N, d), the head's input."""
        if self.version == "v2":
            embeddings = projected(self.encoder.get_image_features(pixel_values=pixels))
        else:
            embeddings = self.encoder(pixel_values=pixels).pooler_output
        return F.normalize(embeddings.float(), dim=-1)

    def __call__(self, frames: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """frames (B, 3, F, H, W) in [-1, 1] -> aesthetic scores (B,) (prompts are not used)."""
        pixels = frame_pixels(frames, self.image_size, False, self.mean, self.std).to(self.device)  # (B F, 3, S, S)
        return per_video(self.head(self.embed(pixels)), frames.shape[0])


# ----------------------------------------------------------------------------------------
# MPS
# ----------------------------------------------------------------------------------------
class MPSReward(ModelReward):
    """MPS (Kolors' Multi-dimensional Preference Score): CLIP-H token features through its condition-aware head.

    ``model_path``: VideoX-Fun's ``MPS_overall.pth``, the state dict of Kolors' ``MPS_overall_checkpoint.pth``
    (a pickled whole model, which is not read: convert it once with ``torch.save(model.state_dict())``):
    ``model.*`` a transformers CLIP-H, ``cross_model.*`` the head (:mod:`.mps_head`). ``processor_name_or_path``:
    the CLIP-H folder giving the CLIP config and tokenizer. As VideoX-Fun's ``MPSReward``: frames resized to
    224x224, CLIP-normalised; prompts and the condition padded to 77 tokens; the image's tokens (before the
    post-norm) attend to the prompt's tokens that resemble the condition; the reward is the cosine of the head's
    class-token output and the prompt's pooled feature, averaged over frames.
    """

    def __init__(
        self,
        model_path: str | None = None,
        processor_name_or_path: str = CLIP_H,
        condition: str = MPS_CONDITION,
        max_reward: float = 1.0,
        loss_scale: float = 1.0,
    ):
        from transformers import AutoTokenizer, CLIPConfig

        from .mps_head import MPSHead
        from .open_clip_layout import build_clip

        self.name, self.max_reward, self.loss_scale, self.condition = "MPSReward", max_reward, loss_scale, condition
        state = load_weight_file(model_path, "model_path", "the MPS weights, MPS_overall.pth", self.name)
        config = _load_local(CLIPConfig, processor_name_or_path, "processor_name_or_path", "the CLIP-H config",
                             self.name)  # fmt: skip
        self.tokenizer = _load_local(AutoTokenizer, processor_name_or_path, "processor_name_or_path",
                                     "the CLIP-H tokenizer", self.name)  # fmt: skip
        parts = {"model.": {}, "cross_model.": {}}
        for key, tensor in state.items():
            prefix = next((p for p in parts if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"--reward_fn MPSReward: model_path={model_path!r} holds {key}, neither model.* "
                                 "nor cross_model.*: not MPS_overall.pth")  # fmt: skip
            if not key.endswith("position_ids"):  # a buffer older transformers saved
                parts[prefix][key.removeprefix(prefix)] = tensor
        try:
            self.clip = frozen(build_clip(config, parts["model."], str(model_path)))
            self.head = MPSHead.from_state(parts["cross_model."])
        except (ValueError, KeyError) as err:
            raise ValueError(f"--reward_fn MPSReward: model_path={model_path!r} does not fit the CLIP-H config and "
                             f"the MPS head: {' '.join(str(err).split())[:400]}") from None  # fmt: skip
        load_strict(self.head, parts["cross_model."], "model_path", str(model_path), self.name)
        self.head = frozen(self.head)

    def text_tokens(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected token features (B, L, P) and pooled feature (B, P) of prompts padded to the context."""
        text_config = self.clip.config.text_config
        max_length = min(self.tokenizer.model_max_length, text_config.max_position_embeddings)
        ids, _ = tokenize(self.tokenizer, prompts, max_length, self.device, pad_to_max=True)
        out = self.clip.text_model(input_ids=ids)  # no attention mask, as MPS: the causal mask alone
        return self.clip.text_projection(out.last_hidden_state), self.clip.text_projection(out.pooler_output)

    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """frames (B, 3, F, H, W) in [-1, 1], one prompt per video -> rewards (B,)."""
        b, f = frames.shape[0], frames.shape[2]
        pixels = frame_pixels(frames, self.clip.config.vision_config.image_size, False).to(self.device)
        text, pooled = self.text_tokens(prompts)  # (B, L, P), (B, P)
        condition, _ = self.text_tokens([self.condition] * b)  # (B, L, P)
        mask = condition_mask(text, condition)  # (B, 1, L)
        image = self.clip.visual_projection(
            self.clip.vision_model(pixel_values=pixels).last_hidden_state
        )  # (B F, T, P)
        context = text.repeat_interleave(f, dim=0)  # (B F, L, P)
        mask = mask.repeat_interleave(f, dim=0).expand(-1, image.shape[1], -1)  # (B F, T, L)
        return cosine_per_video(self.head(image, context, mask)[:, 0], pooled)


def condition_mask(text: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """MPS's mask of the prompt tokens (B, 1, L): 0 where a token resembles some condition token, -inf elsewhere.

    A token's resemblance is its largest dot product with the condition's tokens, divided by the largest of
    the whole batch (as Kolors' code; so a batch's prompts share the scale), kept above 0.01.
    """
    similarity = torch.einsum("bid,bjd->bji", text, condition).amax(dim=1, keepdim=True)  # (B, 1, L)
    similarity = similarity / similarity.max()
    keep = similarity > 0.01
    # A prompt none of whose tokens passes would make Kolors' softmax NaN: it attends to all its tokens instead.
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return torch.where(keep, 0.0, float("-inf")).to(text.dtype)


MODEL_REWARDS: dict[str, type] = {
    "PickScoreReward": PickScoreReward,
    "HPSReward": HPSReward,
    "AestheticReward": AestheticReward,
    "MPSReward": MPSReward,
}
