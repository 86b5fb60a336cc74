"""The example UI-format workflows: each is its API twin, as ComfyUI's page lays out nodes, links and widgets."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the pack is the repository's top-level ``comfyui`` package
    sys.path.insert(0, str(REPO))
fmt = importlib.import_module("comfyui.workflow_format")
NODES = importlib.import_module("comfyui.nodes").NODE_CLASS_MAPPINGS
API_FILES = sorted(fmt.WORKFLOWS.glob("*_api.json"))
IDS = [p.name.removesuffix("_api.json") for p in API_FILES]
LINK_TYPES = {"IMAGE", "MASK", "STRING_PROMPT", "FunModels", "RIFLEXT_ARGS", "CameraPose", "TransformerModel",
              "VAEModel", "TextEncoderModel", "Tokenizer", "ClipEncoderModel"}  # fmt: skip


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def expected_widgets(node: dict) -> list:
    """Widget values of one of our nodes as the test reads INPUT_TYPES: widget inputs in order (required, then
    optional), a linked widget at its default, and the page's control_after_generate value after a seed."""
    spec = NODES[node["class_type"]].INPUT_TYPES()
    values = []
    for name, definition in [*spec["required"].items(), *spec.get("optional", {}).items()]:
        options = definition[1] if len(definition) > 1 else {}
        if (isinstance(definition[0], str) and definition[0] in LINK_TYPES) or options.get("forceInput"):
            continue
        value = node["inputs"].get(name, options.get("default"))
        values.append(options["default"] if isinstance(value, list) and len(value) == 2 else value)
        if name == "seed":
            values.append("fixed")
    return values


def test_every_api_workflow_has_its_ui_twin_up_to_date() -> None:
    info = fmt.pack_object_info()
    assert len(API_FILES) >= 8
    for path in API_FILES:
        twin = fmt.ui_path(path)
        assert twin.is_file(), f"{twin.name} missing: run python -m comfyui.workflow_format"
        assert load(twin) == fmt.api_to_ui(load(path), info), f"{twin.name} is stale: python -m comfyui.workflow_format"


@pytest.mark.parametrize("path", API_FILES, ids=IDS)
def test_ui_workflow_matches_its_api_twin(path: Path) -> None:
    api, ui = load(path), load(fmt.ui_path(path))
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == len(ui["links"]) == len({link[0] for link in ui["links"]})
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert {k: n["class_type"] for k, n in api.items()} == {k: n["type"] for k, n in nodes.items()}

    # The same links: (from node, from slot, to node, to input name), typed by the source's output.
    api_links = {
        (value[0], value[1], key, name)
        for key, node in api.items()
        for name, value in node["inputs"].items()
        if isinstance(value, list)
    }
    ui_links = set()
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        socket = nodes[str(target)]["inputs"][target_slot]
        assert socket["link"] == link_id and link_id in nodes[str(source)]["outputs"][slot]["links"]
        assert nodes[str(source)]["outputs"][slot]["type"] == kind
        ui_links.add((str(source), slot, str(target), socket["name"]))
    assert ui_links == api_links

    for key, node in api.items():
        if node["class_type"] in NODES:
            assert nodes[key]["widgets_values"] == expected_widgets(node), f"{path.name} node {key}"
            cls = NODES[node["class_type"]]
            outputs = [(o["name"], o["type"]) for o in nodes[key]["outputs"]]
            names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
            assert outputs == list(zip(names, cls.RETURN_TYPES, strict=True))
    assert fmt.ui_to_api(ui, fmt.pack_object_info()) == api  # and back


def test_api_to_ui_rejects_what_it_cannot_describe() -> None:
    api = load(API_FILES[0])
    with pytest.raises(KeyError, match="no /object_info"):
        fmt.api_to_ui(api, {})
    node = next(iter(api.values()))
    node["inputs"]["no_such_input"] = 1
    with pytest.raises(ValueError, match="no_such_input"):
        fmt.api_to_ui(api, fmt.pack_object_info())
