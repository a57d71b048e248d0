"""Execute HumanEval tests on a completion, in a child process with a timeout.

Model output is untrusted code: it never runs in the benchmark's own process.  The
child runs in isolated mode (``-I``) in an empty temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def postprocess(completion: str) -> str:
    """The usual HumanEval cut: the completion up to the first top-level follow-up."""
    cut = min((i for s in STOP_SEQUENCES if (i := completion.find(s)) != -1), default=len(completion))
    return completion[:cut]


def passes(problem: dict, completion: str, timeout: float = 10.0) -> bool:
    program = (
        problem["prompt"] + postprocess(completion) + "\n\n" + problem["test"] + f"\n\ncheck({problem['entry_point']})\n"
    )
    with tempfile.TemporaryDirectory(prefix="swiftguard-he-") as workdir:
        try:
            run = subprocess.run(
                [sys.executable, "-I", "-c", program],
                cwd=workdir, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False
    return run.returncode == 0
