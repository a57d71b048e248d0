"""``swiftguard drafthead build``: a draft head from the code already on this machine, in one
command and a time budget, training included.

The head is not shipped, and the recipe that made the best ones (docs/draft-head.md) is three commands
with a dozen knobs over downloaded source distributions.  This runs that recipe on what
every machine that runs Swiftguard has: this Python's standard library and its installed
packages (site-packages: Swiftguard's own dependencies at least), plus any ``--source``
given.  The budget is split the way the time paid off in the recipe: most of it for the
model's own generations of function bodies written from their headers alone (what the head
meets at run time, and what taught it most), a little for windows of real files, then
training on everything until the budget ends.

The shards stay in the cache dir beside the head.  A later build adds a new generations shard
of functions not seen before (the files shard is made once) and trains on all of them,
so running the command again makes the head better: on held-out generations inside the
function, 1.86 times the generations bought about a point of first guesses (docs/draft-head.md).  It
continues the head it finds (``continuable_head``) rather than starting over: one epoch at
a lower rate, where a new head would need two and, on more shards, more time than the
budget leaves (a 45-minute build's training had stopped at 307 of 453 steps).
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path
from time import perf_counter as clock


GENERATION_SHARE = 0.42
"""Of the budget, for generated function bodies (80-200 positions/s on 2 cores)."""
FILES_SHARE = 0.08
"""Of the budget, for windows of real files (270-570 positions/s), on the first build only.

The rest trains: 2 epochs of the context head took about 0.9 times as long as making their
data on a 2-core AMD EPYC without AMX (December 3: 28 minutes of generations and 12 of files,
then 36 of training, 34 of them in the training loop, when the shares were 60% and 12%: a
45-minute build ran 75).  Training
stops at the budget's end anyway (``drafthead train --time-budget``)."""
FILE_POSITIONS_PER_SECOND = 570
"""The fastest rate seen (AMX): the files' step stops at its share of the time on slower CPUs."""
TRAIN_WRAP_UP_SECONDS = 30
"""After training: the bigram baseline, the report and saving the head."""
MIN_TRAIN_SHARE = 0.2
"""Training gets at least this share of the budget, even where making data ran over."""
GENERATED_SITES_PER_SECOND = 6
"""Functions collected per second of the generations' budget: a little more than are
generated (64 side by side, prompts packed: 4.3 samples a second in a build on the AMX Xeon),
since collecting parses every file it reads."""
GENERATION_BATCH = 64
"""Bodies generated side by side.  The same 150 s of this build's generations step (AMX Xeon,
December 4) stored 17,686 positions at 16 with the engine's 32-row calls, 19,285 at 16 and
29,818 at 64 in one call (``linear.rows_unlimited``), 36,833 with the prompts prefilled several
to a pass (``batch_decoding.PACK_TOKENS``); peak memory 4.2 -> 5.6 GB."""
PER_FILE = 3
PER_REPO = 120
"""At most this many functions of a file, and of a repository (a package), per generations
step: spread over many files and packages, but enough of them for the whole step.  On the AMX
Xeon (December 4) a first 45-minute build with 2 and 60 ran out after 17 of its 19 minutes of
generations (3,603 functions: 970 in the standard library, 2,633 in site-packages), and prompts
packed since then make bodies faster; 3 and 120 allow 6,081 there (12,742 and 122,323
without limits), and the next first build wrote 4,233 bodies in its 19 minutes without
running out (held out, 54.3% first guesses right against 53.4%: docs/draft-head.md)."""
GENERATED_TOKENS = 64
"""Tokens per generated body: most of a longer generation comes after the function's end,
where GenGuard stops decoding anyway."""


