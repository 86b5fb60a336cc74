"""ComfyUI entry: the repository cloned or symlinked into ``ComfyUI/custom_nodes/`` loads this node pack.

ComfyUI imports this folder as a package under a path-derived name, so the import is relative.
"""

from .comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
