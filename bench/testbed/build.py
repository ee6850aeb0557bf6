"""Build the testbed: four GPT-2-architecture models trained on CPU and the top-k dataset the
product collects from them, written atomically to ``--out``.

    python -m bench.testbed.build --out data/testbed
    python -m bench.testbed.build --general a.txt b.jsonl --domain c.txt --out other-testbed

Stages (each logged to stderr with its wall time): sources (install and extract the default
Debian corpora, or read the given files), corpora (tokenize; the domain subset split by
``approxft prepare``; general held-out documents), training (small and big from scratch on the
general text, each fine-tuned on the domain's fine-tuning share), exact (full-vocabulary figures
of the saved float16 models, and the conditions the testbed must meet), collection (``approxft
serve``, ``collect``, ``ingest``, ``calibrate``, ``eval``), card (the data card). See README.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import sys
import time
from pathlib import Path

from bench.testbed import card, collection, stages
from bench.testbed.errors import BuildError
from bench.testbed.layout import MARKER, check_replaceable, stage_dir
from bench.testbed.settings import Settings
from bench.testbed.train import ModelSize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m bench.testbed.build",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m bench.testbed.build --out data/testbed  (the defaults take about 75 minutes on 2 cores)\n"
        "         python -m bench.testbed.build --general news.txt --domain recipes.jsonl --out recipes-testbed --base-tokens 2000000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="testbed folder to write (an existing one is replaced only when the build succeeds)")
    g = p.add_argument_group("corpora (text files with documents separated by blank lines, or JSONL of {text, title})")
    g.add_argument("--general", nargs="+", type=Path, metavar="FILE", help="general English text (default: the Debian mix, see README.md)")
    g.add_argument("--domain", type=Path, metavar="FILE", help="the domain corpus, documents in order (default: the KJV Bible by chapter)")
    g.add_argument("--domain-tokens", type=int, default=d.domain_tokens, metavar="N",
                   help=f"use the leading whole domain documents up to N tokens (default {d.domain_tokens:,})")
    g.add_argument("--finetune-share", type=float, default=d.finetune_share,
                   help=f"approxft prepare: share of the subset's characters kept for fine-tuning (default {d.finetune_share})")
    g.add_argument("--val-share", type=float, default=d.val_share, help=f"approxft prepare: share of held-out documents in val (default {d.val_share})")
    g.add_argument("--chunk-tokens", type=int, default=d.chunk_tokens, help=f"approxft prepare: tokens per request (default {d.chunk_tokens})")
    g.add_argument("--general-heldout-tokens", type=int, default=d.general_heldout_tokens, metavar="N",
                   help=f"hold out random whole general documents of at least N tokens (default {d.general_heldout_tokens:,})")
    m = p.add_argument_group("models and training")
    m.add_argument("--small", type=ModelSize.parse, default=d.small, metavar="LxW", help=f"small model: layers x width (default {d.small})")
    m.add_argument("--big", type=ModelSize.parse, default=d.big, metavar="LxW", help=f"big model (default {d.big})")
    m.add_argument("--base-tokens", type=int, default=d.base_tokens, metavar="N", help=f"tokens each base model trains on (default {d.base_tokens:,})")
    m.add_argument("--tune-tokens", type=int, default=d.tune_tokens, metavar="N", help=f"tokens each fine-tuning run sees (default {d.tune_tokens:,})")
    m.add_argument("--small-lr", type=float, default=d.small_lr, help=f"peak learning rate of the small model (default {d.small_lr})")
    m.add_argument("--big-lr", type=float, default=d.big_lr, help=f"peak learning rate of the big model (default {d.big_lr})")
    m.add_argument("--tune-lr-factor", type=float, default=d.tune_lr_factor,
                   help=f"fine-tuning peak learning rate = this x the base one (default {d.tune_lr_factor})")
    m.add_argument("--seed", type=int, default=d.seed, help=f"seed of initialization, data order and held-out choice (default {d.seed})")
    m.add_argument("--models-from", type=Path, metavar="TESTBED",
                   help="reuse the four models of an earlier testbed built from the same corpora and options (skips training)")
    c = p.add_argument_group("collection")
    c.add_argument("--logprobs", type=int, default=d.logprobs, help=f"top-k collected per position (default {d.logprobs})")
    c.add_argument("--calibration", type=int, default=d.calibration, metavar="N", help=f"deep-sample positions (default {d.calibration:,})")
    c.add_argument("--calibration-k", type=int, default=d.calibration_k, metavar="K", help=f"entries per deep list (default {d.calibration_k:,})")
    p.add_argument("--allow-failed-conditions", action="store_true",
                   help="write the testbed even where a condition fails (trial builds with tiny models; the card marks it FAILS)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the work folder (sources, raw collection, store) beside --out as OUT.work; after a failure, "
                   "the whole build folder as OUT.failed")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings(
        domain_tokens=args.domain_tokens, finetune_share=args.finetune_share, val_share=args.val_share,
        chunk_tokens=args.chunk_tokens, general_heldout_tokens=args.general_heldout_tokens, small=args.small, big=args.big,
        base_tokens=args.base_tokens, tune_tokens=args.tune_tokens, small_lr=args.small_lr, big_lr=args.big_lr,
        tune_lr_factor=args.tune_lr_factor, seed=args.seed, logprobs=args.logprobs, calibration=args.calibration,
        calibration_k=args.calibration_k,
    )
    s.check()
    return s


def build(args: argparse.Namespace, command: str) -> Path:
    """Run every stage into a folder beside ``args.out``, then rename it into place;
    ``command`` is the command line, for the data card."""
    settings = settings_from(args)
    out: Path = args.out
    check_replaceable(out)
    given = [*(args.general or []), *([args.domain] if args.domain else [])]
    for path in given:
        if not path.is_file():
            raise BuildError(f"{path}: corpus file not found")
    if len({p.resolve() for p in given}) < len(given):
        raise BuildError("a corpus file is given twice (as --general and --domain, or twice in --general)")
    tmp = stage_dir(out)
    stage, work = tmp / "stage", tmp / "work"
    stage.mkdir()
    work.mkdir()
    build_log = stages.Log()
    succeeded = False
    try:
        sources = stages.sources(args.general, args.domain, work, build_log)
        corpora = stages.corpora(sources, settings, stage, work, build_log)
        training = stages.training(corpora, settings, stage, args.models_from, build_log)
        exact = stages.exact(corpora, settings, stage, build_log, strict=not args.allow_failed_conditions)
        collected = collection.run(corpora, settings, stage, work, exact, build_log)
        with build_log.stage("card"):
            # Not RUSAGE_CHILDREN: a forked child's high-water mark starts at the parent's size.
            usage = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "server_peak_rss_mb": collected["server_peak_rss_mb"]}
            records = {
                "settings": settings.as_json(),
                "sources": sources.records,
                "corpora": corpora.summary(sources),
                "training": training,
                "exact": exact,
                "collection": collected,
                "build": {"command": command, "seconds": time.perf_counter() - build_log.start, "usage": usage,
                          "stages": build_log.stages, "machine": card.machine()},
            }
            card.write(records, stage)
        _replace(out, stage, tmp)
        succeeded = True
    finally:
        if args.keep_work:
            _keep(out, tmp, work, succeeded)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _keep(out: Path, tmp: Path, work: Path, succeeded: bool) -> None:
    """``--keep-work``: after a success the work folder, after a failure the whole build folder
    (its ``stage/`` holds the trained models and can be given to ``--models-from``)."""
    kept = out.with_name(f"{out.name}.work" if succeeded else f"{out.name}.failed")
    shutil.rmtree(kept, ignore_errors=True)
    (work if succeeded else tmp).rename(kept)
    hint = "" if succeeded else f"; rerun with --models-from {kept / 'stage'} to skip training, if it got that far"
    print(f"testbed: kept {kept}{hint}", file=sys.stderr)


def _replace(out: Path, stage: Path, tmp: Path) -> None:
    """Put ``stage`` at ``out``, moving a previous testbed aside first and back on failure."""
    if not (stage / MARKER).is_file():
        raise BuildError(f"{stage}: the staged testbed has no {MARKER}; not installing it")
    if out.exists():
        old = tmp / "old"
        out.rename(old)
        try:
            stage.rename(out)
        except BaseException:
            old.rename(out)
            raise
    else:
        stage.rename(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    command = "python -m bench.testbed.build " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        out = build(args, command)
    except (BuildError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the existing testbed (if any) is untouched", file=sys.stderr)
        return 130
    print(f"testbed: wrote {out} in {(time.perf_counter() - start) / 60:.1f} min (load average {os.getloadavg()[0]:.2f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
