"""The verify-cost curve is saved only when it was measured on a machine nobody else was using."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lsp_server.engine.decoding import Decoder
from lsp_server.engine.prompt import PromptBuilder
from lsp_server.engine.speculation.calibration import BUSY_ELSEWHERE, CpuShare, cost_model_for


def _share_reading(value: float | None) -> type[CpuShare]:
    """A CpuShare that reports ``value`` and counts how often a measurement was watched."""

    class Fixed(CpuShare):
        made = 0

        def __init__(self) -> None:
            Fixed.made += 1

        def others(self) -> float | None:
            return value

    return Fixed


def test_a_curve_measured_while_the_machine_was_busy_is_not_saved(tiny_loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("SWIFTGUARD_CACHE_DIR", str(tmp_path))
    verify = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, PromptBuilder(tiny_loaded.tokenizer).stop_ids).verify
    vocab = int(tiny_loaded.model.config.vocab_size)
    busy = _share_reading(BUSY_ELSEWHERE + 0.5)
    first = cost_model_for(verify, "tiny", vocab, "test", share=busy)
    assert len(first.sizes) == len(first.seconds) and not list(tmp_path.rglob("verify-cost-*.json"))
    cost_model_for(verify, "tiny", vocab, "test", share=busy)
    assert busy.made == 2  # nothing saved, so the next start measures again

    quiet = _share_reading(BUSY_ELSEWHERE / 2)
    cost_model_for(verify, "tiny", vocab, "test", share=quiet)
    assert len(list(tmp_path.rglob("verify-cost-*.json"))) == 1
    cost_model_for(verify, "tiny", vocab, "test", share=quiet)
    assert quiet.made == 1  # read back from the cache dir, not measured again
    # Where the kernel's counters are missing, the curve is saved as before.
    unknown = _share_reading(None)
    cost_model_for(verify, "tiny", vocab, "other kernels", share=unknown)
    assert len(list(tmp_path.rglob("verify-cost-*.json"))) == 2


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs the Linux kernel's CPU counters")
def test_cpu_share_sees_other_processes_spinning():
    spin = "import time\nend = time.perf_counter() + 4\nwhile time.perf_counter() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # let them start
        watch = CpuShare()
        time.sleep(1.5)
        others = watch.others()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert others is not None and others > 0.5
