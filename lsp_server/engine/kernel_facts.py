"""What this machine's kernels were found to do, kept in the cache dir: probed once, not every load.

Some facts about the kernels can only be learned by running them, and cost seconds
at every start: which call size keeps a row's bits (``linear.rows_per_call``: 0.6 s for
the default model in bf16, 1.3 s in fp32) is the first.  They depend on the CPU, the
PyTorch build and its settings, never on the text being completed, so they are saved
per machine identity: the CPU's model name and instruction-set flags, the thread count,
PyTorch's version and build configuration (which names its oneDNN and MKL), and the
environment variables that cap oneDNN's instruction set.  A change of any of these is
another identity, probed afresh.  A saved file that cannot be read or holds something
unexpected is ignored (logged) and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..paths import cache_root, write_atomically

log = logging.getLogger(__name__)

FORMAT = 1
_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "MKL_ENABLE_INSTRUCTIONS",
                  "ATEN_CPU_CAPABILITY")


def _cpu_description() -> str:
    """The first processor's model name and flags (Linux), else what ``platform`` knows."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
    wanted = ("model name", "flags", "Features", "CPU part")  # x86, then ARM's names
    return "|".join(fields.get(name, "").strip() for name in wanted) + f"|{platform.machine()}"


def machine_identity() -> str:
    """Everything a kernel's numerics may depend on here, as one string."""
    settings = [f"{name}={os.environ.get(name, '')}" for name in _ISA_VARIABLES]
    return "\n".join([_cpu_description(), f"threads={torch.get_num_threads()}", torch.__version__,
                      torch.__config__.show(), *settings])


class KernelFacts:
    """A JSON map of facts for one machine identity, written through on every new fact."""

    def __init__(self, path: Path, identity: str) -> None:
        self.path = path
        self.identity = identity
        self._facts = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable kernel facts %s: %s", self.path, exc)
            return {}
        if not (isinstance(data, dict) and data.get("format") == FORMAT and data.get("identity") == self.identity
                and isinstance(data.get("facts"), dict)):
            log.warning("ignoring kernel facts %s: another format or machine", self.path)
            return {}
        return data["facts"]

    def get(self, key: str) -> Any:
        """The saved fact, or None if there is none (callers check that it has the shape they expect)."""
        return self._facts.get(key)

    def put(self, key: str, value: Any) -> None:
        self._facts[key] = value
        document = {"format": FORMAT, "identity": self.identity, "facts": self._facts}
        try:
            write_atomically(self.path, lambda handle: handle.write(json.dumps(document, indent=1).encode()))
        except OSError as exc:  # a read-only cache dir: probe again next time
            log.warning("cannot save kernel facts to %s: %s", self.path, exc)


def this_machine() -> KernelFacts:
    """The facts file of this machine identity in the cache dir."""
    identity = machine_identity()
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return KernelFacts(cache_root() / "calibration" / f"kernel-facts-{digest}.json", identity)
