"""Each built-in tool's own configuration, rewritten to use the gateway.

One function per tool, pure: it reads the files it needs through ``read`` and
returns their new text (:class:`~omniroute.clitools.tool.Edits`). Only the keys
that point the tool at omniroute change; everything else in the file stays.
Where each file lives and what each key means is recorded, with its source, in
docs/cli-tools.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omniroute.clitools.files import (
    dump_json,
    dump_yaml,
    load_json,
    load_toml,
    load_yaml,
    set_dotenv,
    set_yaml_keys,
)
from omniroute.clitools.tool import ConfigUnreadable, Edits, Places, Reader, Target

#: the name omniroute's own entries take in the tools' provider lists
PROVIDER_ID = "omniroute"
#: the variable that carries the key where a tool names one (Qwen Code)
KEY_VARIABLE = "OMNIROUTE_API_KEY"
#: the suffix that marks omniroute's model entries (Continue)
ENTRY_MARK = " (omniroute)"

_COMMENTS_DROPPED = "{path} had comments or trailing commas, which JSON cannot keep; " \
                    "the backup has the original"
_YAML_REWRITTEN = "{path} was written whole, so its comments are gone; the backup has " \
                  "the original"


def _object(path: Path, parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]``, a JSON object, created when missing."""
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise ConfigUnreadable(path, f"{key!r} is not an object")
    return value


def _list(path: Path, parent: dict[str, Any], key: str) -> list[Any]:
    value = parent.setdefault(key, [])
    if not isinstance(value, list):
        raise ConfigUnreadable(path, f"{key!r} is not a list")
    return value


# ---------------------------------------------------------------------- Claude Code


def claude_dir(places: Places) -> Path:
    return places.dir("CLAUDE_CONFIG_DIR", places.home / ".claude")


def configure_claude_code(places: Places, target: Target, read: Reader) -> Edits:
    """``settings.json``'s ``env``: the base URL (the root: Claude Code adds ``/v1/messages``),
    the token (sent as a bearer token), the model and the small model for background work."""
    path = claude_dir(places) / "settings.json"
    data, lossy = load_json(path, read(path))
    env = _object(path, data, "env")
    notes = [_COMMENTS_DROPPED.format(path=path)] if lossy else []
    if env.pop("ANTHROPIC_API_KEY", None) is not None:  # both would be sent
        notes.append(f"ANTHROPIC_API_KEY was removed from {path}'s env (the key now goes as "
                     "ANTHROPIC_AUTH_TOKEN)")
    env.update({
        "ANTHROPIC_BASE_URL": target.base_url,
        "ANTHROPIC_AUTH_TOKEN": target.key,
        "ANTHROPIC_MODEL": target.model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": target.small_model or target.model,
    })
    if "apiKeyHelper" in data:
        notes.append(f"{path} sets apiKeyHelper, whose key Claude Code sends instead of "
                     "ANTHROPIC_AUTH_TOKEN: remove it to use the omniroute key")
    return Edits({path: dump_json(data)}, tuple(notes), frozenset({path}))


# ---------------------------------------------------------------------- Codex


def codex_dir(places: Places) -> Path:
    return places.dir("CODEX_HOME", places.home / ".codex")


def configure_codex(places: Places, target: Target, read: Reader) -> Edits:
    """``config.toml``: a ``[model_providers.omniroute]`` speaking the Responses API with
    the key as its bearer token, selected by ``model_provider``; comments and layout kept."""
    import tomlkit  # only here (and in load_toml): the gateway need not carry it

    path = codex_dir(places) / "config.toml"
    doc = load_toml(path, read(path))
    doc["model"] = target.model
    doc["model_provider"] = PROVIDER_ID
    if "model_providers" not in doc:
        doc["model_providers"] = tomlkit.table(is_super_table=True)
    providers = doc["model_providers"]
    if not isinstance(providers, dict):
        raise ConfigUnreadable(path, "'model_providers' is not a table")
    provider = tomlkit.table()
    provider.update({"name": PROVIDER_ID, "base_url": target.v1, "wire_api": "responses",
                     "experimental_bearer_token": target.key})
    providers[PROVIDER_ID] = provider
    notes = []
    if "profile" in doc:
        notes.append(f"{path} selects the profile {doc['profile']!r}, whose own model or "
                     "model_provider wins over the top-level ones")
    return Edits({path: tomlkit.dumps(doc)}, tuple(notes), frozenset({path}))


