"""The ComfyUI node pack of videox_fun: VideoX-Fun's node names and sockets, thin over :mod:`videox_fun.api`."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