CONTINUE_LR = 5e-4
"""Peak learning rate when a build continues a head: new data, without unlearning the old.
Measured (December 3): session 39's head continued for one epoch at this rate on its shards
plus one new generations shard (17 minutes, stopped at 307 of 453 steps) went from 50.4% to
52.9% first guesses right on held-out generations (34.6% to 35.7% on held-out files); on
HumanEval 40 it took 810 and 809 passes against 831 and 832 for the old head (two runs, both
heads in each, either order)."""
FIRST_EPOCHS = 3
CONTINUE_EPOCHS = 2
"""Epochs of a new head, and of a continued one, as far as the budget lets them run (the
one-cycle schedule runs on whichever is longer, the epochs or the time).  Two and one until
December 5, when training's loss stopped storing the logits (``scored_loss``): a step got 1.8
times faster at the build's shapes, 1.45-1.7 times on real shards, and two epochs would no
longer fill a build's training time.  Three epochs of a new head had beaten two by 2.2
points of held-out first guesses on the same shards (December 3, AMD EPYC); on the AMX Xeon a
first 45-minute build then made 1,020 of 3 epochs' 1,326 steps, against 811 steps before on
the same generations, and its held-out first guesses rose from 54.3% to 56.3%
(docs/draft-head.md)."""
ANOTHER_ROUND_SECONDS = 480
"""Where training ended at least this long before the budget (its epochs done), the build may
go on with another round in the time left: new generations, then the head continued on
everything, as a second build would (``another_round``).  On the AMX Xeon (December 4) a first
``--minutes 45`` build finished its 2 epochs 12 minutes early (the generations' share made
2,460 windows; training took 9 of its 21 minutes), and each later build had made the head
better (docs/draft-head.md)."""
MAX_ROUNDS = 3


def another_round(left: float, epoch_seconds: float, round_number: int) -> bool:
    """Whether ``left`` seconds of the budget are worth another round, after a round whose
    training took ``epoch_seconds`` an epoch: the next round's training share must hold at least
    such an epoch (it trains on more data still).  A round squeezed into less is wasted: on the
    AMX Xeon (December 4) one with 8.5 minutes left trained 98 of 880 steps, its one-cycle rate
    run up and down within them, and came out worse than the head it continued (which the build
    then kept)."""
    fits = left * (1 - GENERATION_SHARE) >= epoch_seconds
    return left >= ANOTHER_ROUND_SECONDS and fits and round_number < MAX_ROUNDS


def continuable_head(path: Path, model_name: str, args: argparse.Namespace) -> Path | None:
    """The head at ``path`` if this build may continue it: one of ``model_name``'s, of the shape
    asked for (vocabulary, width, context), and trained on no repository this build leaves
    out (``--exclude-repo``: continuing would keep what it learned there).  None otherwise, or
    with ``--fresh``: the build then trains a new head."""
    from ..genguard.head import HeadError
    from .head import read_head_info
    from .provenance import repository_names

    if args.fresh or not path.is_file():
        return None
    try:
        info = read_head_info(path)
    except HeadError:
        return None
    shape = (info.width, info.context, info.training.get("vocab"))
    if info.base_model != model_name or shape != (args.width, args.context, args.vocab):
        return None
    if repository_names(args.exclude_repo) & set(info.training.get("repos", [])):
        return None
    return path


