"""VideoX-Fun's Qwen-Image Fun control (Qwen-Image-2512-Fun-Controlnet-Union): a side stream of copied Qwen-Image
blocks whose hints are added to the main blocks' image stream (:mod:`~videox_fun.models.fun_control`).

The release ships ``control_blocks.N.*`` (5 copies of the dual-stream block, ``before_proj`` on the first,
``after_proj`` on each) and ``control_img_in`` (132 -> 3072): VideoX-Fun's ``QwenImageControlTransformer2DModel``
with ``control_layers [0, 12, 24, 36, 48]``, ``control_in_dim 132``. The context per (2x2-packed) image token is
64 + 4 + 64 channels: the control image's packed latents, the known-pixels mask (1 = keep) packed, the masked image's
packed latents. On the meta device: 1,756,206,592 control parameters, 22,186,607,680 with the transformer. No
diffusers class holds these weights (diffusers' ``QwenImageControlNetModel`` is InstantX's ControlNet, another
design).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock
from torch import nn

from ..fun_control import ControlFileKind, SideStreamControl
from .attention import use_qwenimage_attention

CONTROL_CLASS_NAME = "QwenImageControlTransformer2DModel"  # VideoX-Fun's transformer whose control part the file is
# control_img_in is FLUX.2's too: the copies' after_proj tells the two apart.
KIND = ControlFileKind("Qwen-Image", "control_blocks.0.after_proj.weight", ("control_blocks.", "control_img_in."))


class QwenImageControl(SideStreamControl):
    """The Qwen-Image side stream (released keys), strict, beside a :class:`~.transformer.QwenImageTransformer`."""

    released_class_name = CONTROL_CLASS_NAME
    kind = KIND
    latent_channels = 64  # 16 VAE channels packed 2x2
    blocks_name = "control_blocks"
    release_label = "Qwen-Image-2512-Fun-Controlnet-Union"
    # It runs inside the transformer's forward (hooks on its blocks): memory modes keep the two on the device
    # together; the qfloat8 modes store its copies' linears in fp8 (VideoX-Fun's control transformer holds them,
    # quantised whole), the modulation and norms staying high precision as in the transformer.
    _runs_beside_transformer = True
    _fp8_skip_modules: ClassVar[tuple[str, ...]] = ("norm", "mod")
    # Under sequence parallelism the copies run on each rank's tokens (their attention's seam, the context split as
    # the image tokens it follows), inside the transformer's split blocks.
    _block_lists = ("control_blocks",)
    _attention_seam = "attn.processor"
    _sequence_parallel_module_inputs: ClassVar[dict[str, str]] = {"control_img_in": "hidden_states"}

    @register_to_config
    def __init__(
        self,
        control_layers: Sequence[int] = (0, 12, 24, 36, 48),
        control_in_dim: int = 132,
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
    ) -> None:
        super().__init__()
        self.build(list(control_layers), control_in_dim, num_attention_heads * attention_head_dim)

    def make_block(self) -> nn.Module:
        """A Qwen-Image dual-stream block of the transformer's size."""
        config = self.config
        dim = config.num_attention_heads * config.attention_head_dim
        block = QwenImageTransformerBlock(dim, config.num_attention_heads, config.attention_head_dim)
        use_qwenimage_attention([block])  # the package's dispatch and seam, as the main blocks
        return block
