"""What the image pipelines with VideoX-Fun's Fun control files (Z-Image, FLUX.2, Qwen-Image) share: the control
file per call or from the folder config, the two control modes' checks, the control context and the sidecar record.

The control context is, per latent pixel, as VideoX-Fun's control scripts and ComfyUI nodes build it: the control
image's (normalised) latents, zeros without one; and for a file that reads a mask, the known-pixels mask (1 = keep)
and the latents of the image with its masked pixels zeroed. Outside ``control_inpaint`` that is VideoX-Fun's black
image under an all-white mask: mask 0 and the VAE latents of the zero (mid-grey) picture, not zero latents
(:meth:`FunControlPipeline.nothing_kept`). A family lays this grid out as its control model reads it
(:meth:`FunControlPipeline.pack_control`). Both modes start from noise; the control model's hints are scaled by
``control_context_scale`` every pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..families.fun_control import CONTROL_MODES, CONTROL_SOURCE
from ..models.fun_control import SideStreamControl, side_stream_attached
from .common import GenerationOutput, ImageLike, SamplingSettings, generate_mask, image_tensor


class FunControlPipeline:
    """A mixin before :class:`~.image.FlowImagePipeline`: a Fun control model beside the transformer
    (:attr:`control`), loaded by :meth:`load_control`; the family's denoiser reads ``control_context`` and
    ``control_scale`` from the pass inputs (:meth:`with_control`)."""

    label: ClassVar[str]
    call_settings: ClassVar[tuple[str, ...]] = ("control_context_scale", "distill_timesteps")
    inpaint_file: ClassVar[str] = "a Fun control file that reads a mask"  # what control_inpaint needs, in errors
    control: Any = None  # the control model; its ``release.name`` names it
    control_path: Path | None = None
    mask_channels: ClassVar[int] = 1  # the known-pixels mask's channels per latent pixel of the grid
    config: Any
    device: torch.device
    dtype: torch.dtype
    vae: Any

    def load_control(self, path: Path) -> torch.nn.Module:
        """The family's control model of a control file, for this pipeline's transformer."""
        raise NotImplementedError

    def control_from_config(self, root: Path) -> None:
        """Load the folder config's control file (``control_path``, relative to the folder), if it names one."""
        if self.config.control_path:
            self.use_control(root / self.config.control_path)

    def use_control(self, path: str | Path) -> torch.nn.Module:
        """Load a Fun control file into the control model beside the transformer (kept while the path stays)."""
        path = Path(path)
        if self.control is None or self.control_path != path:
            self.control = self.load_control(path)
            self.control_path = path
        return self.control

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """Every model by name with the methods the pipeline calls (the control model's when one is loaded)."""
        found = super().components()  # type: ignore[misc]
        if self.control is not None:
            found["control"] = (self.control, self.control_methods)
        return found

    @property
    def control_methods(self) -> tuple[str, ...]:
        """The methods through which the pipeline calls the control model (offload hooks wrap these)."""
        return ("forward",)

    @property
    def control_inpaints(self) -> bool:
        """Whether the loaded control file reads a mask and the masked image: its context is wider than a latent."""
        return self.control is not None and self.control.config.control_in_dim > self.control_latent_channels

    @property
    def control_latent_channels(self) -> int:
        """Channels of the control image's part of the context (the transformer's latent channels per token)."""
        return int(self.transformer.config.in_channels)  # type: ignore[attr-defined]

    @torch.no_grad()
    def __call__(
        self, prompt: str, *args: Any, control_path: str | Path | None = None, **kwargs: Any
    ) -> GenerationOutput:
        """:meth:`FlowImagePipeline.__call__`; ``control_path`` loads a Fun control file for this call and the
        next ones (else the folder config's serves), ``control_context_scale`` scales its hints (default the
        folder config's)."""
        if control_path is not None:
            self.use_control(control_path)
        return super().__call__(prompt, *args, **kwargs)  # type: ignore[misc]

    def resolve_settings(self, mode: str, inputs: Mapping[str, Any], **given: Any) -> SamplingSettings:
        """The shared settings; a control mode needs a control file (one that reads a mask for control_inpaint)."""
        if mode in CONTROL_MODES and self.control is None:
            raise ValueError(f"mode {mode!r} needs a {self.label} Fun control file ({CONTROL_SOURCE})")
        if mode == "control_inpaint" and not self.control_inpaints:
            raise ValueError(f"mode 'control_inpaint' needs {self.inpaint_file}; {self.control_path} is "
                             f"{self.control.release.name}, which reads a control image only")  # fmt: skip
        return super().resolve_settings(mode, inputs, **given)  # type: ignore[misc]

    # -- the control context ----------------------------------------------------------------------
    def with_control(self, settings: SamplingSettings, inputs: Mapping[str, Any], *passes: dict) -> list[dict]:
        """Each pass's inputs with the control context and scale when the mode is a control one (the same context
        steers every pass), else as they are."""
        if settings.mode not in CONTROL_MODES:
            return list(passes)
        context, scale = self.control_context(settings, inputs), self.control_scale(inputs)
        control = {"control_context": context, "control_scale": scale}
        return [{**inputs_of_pass, **control} for inputs_of_pass in passes]

    def control_scale(self, inputs: Mapping[str, Any]) -> float:
        """The call's ``control_context_scale``, else the folder config's."""
        given = inputs.get("control_context_scale")
        return float(self.config.control_context_scale if given is None else given)

    def control_context(self, settings: SamplingSettings, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The control model's input, laid out by :meth:`pack_control` from the grid (1, C, h, w): the control
        image's latents (zeros without one), then for a file that reads a mask the known-pixels mask and the masked
        image's latents (:meth:`masked_image` in control_inpaint, else :meth:`nothing_kept`)."""
        h, w = self.latent_size(settings)  # type: ignore[attr-defined]
        control = inputs.get("control_video")
        latents = (self.image_latents(control, settings.height, settings.width) if control is not None  # type: ignore[attr-defined]
                   else torch.zeros(1, self.vae.latent_channels, h, w, device=self.device))  # fmt: skip
        if not self.control_inpaints:
            return self.pack_control(latents)
        if settings.mode == "control_inpaint":
            keep, masked = self.masked_image(inputs["image"], inputs["mask"], settings)
        else:
            keep, masked = self.nothing_kept(settings)
        return self.pack_control(torch.cat([latents, keep, masked], dim=1))  # (1, C + mask + C, h, w) laid out

    def keep_mask(self, mask: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """The known-pixels mask (1, :attr:`mask_channels`, h, w): 1 where the image is kept, on the latent grid."""
        size = (settings.height, settings.width)
        return 1 - generate_mask(mask, *size, self.latent_size(settings)).to(self.device)  # type: ignore[attr-defined]

    def masked_image(
        self, image: ImageLike, mask: ImageLike, settings: SamplingSettings
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(known-pixels mask, latents (1, C, h, w) of ``image`` with the white of ``mask`` zeroed), as VideoX-Fun's
        control pipelines build them."""
        size = (settings.height, settings.width)
        generate = generate_mask(mask, *size, size).to(self.device)  # (1, 1, H, W), 1 = regenerate
        pixels = image_tensor(image, *size, self.device, self.dtype) * (generate < 0.5)  # (1, 3, H, W)
        return self.keep_mask(mask, settings), self.vae.encode(pixels).float()

    def nothing_kept(self, settings: SamplingSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """(known-pixels mask (1, m, h, w), masked image's latents (1, C, h, w)) of a run that keeps no pixel (the
        control mode with a file that reads a mask): :meth:`masked_image` of a black image under an all-white mask.

        VideoX-Fun's recipe: its control scripts (``examples/{z_image,flux2,qwenimage}_fun/predict_*``) and ComfyUI
        nodes call its control pipelines with ``inpaint_image = zeros`` and ``mask_image = ones * 255`` when no
        inpaint image is given, so the mask is 0 everywhere and the masked image is the zero picture in [-1, 1]
        (mid-grey), whose VAE latents are not zero (one more encode a run). diffusers' ``ZImageControlNetPipeline``
        pads zeros instead; we follow the release's own inference, with which the weights are used. (VideoX-Fun's
        training shows the stream both: an all-generate mask's masked latents are zeroed in 90 % of those samples,
        the grey picture's latents in the rest.)"""
        size = (settings.height, settings.width, 3)
        return self.masked_image(np.zeros(size, np.uint8), np.full(size, 255, np.uint8), settings)

    def pack_control(self, grid: torch.Tensor) -> torch.Tensor:
        """The grid (1, C, h, w) as the control model reads it (the transformer's token layout by default)."""
        return self.pack(grid)  # type: ignore[attr-defined]

    def call_record(self, settings: SamplingSettings, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The control file, its release and scale of a control call."""
        if settings.mode not in CONTROL_MODES or self.control is None:
            return {}
        return {"control_path": str(self.control_path), "control": self.control.release.name,
                "control_context_scale": self.control_scale(inputs)}  # fmt: skip


class SideStreamControlPipeline(FunControlPipeline):
    """Fun control by a side stream of copied blocks (FLUX.2, Qwen-Image): the family's denoiser runs its
    transformer inside :meth:`controlled`."""

    control_class: ClassVar[type[SideStreamControl]]
    control: SideStreamControl | None = None

    def load_control(self, path: Path) -> SideStreamControl:
        """The side stream of a Fun control file, for this pipeline's transformer (strict)."""
        return self.control_class.from_file(path, self.transformer, self.dtype, self.device)  # type: ignore[attr-defined]

    @property
    def control_methods(self) -> tuple[str, ...]:
        """The pipeline calls the side stream through its hints."""
        return ("hints",)

    def controlled(self, inputs: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        """Where the pass inputs carry a control context, the side stream attached to the transformer (its hints
        times the pass's ``control_scale``); else nothing."""
        context = inputs.get("control_context")
        if context is None:
            return contextlib.nullcontext()
        assert self.control is not None
        return side_stream_attached(self.transformer, self.control, context, inputs["control_scale"])  # type: ignore[attr-defined]
