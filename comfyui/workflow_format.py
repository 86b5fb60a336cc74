"""API-format workflows (what ``POST /prompt`` takes) as UI-format ones (what ComfyUI's page loads and saves).

An API workflow names each input of a node; a UI workflow lists a node's link sockets (``inputs``), its
widget values by position (``widgets_values``, in the order of the node's ``INPUT_TYPES``, required then
optional) and the links as ``[id, from_node, from_slot, to_node, to_slot, type]``. Both are read from a
node's ``/object_info`` entry, so the same code serves our nodes (described here from their classes) and
ComfyUI's own ones (from a running ComfyUI's ``/object_info``, or the facts below).

Regenerate the example UI workflows after changing an API one: ``python -m comfyui.workflow_format``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

WORKFLOWS = Path(__file__).resolve().parent / "workflows"
# The types ComfyUI's page draws as widgets; every other type (and any forceInput input) is a link socket.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# The page adds a control_after_generate widget (its value right after the number) to these INT inputs.
SEED_NAMES = ("seed", "noise_seed")
CONTROL_AFTER_GENERATE = "fixed"  # replay the workflow as saved
# ComfyUI's own nodes that the example workflows use, as ComfyUI 0.3.64's /object_info describes them
# (the real-ComfyUI test checks these facts against a running one).
BUILTIN_INFO: dict[str, dict[str, Any]] = {
    "CreateVideo": {
        "input": {
            "required": {
                "images": ["IMAGE", {}],
                "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}],
            },
            "optional": {"audio": ["AUDIO", {}]},
        },
        "output": ["VIDEO"],
        "output_name": ["VIDEO"],
    },
    "SaveVideo": {
        "input": {
            "required": {
                "video": ["VIDEO", {}],
                "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                "format": ["COMBO", {"default": "auto", "options": ["auto", "mp4"]}],
                "codec": ["COMBO", {"default": "auto", "options": ["auto", "h264"]}],
            }
        },
        "output": [],
        "output_name": [],
    },
    "SaveImage": {
        "input": {
            "required": {
                "images": ["IMAGE", {}],
                "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            }
        },
        "output": [],
        "output_name": [],
    },
}
# Layout: nodes in columns by their depth in the graph (sources left), stacked in each column.
COLUMN_WIDTH, NODE_WIDTH, GAP = 440, 400, 40
SLOT_HEIGHT, WIDGET_HEIGHT, TITLE_HEIGHT, MULTILINE_HEIGHT = 22, 24, 30, 80


def node_info(cls: type) -> dict[str, Any]:
    """One of our node classes as ComfyUI's ``/object_info`` describes a node (the fields used here)."""
    return {
        "input": cls.INPUT_TYPES(),
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
    }


def pack_object_info() -> dict[str, dict[str, Any]]:
    """``/object_info`` of the pack's nodes and of the ComfyUI nodes the example workflows use."""
    from .nodes import NODE_CLASS_MAPPINGS

    return {**BUILTIN_INFO, **{name: node_info(cls) for name, cls in NODE_CLASS_MAPPINGS.items()}}


def input_specs(info: Mapping[str, Any]) -> list[tuple[str, Sequence, bool]]:
    """A node's inputs in ComfyUI's order: (name, spec, optional), required then optional."""
    inputs = info["input"]
    return [
        (name, spec, section == "optional")
        for section in ("required", "optional")
        for name, spec in inputs.get(section, {}).items()
    ]


def spec_options(spec: Sequence) -> Mapping[str, Any]:
    """The options of an input spec (``{}`` when it has none)."""
    return spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}


def is_widget(spec: Sequence) -> bool:
    """Whether the page draws an input as a widget (a combo list or a primitive type, not forced to a socket)."""
    return (isinstance(spec[0], (list, tuple)) or spec[0] in WIDGET_TYPES) and not spec_options(spec).get("forceInput")


