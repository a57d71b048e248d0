"""Typed, validated user settings.

Editors send settings as loose JSON (``initializationOptions`` and
``workspace/didChangeConfiguration``).  Every key is checked here, one by one, so that a
single bad value is reported clearly and the rest of the update still applies; the bad
key keeps its previous value.  No torch here: this module belongs to the protocol layer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SECTION = "swiftguard"

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_string(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _string(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer between {low} and {high}")
        if not low <= value <= high:
            raise ValueError(f"expected an integer between {low} and {high}")
        return value

    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return check


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise ValueError("expected auto, cpu, mps, cuda or cuda:N")
    return value


@dataclass(frozen=True)
class Settings:
    """All user-facing settings, with their defaults.

    The JSON key of each field is its camelCase name (``max_new_tokens`` ->
    ``maxNewTokens``), as editors conventionally spell settings.
    """

    model: str | None = field(default=None, metadata={"check": _optional_string})
    """Model spec: None for the embedded default, a local folder, a ``.gguf`` file or a hub id."""
    device: str = field(default="auto", metadata={"check": _device})
    dtype: str = field(default="auto", metadata={"check": _choice(DTYPES)})
    max_new_tokens: int = field(default=128, metadata={"check": _int_range(1, 4096)})
    context_tokens: int = field(default=1024, metadata={"check": _int_range(64, 32768)})
    """Token budget of the prompt (prefix + suffix); far-away text is trimmed first.  1024,
    not 2048: on 38 repository tasks (requests, express) the default model's completions
    from 2048-token prompts were a little closer to the real code (edit similarity 0.302
    against 0.274; 18 tasks closer, 13 less close), but took 1.9x the time to the first
    token on a CPU, where that pass is most of a completion (see docs/how-it-works.md, Prompt)."""
    enable: bool = field(default=True, metadata={"check": _boolean})
    log_level: str = field(default="info", metadata={"check": _choice(LOG_LEVELS)})
    trust_remote_code: bool = field(default=False, metadata={"check": _boolean})
    speculation: bool = field(default=True, metadata={"check": _boolean})
    """Lossless speculative decoding (same output as plain greedy decoding, fewer passes)."""
    genguard: bool = field(default=True, metadata={"check": _boolean})
    """Stop at the logical end of the code with the learned GenGuard head (when one fits the model)."""
    self_draft: bool = field(default=True, metadata={"check": _boolean})
    """With speculation, a float32 model (a CPU without bf16) also drafts with a float16 copy
    of itself: HumanEval decodes about 1.2x faster than without it, for about 1.1 GB more memory."""
    general_corpus: bool = field(default=True, metadata={"check": _boolean})
    """Draft from general code too: the code of the toolchains installed here, in the document's language (indexed once in the background)."""

    def engine_key(self) -> tuple[Any, ...]:
        """The settings whose change requires rebuilding the engine."""
        return (self.model, self.device, self.dtype, self.trust_remote_code, self.speculation, self.genguard,
                self.self_draft)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_FIELDS = {_camel(f.name): f for f in dataclasses.fields(Settings)}


def check_setting(key: str, value: Any) -> Any:
    """The value of setting ``key`` (camelCase) as it would be applied; ValueError says why not."""
    return _FIELDS[key].metadata["check"](value)


@dataclass
class SettingsUpdate:
    """The outcome of applying user JSON: the new settings and what was wrong."""

    settings: Settings
    errors: list[str]
    changed: set[str]


def unwrap_section(raw: Any) -> Any:
    """Accept both ``{"swiftguard": {...}}`` and the bare ``{...}`` form."""
    if isinstance(raw, Mapping) and isinstance(raw.get(SECTION), Mapping):
        return raw[SECTION]
    return raw


def apply_settings(current: Settings, raw: Any) -> SettingsUpdate:
    """Validate ``raw`` key by key on top of ``current``.

    Unknown keys and invalid values are reported in ``errors`` and leave the previous
    value in place; valid keys are applied even when others fail.
    """
    raw = unwrap_section(raw)
    if raw is None:
        return SettingsUpdate(current, [], set())
    if not isinstance(raw, Mapping):
        return SettingsUpdate(current, ["settings must be a JSON object"], set())
    values: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        spec = _FIELDS.get(key)
        if spec is None:
            known = ", ".join(sorted(_FIELDS))
            errors.append(f"unknown setting {SECTION}.{key} (known: {known})")
            continue
        try:
            values[spec.name] = check_setting(key, value)
        except ValueError as exc:
            errors.append(
                f"invalid value {value!r} for {SECTION}.{key}: {exc}; "
                f"keeping {getattr(current, spec.name)!r}"
            )
    changed = {name for name, value in values.items() if getattr(current, name) != value}
    return SettingsUpdate(dataclasses.replace(current, **values), errors, changed)


def settings_as_json(settings: Settings) -> dict[str, Any]:
    """The camelCase JSON form, as shown by ``swiftguard.status``."""
    return {key: getattr(settings, spec.name) for key, spec in _FIELDS.items()}
