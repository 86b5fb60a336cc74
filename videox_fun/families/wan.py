"""The Wan family (Wan2.1, Wan2.2, the alibaba-pai Fun variants, VACE and Wan2.2-Animate) as the family layer
reads it.

Recognition reads config files and safetensors headers only: the original ("civitai") layout
(``config.json`` with ``dim``, ``num_heads``, ``in_dim``...), the diffusers layout whose
transformer is ``WanTransformer3DModel`` or ``WanVACETransformer3DModel``, the Wan2.2 A14B expert
folders, and our own folders (``videox_fun.yaml``). The variant, and so the modes, is read off the transformer config.
A model joined from single files, one per component, is recognised from their headers
(:func:`recognise_single_files`) and loaded by :class:`SingleFileWanFamily`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..argparsing import finite_float
from ..config import FOLDER_CONFIG_NAME, ModelConfig, config_for_folder, read_json_mapping, read_yaml_mapping
from . import DISTILL_TIMESTEPS, Family, Mode, Recognised, Setting, SizeRules, register

if TYPE_CHECKING:
    import torch

    from ..models.wan.single_files import WanParts
    from ..pipelines.animate import AnimateRequests
    from ..pipelines.wan import WanPipeline

# The modes, in the order inference prefers them; folders as VideoX-Fun names its sample folders.
WAN_MODES = {
    "t2v": Mode("t2v", folder="videos", description="text to video"),
    "i2v": Mode("i2v", needs=("image",), folder="videos_i2v", description="start image to video"),
    "flf2v": Mode("flf2v", needs=("image", "end_image"), folder="videos_i2v", description="first and last frame"),
    "v2v": Mode("v2v", needs=("video",), folder="videos_v2v", description="video to video (denoise strength)"),
    "inpaint": Mode("inpaint", needs=("video", "mask"), folder="videos_v2v", description="regenerate the white mask"),
    "control": Mode(
        "control",
        needs=("control_video",),
        allows=("image", "ref_image"),
        folder="videos_v2v_control",
        description="follow a control video (edges, depth, pose)",
    ),
    "camera": Mode(
        "camera",
        needs=("camera",),
        allows=("image",),
        folder="videos_v2v_control",
        description="follow a camera path",
    ),
    # VACE models also serve t2v, i2v, flf2v (known frames through the mask), inpaint and control (with
    # --ref-image subjects); these two are theirs alone. ref_image may be a list (several subjects).
    "r2v": Mode("r2v", needs=("ref_image",), folder="videos_r2v", description="reference (subject) images to video"),
    "vace": Mode(
        "vace",
        allows=("ref_image", "control_video", "video", "mask", "image", "end_image"),
        folder="videos_vace",
        description="any mix of subject images, a control video or a video + mask, start / end frames",
    ),
    # Wan2.2-Animate's, from the folder its released preprocessing writes (--src-root-path), no other input.
    "animate": Mode(
        "animate",
        folder="videos_animate",
        description="animate the reference character (src_ref.png) with the pose and face videos",
    ),
    "replace": Mode(
        "replace",
        folder="videos_animate",
        description="put the reference character into the video (src_bg.mp4) in place of its person (src_mask.mp4)",
    ),
}
ANIMATE_MODES = ("animate", "replace")
# What Wan-Animate's preprocessing writes: animation reads the first three, replacement all five.
ANIMATE_FILES = ("src_pose.mp4", "src_face.mp4", "src_ref.png")
REPLACE_FILES = ("src_bg.mp4", "src_mask.mp4")


def check_animate_folder(folder: object, mode: str) -> None:
    """The preprocessing folder holds every file ``mode`` reads (one line naming the missing ones)."""
    from ..pipelines.animate import check_sources

    check_sources(str(folder), replace=mode == "replace")


def check_clip_len(frames: int, mode: str) -> None:
    """A segment length Wan-Animate can take: 4n + 1 frames, at least 5 (above the frames it carries over, which the
    pipeline checks against --refert-num)."""
    if frames % 4 != 1 or frames < 5:
        raise ValueError(f"--clip-len must be of the form 4n + 1, at least 5 (the release's: 77), got {frames}")


# What only some modes read besides the media (GenerationRequest.extra, by the pipelines' keyword names).
WAN_SETTINGS = (
    Setting(
        "vace_context_scale",
        help="VACE models: how strongly the VACE hints steer the video (default 1)",
        type=finite_float,
        modes=tuple(name for name in WAN_MODES if name not in ANIMATE_MODES),
    ),
    dataclasses.replace(DISTILL_TIMESTEPS, modes=tuple(name for name in WAN_MODES if name not in ANIMATE_MODES)),
    Setting(
        "src_root_path",
        help="Wan2.2-Animate (animate / replace): the folder its preprocessing wrote: src_pose.mp4, src_face.mp4, "
        "src_ref.png; src_bg.mp4 and src_mask.mp4 too to replace",
        modes=ANIMATE_MODES,
        needed_by=ANIMATE_MODES,
        check=check_animate_folder,
        kind="folder",
        files=ANIMATE_FILES + REPLACE_FILES,
    ),
    Setting(
        "refert_num",
        help="Wan2.2-Animate: frames each segment carries over from the last (default 1)",
        type=int,
        choices=(1, 5),
        modes=ANIMATE_MODES,
    ),
    Setting(
        "clip_len",
        help="Wan2.2-Animate: frames generated per segment, 4n+1 (default 77; VideoX-Fun's segment_frame_length)",
        type=int,
        aliases=("--segment-frame-length",),
        modes=ANIMATE_MODES,
        check=check_clip_len,
    ),
)
# diffusers' Wan transformer classes a pipeline folder's transformer/config.json may name (VACE's too).
DIFFUSERS_CLASSES = frozenset({"WanTransformer3DModel", "WanVACETransformer3DModel"})
ORIGINAL_FIELDS = frozenset({"dim", "num_heads", "in_dim", "out_dim"})


def wan_transformer_config(path: Path) -> dict[str, Any] | None:
    """A Wan transformer's config.json in the original field names, or None when it is not a Wan one."""
    from ..models.loading import public_config
    from ..models.wan.keys import diffusers_config_to_original, is_diffusers_config

    if not path.is_file():
        return None
    raw = read_json_mapping(path, "transformer config")
    # The layout is read off the fields, not the class name: VideoX-Fun's save_pretrained writes the
    # original fields (dim, num_heads...) under the class name diffusers uses, WanTransformer3DModel.
    if is_diffusers_config(raw):
        return diffusers_config_to_original(raw)
    if raw.keys() >= ORIGINAL_FIELDS:
        return public_config(raw)
    return None


