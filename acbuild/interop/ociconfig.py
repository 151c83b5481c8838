"""OCI/Docker image configs: the JSON types of every field the converter reads, checked once
where the config is read, so a hostile config is a ConvertError naming the field rather than
a TypeError deep in the mapping (``"Labels": []``, ``"Env": {}``, ``"os": 7``)."""

from __future__ import annotations

from typing import Any

from acbuild.errors import ConvertError

_TOP_TEXT = ("os", "architecture", "variant", "created", "author", "os.version")
_INNER_TEXT = ("User", "WorkingDir", "StopSignal")
_INNER_COMMANDS = ("Entrypoint", "Cmd")  # a list of strings; Docker also accepts one string
_INNER_KEYED = ("Volumes", "ExposedPorts")  # objects whose keys are what counts


def check_config(config: Any, what: str) -> dict[str, Any]:
    """``config`` when every field the converter uses has its JSON type, else ConvertError."""
    if not isinstance(config, dict):
        raise ConvertError(f"{what}: expected a JSON object")
    for key in _TOP_TEXT:
        _text(config.get(key), f"{what}: '{key}'")
    for key in ("rootfs", "config"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise ConvertError(f"{what}: '{key}' must be an object")
    inner = config.get("config") or {}
    for key in _INNER_TEXT:
        _text(inner.get(key), f"{what}: 'config.{key}'")
    for key in _INNER_COMMANDS:
        value = inner.get(key)
        if not isinstance(value, str):
            _strings(value, f"{what}: 'config.{key}'")
    _strings(inner.get("Env"), f"{what}: 'config.Env'")
    for key in _INNER_KEYED:
        if inner.get(key) is not None and not isinstance(inner[key], dict):
            raise ConvertError(f"{what}: 'config.{key}' must be an object")
    labels = inner.get("Labels")
    if labels is not None and (not isinstance(labels, dict)
                               or not all(isinstance(v, str) for v in labels.values())):
        raise ConvertError(f"{what}: 'config.Labels' must be an object of strings")
    return config


def _text(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ConvertError(f"{where} must be a string")


def _strings(value: Any, where: str) -> None:
    if value is not None and (not isinstance(value, list)
                              or not all(isinstance(v, str) for v in value)):
        raise ConvertError(f"{where} must be a list of strings")
