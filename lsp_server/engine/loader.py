"""Load any causal LM through transformers: the default, a folder, a GGUF file or a hub id.

Weights come only from safetensors or GGUF (``use_safetensors=True``: never pickle), and
``trust_remote_code`` is off unless the user turns it on.  GGUF files are dequantized
once into a safetensors folder in the cache, keyed by path, size and mtime, because
dequantizing on every start costs most of a minute.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..paths import cache_root
from . import attention, default_model, linear, prompt_calls, small_calls
from .device import resolve_device, resolve_dtype
from .kernel_facts import this_machine

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is meant for the user."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    kernels: str = "transformers"
    """Which linear/attention kernels run the model: verify-cost curves are kept per kernel."""
    half_copy: bool = False
    """Whether every linear weight is still at hand for a float16 copy (``speculation.model_draft``)."""


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file into a safetensors model folder at ``target``."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # gguf raises assorted errors on a corrupt file
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {exc}") from exc
    # The tensors are already dequantized to plain floats; what remains of the GGUF
    # "quantizer" only blocks serialization.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _converted_gguf(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache_root() / "gguf" / f"{path.stem}-{key[:16]}"
    if not (target / "config.json").exists():
        staged = target.with_name(target.name + ".partial")
        shutil.rmtree(staged, ignore_errors=True)
        convert_gguf(path, staged)
        staged.rename(target)
    return target


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or "\\" in spec or spec.count("/") > 1


def resolve_source(spec: str | None, progress: default_model.Progress) -> tuple[str, str]:
    """Map a model setting to (what to pass to from_pretrained, a display name)."""
    if not spec or spec == "default":
        try:
            return str(default_model.prepare(progress)), default_model.MODEL_ID
        except default_model.DefaultModelUnavailable as exc:
            raise ModelLoadError(str(exc)) from exc
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        progress(f"converting {path.name} to safetensors (first use only)")
        return str(_converted_gguf(path)), spec
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"model folder {path} has no .safetensors weights (pickle is refused)")
        return str(path), spec
    if _looks_like_path(spec):
        raise ModelLoadError(f"model path {spec!r} does not exist")
    return spec, spec


def load(
    spec: str | None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: default_model.Progress = lambda _msg: None,
    draft_copy: bool = False,
) -> LoadedModel:
    """Load model and tokenizer, ready for inference on the chosen device.

    ``draft_copy`` keeps float16 copies of the weights that CPU packing would free, so that
    speculation can draft with a half-precision copy of a float32 model (1.1 GB more for the
    default model; made here because packed weights cannot be read back)."""
    started = time.perf_counter()
    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    torch_dtype = resolve_dtype(dtype, torch_device)
    source, name = resolve_source(spec, progress)
    progress(f"loading {name} on {torch_device} ({str(torch_dtype).removeprefix('torch.')})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **({"attn_implementation": attention.register()} if torch_device.type == "cpu" else {}),
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {exc}") from exc
    if not tokenizer.is_fast:
        raise ModelLoadError(f"model {name!r} has no fast tokenizer (tokenizer.json), which is required")
    model.to(torch_device).eval()
    kernels = model.config._attn_implementation
    keep_half = draft_copy and torch_dtype == torch.float32
    if torch_device.type == "cpu":  # with ``attention``: a token's bits do not depend on its pass
        kernels += f", {linear.install_row_invariant(model, keep_half=keep_half)} linear"
        kernels += _split_prompts(model) + _pad_small_calls(model)
    half_copy = keep_half or "packed" not in kernels
    seconds = time.perf_counter() - started
    log.info("loaded %s on %s/%s (%s) in %.1fs", name, torch_device, torch_dtype, kernels, seconds)
    return LoadedModel(model, tokenizer, name, torch_device, torch_dtype, seconds, kernels, half_copy)


def _split_prompts(model: PreTrainedModel) -> str:
    """Time the body's layers on prompt-sized inputs once per machine (``prompt_calls``; the
    LM head takes a prompt's last row only) and say which kinds run prompts in pieces."""
    body = [module for module in model.base_model.modules() if isinstance(module, linear.RowInvariantLinear)]
    split = prompt_calls.split_prompts(body, this_machine())
    return "".join(f", prompts in {size}-row calls for {_shape(kind)}" for kind, size in split.items())


def _pad_small_calls(model: PreTrainedModel) -> str:
    """Time single rows through every layer kind once per machine (``small_calls``) and say
    which kinds pad them to more than two rows."""
    layers = [module for module in model.modules() if isinstance(module, linear.RowInvariantLinear)]
    padded = small_calls.pad_small_calls(layers, this_machine())
    return "".join(f", single rows as {size} for {_shape(kind)}" for kind, size in padded.items())


def _shape(kind: str) -> str:
    """A layer kind's (``linear.layer_kind``) shape, as the load log names it: in x out."""
    return "x".join(kind.split("|")[1:3])