# ---------------------------------------------------------------------- Gemini CLI


def gemini_dir(places: Places) -> Path:
    return places.dir("GEMINI_CLI_HOME", places.home) / ".gemini"


def configure_gemini_cli(places: Places, target: Target, read: Reader) -> Edits:
    """``settings.json`` selects the API-key sign-in and the model; ``.gemini/.env`` holds
    the base URL (the root: the SDK adds ``/v1beta/models/...``), the key and the model."""
    settings, env_file = gemini_dir(places) / "settings.json", gemini_dir(places) / ".env"
    data, lossy = load_json(settings, read(settings))
    auth = _object(settings, _object(settings, data, "security"), "auth")
    auth["selectedType"] = "gemini-api-key"
    if not isinstance(data.get("model", {}), dict):  # the old string form
        data["model"] = {}
    _object(settings, data, "model")["name"] = target.model
    env = set_dotenv(read(env_file), {"GOOGLE_GEMINI_BASE_URL": target.base_url,
                                      "GEMINI_API_KEY": target.key,
                                      "GEMINI_MODEL": target.model})
    notes = [_COMMENTS_DROPPED.format(path=settings)] if lossy else []
    notes.append(f"Gemini CLI reads {env_file} only when no .env file is found from the "
                 "working directory up: a project's .env (or an exported GEMINI_API_KEY) wins")
    return Edits({settings: dump_json(data), env_file: env}, tuple(notes),
                 frozenset({env_file}))


# ---------------------------------------------------------------------- OpenCode


def opencode_dir(places: Places) -> Path:
    return places.config_home / "opencode"


def configure_opencode(places: Places, target: Target, read: Reader) -> Edits:
    """``opencode.json``: a provider ``omniroute`` through ``@ai-sdk/openai-compatible``
    (Chat Completions), its model listed, and ``model`` set to ``omniroute/<model>``."""
    folder = opencode_dir(places)
    path = next((p for p in (folder / "opencode.json", folder / "opencode.jsonc")
                 if read(p) is not None), folder / "opencode.json")
    data, lossy = load_json(path, read(path))
    if "$schema" not in data:  # OpenCode adds it first to a file that lacks it
        data = {"$schema": "https://opencode.ai/config.json", **data}
    provider = _object(path, _object(path, data, "provider"), PROVIDER_ID)
    provider.update({"npm": "@ai-sdk/openai-compatible", "name": PROVIDER_ID})
    options = _object(path, provider, "options")
    options.update({"baseURL": target.v1, "apiKey": target.key})
    models = _object(path, provider, "models")
    for model in filter(None, (target.model, target.small_model)):
        models.setdefault(model, {"name": model})
    data["model"] = f"{PROVIDER_ID}/{target.model}"
    if target.small_model:
        data["small_model"] = f"{PROVIDER_ID}/{target.small_model}"
    notes = (_COMMENTS_DROPPED.format(path=path),) if lossy else ()
    return Edits({path: dump_json(data)}, notes, frozenset({path}))


# ---------------------------------------------------------------------- Qwen Code


def qwen_dir(places: Places) -> Path:
    return places.home / ".qwen"


def configure_qwen_code(places: Places, target: Target, read: Reader) -> Edits:
    """``settings.json``: an ``openai`` model provider entry for the model (base URL and
    the name of the variable holding the key), the key in ``env``, the OpenAI-compatible
    sign-in and the model selected."""
    path = qwen_dir(places) / "settings.json"
    data, lossy = load_json(path, read(path))
    entries = _list(path, _object(path, data, "modelProviders"), "openai")
    entries[:] = [e for e in entries if not (
        isinstance(e, dict) and (e.get("envKey") == KEY_VARIABLE or e.get("id") == target.model))]
    entries.insert(0, {"id": target.model, "name": f"{target.model}{ENTRY_MARK}",
                       "baseUrl": target.v1, "envKey": KEY_VARIABLE})
    _object(path, data, "env")[KEY_VARIABLE] = target.key
    _object(path, _object(path, data, "security"), "auth")["selectedType"] = "openai"
    if not isinstance(data.get("model", {}), dict):
        data["model"] = {}
    _object(path, data, "model")["name"] = target.model
    notes = (_COMMENTS_DROPPED.format(path=path),) if lossy else ()
    return Edits({path: dump_json(data)}, notes, frozenset({path}))