def with_extras_from_headers(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The config plus what only the weights' names say: Fun V1.1 extras, a CLIP-less i2v expert, VACE layers."""
    from ..models.loading import weight_key_names
    from ..models.wan.keys import CLIP_DIM, has_clip_branch
    from ..models.wan.vace import vace_config_from_weights

    names = weight_key_names(folder)
    found = dict(config)
    if "ref_conv.weight" in names:
        found["add_ref_conv"] = True
    if "control_adapter.conv.weight" in names:
        found["add_control_adapter"] = True
    clip_declared = has_clip_branch(config.get("model_type", "t2v"), config.get("image_dim", CLIP_DIM))
    image_keys = ("img_emb.", "condition_embedder.image_embedder.")
    if names and clip_declared and not any(name.startswith(image_keys) for name in names):
        found["image_dim"] = None
    found.update(vace_config_from_weights(dict.fromkeys(names), found))
    return found


def with_release_defaults(config: ModelConfig, transformer_config: Mapping[str, Any]) -> ModelConfig:
    """A layout's config with the generation defaults its variant was released with, where they differ from
    the layout's: VACE (shift 16, guidance 5, UniPC; VACE-Fun A14B shift 12, Flow), Wan2.2-Animate (DPM++, shift 5,
    20 steps, no guidance, 30 fps) and the Wan2.2-Fun releases told apart from Wan-AI's by their architecture (Flow,
    shift 5, guidance 6, 50 steps)."""
    from ..models.wan.animate import is_animate_config
    from ..models.wan.vace import is_vace_config
    from ..models.wan.variants import ANIMATE_RELEASE_DEFAULTS, VACE_DEFAULTS, wan22_fun_defaults

    two_experts = bool(config.transformer_2_subpath)
    if is_animate_config(transformer_config):
        release = ANIMATE_RELEASE_DEFAULTS
    elif is_vace_config(transformer_config):
        release = VACE_DEFAULTS["Wan2.2" if two_experts else "Wan2.1"]
    else:
        release = wan22_fun_defaults(transformer_config, two_experts)
    if not release:
        return config
    return dataclasses.replace(config, defaults=dataclasses.replace(config.defaults, **release))


def is_other_family_folder(folder: Path) -> bool:
    """A diffusers folder of another model class, or our own folder config naming another pipeline."""
    if (folder / "model_index.json").is_file():
        transformer = folder / "transformer" / "config.json"
        if not transformer.is_file():
            return True
        return read_json_mapping(transformer, "transformer config").get("_class_name") not in DIFFUSERS_CLASSES
    own = folder / FOLDER_CONFIG_NAME
    return own.is_file() and read_yaml_mapping(own, "model config").get("pipeline", "Wan") != "Wan"


class WanFamily(Family):
    """Wan2.1 / Wan2.2, their Fun InP, Control and Control-Camera variants, VACE and Wan2.2-Animate."""

    name = "wan"
    modes = WAN_MODES
    settings = WAN_SETTINGS
    training_spec = "wan"
    description = (
        "Wan2.1 / Wan2.2 (T2V, I2V, TI2V, A14B experts), Wan-Fun InP / Control / Camera, VACE and Wan2.2-Animate"
    )

    @property
    def samplers(self) -> tuple[str, ...]:  # type: ignore[override]
        """The flow-matching samplers by VideoX-Fun's names."""
        from ..pipelines.schedulers import SAMPLERS

        return SAMPLERS

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A Wan folder as its config files describe it (None for another family's layout)."""
        if is_other_family_folder(folder):
            return None
        config = config_for_folder(folder, config_path)
        transformer_folder = folder / config.transformer_subpath
        transformer_config = wan_transformer_config(transformer_folder / "config.json")
        if transformer_config is None:
            if config_path is not None or (folder / FOLDER_CONFIG_NAME).is_file():
                raise FileNotFoundError(
                    f"{folder}: the Wan config puts the transformer at {transformer_folder}, which holds no Wan "
                    "config.json"
                )
            return None
        transformer_config = with_extras_from_headers(transformer_folder, transformer_config)
        if config_path is None and not (folder / FOLDER_CONFIG_NAME).is_file():  # the layout's defaults only
            config = with_release_defaults(config, transformer_config)
        return self.recognised(folder, config, transformer_config)

    def recognised(self, folder: Path, config: ModelConfig, transformer_config: Mapping[str, Any]) -> Recognised:
        """What this family says of a model of ``config`` whose transformer has ``transformer_config`` (original
        field names, Fun extras included): its variant and so its modes, its size rules, the config's defaults.
        ``folder`` is where the model's files (and a cache calibration for it) are."""
        from ..models.wan.variants import variant_of

        variant = variant_of(transformer_config)
        patch = transformer_config.get("patch_size", (1, 2, 2))[1]
        spatial = 16 if transformer_config["out_dim"] == 48 else 8  # the Wan2.2 VAE (48 channels) compresses 16x
        return Recognised(
            family=self,
            folder=folder,
            config=config,
            variant=variant.name,
            modes=tuple(mode for mode in self.modes if mode in variant.modes),
            defaults=config.defaults,
            sizes=SizeRules(multiple=spatial * patch, frame_factor=4),
            note=config.note,
        )

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> WanPipeline | AnimateRequests:
        """Every component of the folder, as :meth:`WanPipeline.from_pretrained` loads it (for an Animate model,
        seen through its own pipeline)."""
        from ..pipelines.wan import WanPipeline

        config: ModelConfig = recognised.config
        pipe = WanPipeline.from_pretrained(recognised.folder, config=config, device=device, dtype=dtype)
        return pipeline_for_variant(pipe)

    def check_settings(self, mode: str, extra: Mapping[str, Any]) -> None:
        """Each setting as declared, then Animate's segments: longer than the frames they carry over."""
        super().check_settings(mode, extra)
        clip_len, refert_num = extra.get("clip_len"), extra.get("refert_num")
        if clip_len is not None and refert_num is not None and clip_len <= refert_num:
            raise ValueError(f"--clip-len {clip_len} must be above --refert-num {refert_num} (the frames carried over)")

    def needs_for_mode(self, mode: str) -> str:
        """The kind of released Wan model that serves ``mode``."""
        from ..models.wan.variants import variant_for_mode

        return variant_for_mode(mode)


class SingleFileWanFamily(WanFamily):
    """The Wan family for a model joined from single files (one per component): Wan's modes, samplers and checks,
    and a loader that reads the chosen files instead of a folder. Never registered: it recognises no folder."""

    def __init__(self, parts: WanParts) -> None:
        self.parts = parts

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """No folder is of this layout (the files were chosen one by one)."""
        return None

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> WanPipeline | AnimateRequests:
        """The pipeline, every component from its file: the transformer in ``dtype`` (fp8 linears kept), the
        others in the precisions their files were read for; the vision tower only for a transformer that uses it."""
        from ..models.wan.single_files import load_image_encoder, load_text_encoder, load_transformer, load_vae
        from ..pipelines.wan import WanPipeline

        parts = self.parts
        transformer = load_transformer(parts.transformer, dtype)
        image_encoder = None
        if parts.image_encoder is not None and transformer.uses_clip:
            image_encoder = load_image_encoder(parts.image_encoder)
        pipe = WanPipeline(
            transformer,
            load_vae(parts.vae),
            load_text_encoder(parts.text_encoder, parts.tokenizer),
            image_encoder,
            model_name=parts.name,
            masked_fill=recognised.config.masked_fill,
            device=device,
            dtype=dtype,
        )
        pipe.config = recognised.config
        return pipeline_for_variant(pipe.to(device))

    def __repr__(self) -> str:  # a key for a held pipeline: every file and precision
        return f"<family wan from single files {self.parts!r}>"


def pipeline_for_variant(pipe: WanPipeline) -> WanPipeline | AnimateRequests:
    """The pipeline that serves ``pipe``'s modes: Wan2.2-Animate's over its components, else ``pipe`` itself."""
    if not pipe.variant.animate:
        return pipe
    from ..pipelines.animate import AnimateRequests, WanAnimatePipeline

    return AnimateRequests(WanAnimatePipeline(pipe))


def recognise_single_files(parts: WanParts) -> Recognised:
    """What the Wan family says of a model joined from single files, as of a folder holding them: variant, modes,
    sizes; the parts checked to fit together first. Unknown pixels' fill follows the transformer's file name
    (:func:`~videox_fun.models.wan.single_files.masked_fill_for`)."""
    from ..models.wan.single_files import masked_fill_for

    parts.check()
    config = ModelConfig(masked_fill=masked_fill_for(parts.transformer.path), image_encoder_subpath=None)
    # The transformer's folder: where a cache_calibration.json for it would be.
    return SingleFileWanFamily(parts).recognised(parts.transformer.path.parent, config, parts.transformer.config)


WAN = register(WanFamily())