def default_sources() -> list[str]:
    """This Python's standard library and its installed packages, one repository per package."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]), Path(paths["purelib"])]
    return [f"python={root}" for index, root in enumerate(roots) if root.is_dir() and root not in roots[:index]]


def build_head(args: argparse.Namespace, round_number: int = 1, began: float | None = None) -> int:
    """Generations, file windows (first build only), training, and more rounds of generations
    and training while the budget allows (``ANOTHER_ROUND_SECONDS``); returns the exit status."""
    from ..cli import main as swiftguard
    from ..engine import ModelLoadError
    from ..engine.loader import resolve_source
    from .head import shard_dir

    try:
        _, name = resolve_source(args.model, lambda msg: print(msg, file=sys.stderr))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    work = args.shards or shard_dir(name)
    work.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    sources = args.source or default_sources()
    common = [*(["--model", args.model] if args.model else []), "--device", args.device, "--dtype", args.dtype,
              "--threads", str(args.threads)]
    source_options = [option for spec in sources for option in ("--source", spec)]
    earlier = sorted(work.glob("generated-*.npz"))
    started = clock()
    began = started if began is None else began
    sites = int(budget * GENERATION_SHARE * GENERATED_SITES_PER_SECOND) + 16  # per source: one may get most of the time
    steps = [["genguard", "build-data", *common, *source_options, "--kinds", "generated", "--standalone",
              "--sites", str(sites), "--per-repo", str(PER_REPO), "--per-file", str(PER_FILE),
              "--new-tokens", str(GENERATED_TOKENS),
              "--batch", str(GENERATION_BATCH), "--seed", str(args.seed + len(earlier)),
              "--time-budget", f"{budget * GENERATION_SHARE:.1f}",
              *(option for shard in earlier for option in ("--skip-seen", str(shard))),
              "--out", str(work / f"generated-{len(earlier) + 1}.npz")]]
    files = work / "files.npz"
    if not files.exists():
        tokens = max(1000, int(budget * FILES_SHARE * FILE_POSITIONS_PER_SECOND))
        steps.append(["drafthead", "build-data", *common, *source_options, "--tokens", str(tokens),
                      "--time-budget", f"{budget * FILES_SHARE:.1f}",
                      "--per-repo", "4000", "--seed", str(args.seed), "--out", str(files)])
    from .head import head_path_for

    earlier_head = continuable_head(args.out or head_path_for(name), name, args)
    continued = (["--init", str(earlier_head), "--lr", str(args.lr or CONTINUE_LR)] if earlier_head is not None
                 else ["--lr", str(args.lr)] if args.lr else [])
    epochs = args.epochs or (CONTINUE_EPOCHS if earlier_head is not None else FIRST_EPOCHS)
    train = ["drafthead", "train", *(["--model", args.model] if args.model else []), "--data", str(work),
             "--threads", str(args.threads), "--epochs", str(epochs), "--repeat", "generated=2", *continued,
             "--vocab", str(args.vocab), "--width", str(args.width), "--context", str(args.context),
             "--seed", str(args.seed),
             *(option for name in args.exclude_repo for option in ("--exclude-repo", name)),
             *(["--out", str(args.out)] if args.out else []),
             *(["--report", str(args.report)] if args.report else [])]

    def run(step: list[str]) -> int:
        print(f"[{clock() - started:.0f}s] swiftguard {' '.join(step)}", file=sys.stderr, flush=True)
        status = swiftguard(step)
        if status and round_number > 1:  # e.g. no functions left to generate: the last round's head stands
            print(f"step {' '.join(step[:2])} of round {round_number} failed (exit status {status}); the head of "
                  "the round before stays", file=sys.stderr)
        elif status:
            print(f"error: step {' '.join(step[:2])} failed (exit status {status}); the shards so far stay in {work}",
                  file=sys.stderr)
        return status

    failed = lambda status: status if round_number == 1 else 0  # noqa: E731  (a later round's failure is not the build's)
    for step in steps:
        if status := run(step):
            return failed(status)
    # Training has what the data left of the budget, but never so little that the head learns nothing.
    left = budget - (clock() - started) - TRAIN_WRAP_UP_SECONDS
    training = clock()
    if status := run([*train, "--time-budget", f"{max(left, MIN_TRAIN_SHARE * budget):.1f}"]):
        return failed(status)
    left = budget - (clock() - started)
    if another_round(left, (clock() - training) / epochs, round_number):
        print(f"training ended {left / 60:.1f} minutes early: another round of generations, then training "
              "continues the head", file=sys.stderr, flush=True)
        return build_head(argparse.Namespace(**{**vars(args), "minutes": left / 60, "fresh": False}), round_number + 1,
                          began)
    print(f"draft head built in {(clock() - began) / 60:.1f} minutes ({round_number} "
          f"round{'s' if round_number > 1 else ''}); shards in {work}", file=sys.stderr)
    return 0