# ---------------------------------------------------------------------- Aider


def configure_aider(places: Places, target: Target, read: Reader) -> Edits:
    """``~/.aider.conf.yml``: the OpenAI-compatible base and key, and the model with the
    ``openai/`` prefix that sends aider (through LiteLLM) to that base."""
    path = places.home / ".aider.conf.yml"
    values: dict[str, Any] = {"openai-api-base": target.v1, "openai-api-key": target.key,
                              "model": f"openai/{target.model}"}
    if target.small_model:
        values["weak-model"] = f"openai/{target.small_model}"
    text, whole = set_yaml_keys(path, read(path), values)
    notes = (_YAML_REWRITTEN.format(path=path),) if whole else ()
    return Edits({path: text}, notes, frozenset({path}))


# ---------------------------------------------------------------------- Goose


def goose_dir(places: Places) -> Path:
    return places.config_home / "goose"


def configure_goose(places: Places, target: Target, read: Reader) -> Edits:
    """``config.yaml``: the ``openai`` provider at the gateway (host and path apart) and
    the model; ``secrets.yaml``: the key as ``OPENAI_API_KEY``."""
    config, secrets = goose_dir(places) / "config.yaml", goose_dir(places) / "secrets.yaml"
    text, whole = set_yaml_keys(config, read(config), {
        "GOOSE_PROVIDER": "openai", "GOOSE_MODEL": target.model,
        "OPENAI_HOST": target.base_url, "OPENAI_BASE_PATH": "v1/chat/completions"})
    secret_text, secret_whole = set_yaml_keys(secrets, read(secrets),
                                              {"OPENAI_API_KEY": target.key})
    notes = [_YAML_REWRITTEN.format(path=p) for p, w in ((config, whole),
                                                          (secrets, secret_whole)) if w]
    notes.append(f"Goose reads {secrets} when its keyring is off (GOOSE_DISABLE_KEYRING set); "
                 "with the system keyring, store the key with `goose configure` or export "
                 "OPENAI_API_KEY")
    return Edits({config: text, secrets: secret_text}, tuple(notes), frozenset({secrets}))


# ---------------------------------------------------------------------- Continue


def continue_dir(places: Places) -> Path:
    return places.dir("CONTINUE_GLOBAL_DIR", places.home / ".continue")


def configure_continue(places: Places, target: Target, read: Reader) -> Edits:
    """``config.yaml``'s ``models``: an OpenAI-compatible entry first (chat, edit, apply);
    a setup still on the older ``config.json`` (and no ``config.yaml``) is edited there,
    since a new ``config.yaml`` would replace it whole."""
    folder = continue_dir(places)
    yaml_path, json_path = folder / "config.yaml", folder / "config.json"
    yaml_text = read(yaml_path)
    name = f"{target.model}{ENTRY_MARK}"
    if yaml_text is None and read(json_path) is not None:
        data, lossy = load_json(json_path, read(json_path))
        models = _list(json_path, data, "models")
        models[:] = [m for m in models if not (isinstance(m, dict)
                                               and str(m.get("title", "")).endswith(ENTRY_MARK))]
        models.insert(0, {"title": name, "provider": "openai", "model": target.model,
                          "apiBase": target.v1, "apiKey": target.key})
        notes = (_COMMENTS_DROPPED.format(path=json_path),) if lossy else ()
        return Edits({json_path: dump_json(data)}, notes, frozenset({json_path}))
    data = load_yaml(yaml_path, yaml_text)
    for key, value in (("name", "Local Config"), ("version", "1.0.0"), ("schema", "v1")):
        data.setdefault(key, value)
    models = _list(yaml_path, data, "models")
    models[:] = [m for m in models if not (isinstance(m, dict)
                                           and str(m.get("name", "")).endswith(ENTRY_MARK))]
    models.insert(0, {"name": name, "provider": "openai", "model": target.model,
                      "apiBase": target.v1, "apiKey": target.key,
                      "roles": ["chat", "edit", "apply"]})
    had_comments = any(line.lstrip().startswith("#") for line in (yaml_text or "").splitlines())
    notes = (_YAML_REWRITTEN.format(path=yaml_path),) if had_comments else ()
    return Edits({yaml_path: dump_yaml(data)}, notes, frozenset({yaml_path}))
