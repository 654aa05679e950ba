"""ComfyUI workflows: the txt2img template, its placeholders, and reading a job's outputs.

A workflow is ComfyUI's API format (``{node id: {"class_type", "inputs"}}``,
what "Save (API Format)" exports). Placeholders are strings ``"{{name}}"``: a
string that is exactly one placeholder becomes the value itself (a number
stays a number), one that holds some gets them written in. The names are
``prompt``, ``negative_prompt``, ``model`` (the checkpoint the request names),
``width``, ``height``, ``batch_size`` (the request's ``n``), ``seed``, ``steps``,
``cfg``, ``sampler_name`` and ``scheduler``. The shipped template
(``comfyui_txt2img.json``: checkpoint, two prompts, KSampler, VAE decode, save)
serves any Stable Diffusion checkpoint; a connection's ``workflow`` setting
replaces it, and must hold ``{{prompt}}``.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import orjson

TEMPLATE = "comfyui_txt2img.json"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
#: what a request leaves unsaid, and the connection's ``defaults`` setting did not say
DEFAULTS: dict[str, Any] = {"negative_prompt": "", "steps": 20, "cfg": 7.0,
                            "sampler_name": "euler", "scheduler": "normal"}
#: the placeholders a client may fill from its request's other fields
CLIENT_FIELDS = frozenset({"negative_prompt", "steps", "cfg", "sampler_name", "scheduler",
                           "seed"})


def default_template() -> dict[str, Any]:
    """The txt2img workflow shipped with the package."""
    text = resources.files("omniroute.providers").joinpath(TEMPLATE).read_bytes()
    template: dict[str, Any] = orjson.loads(text)
    return template


def check_workflow(workflow: Any) -> dict[str, Any]:
    """``workflow`` if it is an API-format workflow holding ``{{prompt}}``, else ValueError."""
    if not isinstance(workflow, dict) or not workflow or not all(
            isinstance(node, dict) and isinstance(node.get("class_type"), str)
            for node in workflow.values()):
        raise ValueError("workflow must be a ComfyUI workflow in API format: "
                         "{\"<node id>\": {\"class_type\": ..., \"inputs\": {...}}, ...}")
    if "{{prompt}}" not in orjson.dumps(workflow).decode():
        raise ValueError("workflow must hold the placeholder \"{{prompt}}\" where the prompt "
                         "goes")
    return workflow


def fill(workflow: Any, values: dict[str, Any]) -> Any:
    """A copy of ``workflow`` with its placeholders replaced (unknown ones left as they are)."""
    if isinstance(workflow, dict):
        return {k: fill(v, values) for k, v in workflow.items()}
    if isinstance(workflow, list):
        return [fill(v, values) for v in workflow]
    if isinstance(workflow, str):
        whole = _PLACEHOLDER.fullmatch(workflow)
        if whole is not None and whole[1] in values:
            return values[whole[1]]
        return _PLACEHOLDER.sub(
            lambda m: str(values[m[1]]) if m[1] in values else m[0], workflow)
    return workflow


def output_files(entry: Any) -> list[dict[str, str]]:
    """The images a finished job saved, in node order: ``{filename, subfolder, type}``.

    Saved images (``type: "output"``) when there are any, else the previews."""
    outputs = entry.get("outputs") if isinstance(entry, dict) else None
    if not isinstance(outputs, dict):
        return []
    found: list[dict[str, str]] = []
    for node_id in sorted(outputs, key=_node_order):
        node = outputs[node_id]
        images = node.get("images") if isinstance(node, dict) else None
        for image in images if isinstance(images, list) else ():
            if isinstance(image, dict) and isinstance(image.get("filename"), str):
                found.append({"filename": image["filename"],
                              "subfolder": str(image.get("subfolder") or ""),
                              "type": str(image.get("type") or "output")})
    saved = [f for f in found if f["type"] == "output"]
    return saved or found


def job_error(entry: Any) -> str | None:
    """Why a job failed (its ``execution_error`` message), or None when it did not."""
    status = entry.get("status") if isinstance(entry, dict) else None
    if not isinstance(status, dict) or status.get("status_str") != "error":
        return None
    for message in status.get("messages") or []:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error" \
                and isinstance(message[1], dict):
            detail = message[1]
            return (f"{detail.get('node_type', 'a node')} failed: "
                    f"{detail.get('exception_message', 'no message')}".strip())
    return "the job ended with an error"


def refusal(data: Any) -> str | None:
    """Why ``POST /prompt`` refused a workflow, from its 400 body ``{"error": {"type",
    "message", "details"}, "node_errors": {node_id: {"errors": [{"message", "details"}],
    "class_type"}}}`` (ComfyUI's ``execution.validate_prompt``): the error's message and
    details, then the first node error's, e.g. ``Prompt outputs failed validation: node
    4 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'x' not in [...]``. None
    when the body is not that shape."""
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    error = data["error"]
    parts = [str(error[k]) for k in ("message", "details") if error.get(k)]
    nodes = data.get("node_errors")
    for node_id, node in sorted(nodes.items(), key=lambda item: _node_order(str(item[0]))) \
            if isinstance(nodes, dict) else ():
        errors = node.get("errors") if isinstance(node, dict) else None
        first = errors[0] if isinstance(errors, list) and errors else None
        if not isinstance(first, dict):
            continue
        kind = node.get("class_type")
        where = f"node {node_id}" + (f" ({kind})" if isinstance(kind, str) else "")
        said = [str(first[k]) for k in ("message", "details") if first.get(k)]
        parts.append(f"{where}: {': '.join(said) or 'invalid'}")
        break
    return ": ".join(parts) or None


def checkpoints(object_info: Any) -> list[str]:
    """The checkpoint names of ``GET /object_info/CheckpointLoaderSimple`` (the list form
    ``[[names...], {...}]`` and the ``["COMBO", {"options": [...]}]`` form alike)."""
    try:
        spec = object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    except (KeyError, TypeError):
        return []
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        names = spec[0]
    elif isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict):
        names = spec[1].get("options") or []
    else:
        names = []
    return [name for name in names if isinstance(name, str)]


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)