def has_control(name: str, spec: Sequence) -> bool:
    """Whether the page gives a widget a control_after_generate companion (seeds, or asked for)."""
    return bool(spec_options(spec).get("control_after_generate")) or (spec[0] == "INT" and name in SEED_NAMES)


def widget_default(spec: Sequence) -> Any:
    """The value a widget shows when nothing is set (a linked widget still has one in ``widgets_values``)."""
    options = spec_options(spec)
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], (list, tuple)) else options.get("options", [])
    return choices[0] if choices else {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])


def is_link(value: Any) -> bool:
    """An API input that is a link: ``[node_id, output_slot]``."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def node_ids(api: Mapping[str, Any]) -> dict[str, int]:
    """API node ids (strings) -> UI node ids (numbers): numeric ids kept, others numbered after them."""
    numeric = {key: int(key) for key in api if key.isdigit()}
    following = max(numeric.values(), default=0)
    return numeric | {key: following + i for i, key in enumerate((k for k in api if k not in numeric), 1)}


def depths(api: Mapping[str, Any]) -> dict[str, int]:
    """Each node's longest distance from a node with no links in (the columns of the layout, the run order)."""
    found: dict[str, int] = {}

    def depth(key: str, seen: tuple[str, ...] = ()) -> int:
        if key not in found:
            if key in seen:
                raise ValueError(f"workflow has a cycle through node {key}")
            sources = [v[0] for v in api[key]["inputs"].values() if is_link(v)]
            found[key] = 1 + max((depth(s, (*seen, key)) for s in sources), default=-1)
        return found[key]

    for key in api:
        depth(key)
    return found


def ui_node(key: str, node: Mapping[str, Any], info: Mapping[str, Any], ids: Mapping[str, int]) -> dict[str, Any]:
    """One node of a UI workflow, its links not yet numbered (``inputs[i]["from"]`` holds the API link)."""
    given = node["inputs"]
    unknown = set(given) - {name for name, _, _ in input_specs(info)}
    if unknown:
        raise ValueError(f"node {key} ({node['class_type']}): no inputs {sorted(unknown)}")
    sockets: list[dict[str, Any]] = []
    linked_widgets: list[dict[str, Any]] = []
    values: list[Any] = []
    for name, spec, optional in input_specs(info):
        value = given.get(name)
        if not is_widget(spec):
            sockets.append({"name": name, "type": spec[0], **({"shape": 7} if optional else {}), "from": value})
            continue
        if is_link(value):  # a widget fed by a link: a socket after the others, the widget keeps a value
            linked_widgets.append({"name": name, "type": spec[0], "widget": {"name": name}, "from": value})
            value = widget_default(spec)
        values.append(widget_default(spec) if value is None else value)
        if has_control(name, spec):
            values.append(CONTROL_AFTER_GENERATE)
    outputs = [
        {"name": label, "type": kind, "links": [], "slot_index": slot}
        for slot, (kind, label) in enumerate(zip(info["output"], info["output_name"], strict=True))
    ]
    return {
        "id": ids[key],
        "type": node["class_type"],
        "pos": [0, 0],
        "size": [NODE_WIDTH, node_height(sockets + linked_widgets, outputs, values, info)],
        "flags": {},
        "order": 0,
        "mode": 0,
        "inputs": sockets + linked_widgets,
        "outputs": outputs,
        "properties": {"Node name for S&R": node["class_type"]},
        "widgets_values": values,
    }


def node_height(inputs: list, outputs: list, values: list, info: Mapping[str, Any]) -> int:
    """A node's drawn height: title, slot rows, one row per widget, more for multi-line text."""
    multiline = sum(1 for _, spec, _ in input_specs(info) if spec_options(spec).get("multiline"))
    slots = max(len(inputs), len(outputs))
    return TITLE_HEIGHT + SLOT_HEIGHT * slots + WIDGET_HEIGHT * len(values) + MULTILINE_HEIGHT * multiline + 10


