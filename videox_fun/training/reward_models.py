"""The differentiable rewards of reward fine-tuning (``--reward_fn``), by name, with their keyword arguments.

Every reward takes decoded videos ``(B, 3, F, H, W)`` in [-1, 1] (with gradients) and the prompts,
and returns one reward per video ``(B,)``, higher is better. Each has its own ``max_reward`` and
``loss_scale`` defaults (the loss is ``mean(|r - max_reward| * loss_scale)``), which
``--max_reward`` / ``--loss_scale`` or ``--reward_fn_kwargs`` override.

- ``toy_colour`` / ``toy_motion``: the toy world's rewards (:mod:`videox_fun.toyworld.rewards`): no download;
- ``PickScoreReward``: PickScore (a CLIP-H model scoring image-prompt agreement) through transformers,
  from the folders the user has (``{"model_path": ..., "processor_name_or_path": ...}``); nothing is
  downloaded at run time: weights that are not there are one clear error;
- ``HPSReward``, ``AestheticReward``, ``MPSReward``: VideoX-Fun's other reward classes. Their names are
  accepted so VideoX-Fun commands parse; each says in one line what it needs (its package, its weights)
  and that loading it is not built here yet.

Short names are accepted too (``pickscore``, ``hpsv2``, ``aesthetic``, ``mps``).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

BUILTIN_REWARDS = ("toy_colour", "toy_motion")
EXTERNAL_REWARDS = ("PickScoreReward", "HPSReward", "AestheticReward", "MPSReward")
REWARD_NAMES = BUILTIN_REWARDS + EXTERNAL_REWARDS
ALIASES = {"pickscore": "PickScoreReward", "hps": "HPSReward", "hpsv2": "HPSReward", "aesthetic": "AestheticReward",
           "mps": "MPSReward", "toy_color": "toy_colour"}  # fmt: skip
# What each reward VideoX-Fun has but this package does not load yet needs (package, weights argument).
NOT_BUILT = {
    "HPSReward": ("hpsv2", "model_path", "HPS_v2.1_compressed.pt"),
    "AestheticReward": ("transformers", "predictor_path", "the aesthetic predictor's .pth"),
    "MPSReward": ("transformers", "model_path", "MPS_overall_checkpoint.pth"),
}
# CLIP's pixel statistics (openai/clip-vit-large-patch14's and laion CLIP-H's preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    if reward == "PickScoreReward":
        return _construct(PickScoreReward, reward, kwargs)
    raise ValueError(not_built_message(reward, kwargs))


def _construct(cls: type, name: str, kwargs: dict[str, Any]) -> RewardFunction:
    """``cls(**kwargs)``, an unexpected keyword being one clear line."""
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"--reward_fn_kwargs do not fit {name}: {err}") from None


def not_built_message(reward: str, kwargs: dict[str, Any]) -> str:
    """Why a VideoX-Fun reward this package does not load cannot run: its package, its weights, then that fact."""
    package, argument, weights = NOT_BUILT[reward]
    if importlib.util.find_spec(package) is None:
        return f"--reward_fn {reward} needs the {package} package (pip install {package}) and its weights ({weights})"
    path = kwargs.get(argument)
    if not path or not Path(path).exists():
        return (
            f"--reward_fn {reward} needs its weights ({weights}) on disk: give them with --reward_fn_kwargs "
            f'\'{{"{argument}": "PATH"}}\' (got {path!r}; nothing is downloaded at run time)'
        )
    return f"--reward_fn {reward} is not loaded by this package yet; use PickScoreReward, toy_colour or toy_motion"


# ----------------------------------------------------------------------------------------
# PickScore
# ----------------------------------------------------------------------------------------
class PickScoreReward:
    """PickScore (yuvalkirstain/PickScore_v1): cosine of CLIP image and prompt features, averaged over frames.

    As VideoX-Fun's ``PickScoreReward``: frames resized (shorter side) and centre-cropped to the
    vision tower's size, CLIP-normalised; the reward of a video is the mean over its frames.
    Both folders must be on disk (a local folder, or already in the Hugging Face cache).
    """

    def __init__(
        self,
        model_path: str = "yuvalkirstain/PickScore_v1",
        processor_name_or_path: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        max_reward: float = 1.0,
        loss_scale: float = 1.0,
    ):
        from transformers import AutoModel, AutoTokenizer

        self.name, self.max_reward, self.loss_scale = "PickScoreReward", max_reward, loss_scale
        self.model = _load_local(AutoModel, model_path, "model_path", "the PickScore model").eval()
        self.model.requires_grad_(False)
        self.tokenizer = _load_local(AutoTokenizer, processor_name_or_path, "processor_name_or_path", "its tokenizer")

    def to(self, device: torch.device | str) -> PickScoreReward:
        """Move the model to ``device``."""
        self.model.to(device)
        return self

    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """frames (B, 3, F, H, W) in [-1, 1], one prompt per video -> rewards (B,)."""
        b, _, f, h, w = frames.shape
        device = next(self.model.parameters()).device
        images = frames.transpose(1, 2).reshape(b * f, 3, h, w)  # (B F, 3, H, W)
        pixels = clip_pixels(images, self.model.config.vision_config.image_size).to(device)
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        text = projected(self.model.get_text_features(input_ids=ids, attention_mask=mask))  # (B, d)
        image = projected(self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)))  # (B F, d)
        image = F.normalize(image.float(), dim=-1).view(b, f, -1)
        text = F.normalize(text.float(), dim=-1)  # (B, d)
        return (image * text[:, None]).sum(dim=-1).mean(dim=1)  # (B,)


def projected(features: Any) -> torch.Tensor:
    """CLIP's projected features: a tensor (transformers 4), or the ``pooler_output`` of its output (transformers 5)."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def _load_local(loader: Any, path: str, argument: str, what: str) -> Any:
    """``loader.from_pretrained(path)`` from local files only; a missing folder is one clear line."""
    try:
        return loader.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        # A folder that is there but does not load says why; otherwise the hub's long message helps nobody.
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160] if Path(path).exists() else (
            "no such folder, nor in the Hugging Face cache")  # fmt: skip
        raise ValueError(
            f"--reward_fn PickScoreReward: {what} is not on disk at {argument}={path!r} ({reason}); give its "
            f'folder with --reward_fn_kwargs \'{{"{argument}": "PATH"}}\' (nothing is downloaded at run time)'
        ) from None


def clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> CLIP's input (N, 3, size, size): shorter side resized, centre crop, normalised.

    Differentiable (bicubic with antialiasing, as torchvision's ``Resize`` on tensors).
    """
    _, _, h, w = images.shape
    scale = size / min(h, w)
    resized = F.interpolate(
        (images.float() + 1.0) / 2.0,
        size=(max(size, math.floor(h * scale + 0.5)), max(size, math.floor(w * scale + 0.5))),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    top, left = (resized.shape[2] - size) // 2, (resized.shape[3] - size) // 2
    cropped = resized[:, :, top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (cropped - mean) / std