def api_to_ui(api: Mapping[str, Any], object_info: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """An API-format workflow as a UI-format one (version 0.4), laid out in columns by graph depth.

    ``object_info`` describes every node type used (``/object_info`` of a running ComfyUI, or
    :func:`pack_object_info`). The UI id of each node is its API id; widget values follow ``INPUT_TYPES``
    order, seeds get a ``fixed`` control_after_generate, a widget fed by a link becomes a socket.
    """
    missing = sorted({node["class_type"] for node in api.values()} - set(object_info))
    if missing:
        raise KeyError(f"no /object_info for node types {missing}")
    ids = node_ids(api)
    depth = depths(api)
    keys = sorted(api, key=lambda k: (depth[k], ids[k]))
    nodes = {key: ui_node(key, api[key], object_info[api[key]["class_type"]], ids) for key in keys}
    links = number_links(nodes, ids)
    place(nodes, depth, keys)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(api, sort_keys=True))),  # stable across regenerations
        "revision": 0,
        "last_node_id": max(ids.values(), default=0),
        "last_link_id": len(links),
        "nodes": list(nodes.values()),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        "version": 0.4,
    }


def number_links(nodes: dict[str, dict[str, Any]], ids: Mapping[str, int]) -> list[list[Any]]:
    """Number the links (in node order), fill each socket's ``link`` and each output's ``links``."""
    links: list[list[Any]] = []
    for node in nodes.values():
        for slot, socket in enumerate(node["inputs"]):
            source = socket.pop("from")
            socket["link"] = None
            if not is_link(source):
                continue
            key, output = source
            if key not in nodes:
                raise ValueError(f"node {node['id']} links to missing node {key}")
            kind = nodes[key]["outputs"][output]["type"]
            link = [len(links) + 1, ids[key], output, node["id"], slot, kind]
            links.append(link)
            socket["link"] = link[0]
            nodes[key]["outputs"][output]["links"].append(link[0])
    return links


def place(nodes: dict[str, dict[str, Any]], depth: Mapping[str, int], keys: list[str]) -> None:
    """Positions (a column per depth, nodes stacked) and the run order."""
    tops: dict[int, int] = {}
    for order, key in enumerate(keys):
        column = depth[key]
        top = tops.get(column, 0)
        nodes[key]["pos"] = [column * COLUMN_WIDTH, top]
        nodes[key]["order"] = order
        tops[column] = top + nodes[key]["size"][1] + GAP


def ui_to_api(ui: Mapping[str, Any], object_info: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A UI-format workflow (as :func:`api_to_ui` writes them) back in API format, for ``POST /prompt``."""
    links = {link[0]: link for link in ui["links"]}
    api: dict[str, Any] = {}
    for node in ui["nodes"]:
        info = object_info[node["type"]]
        sockets = {socket["name"]: socket.get("link") for socket in node["inputs"]}
        values = iter(node["widgets_values"])
        inputs: dict[str, Any] = {}
        for name, spec, _ in input_specs(info):
            if is_widget(spec):
                inputs[name] = next(values)
                if has_control(name, spec):
                    next(values)
            if sockets.get(name) is not None:
                _, source, slot, _, _, _ = links[sockets[name]]
                inputs[name] = [str(source), slot]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def ui_path(api_path: Path) -> Path:
    """Where the UI twin of an API workflow lives: ``x_api.json`` -> ``x_ui.json``."""
    return api_path.with_name(api_path.name.removesuffix("_api.json") + "_ui.json")


def write_ui_workflows(folder: Path = WORKFLOWS) -> list[Path]:
    """Write the UI twin of every ``*_api.json`` in ``folder``; returns the files written."""
    info = pack_object_info()
    written = []
    for path in sorted(folder.glob("*_api.json")):
        ui = api_to_ui(json.loads(path.read_text()), info)
        ui_path(path).write_text(json.dumps(ui, indent=1, ensure_ascii=False) + "\n")
        written.append(ui_path(path))
    return written


if __name__ == "__main__":
    for written in write_ui_workflows():
        print(written)
