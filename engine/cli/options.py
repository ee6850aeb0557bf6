"""Option groups that several commands share: a blend's models and estimator, its weights, where
it runs (in memory, streamed, on Ray), and corpus preparation. Parsing only: each maps onto one library call's arguments."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ingest import open_store
from ingest.prepare.corpus import (
    DEFAULT_SEPARATOR,
    Prepared,
    TokenBytes,
    prepare,
    read_documents,
)

from ..dataset import Dataset
from ..estimators import CALIBRATED_ESTIMATOR, ESTIMATORS, FALLBACK_ESTIMATOR
from ..evaluation import ALL_ESTIMATORS
from ..masks import MASK_RULES, Mask
from ..params import ROLES
from ..terms import parse_blend, parse_term, terms_models, terms_weights

if TYPE_CHECKING:
    from ..distributed import Cluster

__all__ = ["positive", "parse_floats", "add_blend_arguments", "blend_terms", "add_mask_arguments", "mask_rule",
           "add_ray_arguments", "add_stream_argument", "open_for", "ray_cluster", "add_prepare_options",
           "prepare_from_args"]


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a positive number of ``kind`` (int or float)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {'integer' if kind is int else 'number'}, got {text!r}")
        return value

    return parse


def parse_floats(text: str) -> list[float]:
    """``"1,1,-1"`` -> ``[1.0, 1.0, -1.0]`` (argparse type)."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_blend_arguments(p: argparse.ArgumentParser, *, allow_all: bool = False) -> None:
    """The options naming a blend's models (``blend_terms`` reads them) and its estimator
    (``allow_all``: accept ``--estimator all``)."""
    g = p.add_argument_group("the blend's models: the three role flags, or --blend, or --term")
    g.add_argument("--big", metavar="MODEL", help="the big model (--big, --tuned, --untuned: a blend of three)")
    g.add_argument("--tuned", metavar="MODEL", help="the small fine-tuned model")
    g.add_argument("--untuned", metavar="MODEL", help="the small untuned base model")
    g.add_argument("--blend", metavar="EXPR",
                   help="any number of models with their weights, e.g. \"grimm-big + 1.0*grimm-small-tuned - "
                   "1.0*grimm-small\": terms joined by ' + ' or ' - ', each MODEL or WEIGHT*MODEL")
    g.add_argument("--term", action="append", metavar="MODEL=WEIGHT",
                   help="one model and its weight; repeat it for each term (the same blend as --blend)")
    choices = [*sorted(ESTIMATORS), *([ALL_ESTIMATORS] if allow_all else [])]
    p.add_argument(
        "--estimator", default=None, choices=choices,
        help=f"how missing values and unlisted mass are estimated (default: {CALIBRATED_ESTIMATOR} where the "
        f"store has a calibration fit for these models, from `approxft calibrate`; {FALLBACK_ESTIMATOR} "
        "otherwise" + (f"; {ALL_ESTIMATORS}: every estimator the store allows side by side, with bounds)"
                       if allow_all else ")"),
    )


def mask_rule(text: str) -> Mask:
    """``"top-p:grimm-big=0.9"`` -> ``Mask("top-p", "grimm-big", 0.9)`` (argparse type)."""
    rule, sep, rest = text.partition(":")
    model, eq, value = rest.rpartition("=")
    if not sep or not eq or not model:
        raise argparse.ArgumentTypeError(f"expected RULE:MODEL=VALUE ({' or '.join(MASK_RULES)}), got {text!r}")
    try:
        return Mask(rule, model, float(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_mask_arguments(p: argparse.ArgumentParser) -> None:
    """``--mask RULE:MODEL=VALUE`` and ``--mask-floor NLL`` (``engine.masks``)."""
    p.add_argument("--mask", type=mask_rule, default=None, metavar="RULE:MODEL=VALUE",
                   help="restrict the blend's support by a rule on one of its models: top-p:MODEL=P (its top-p "
                   "tokens) or relative:MODEL=ALPHA (tokens with lp >= max lp + log ALPHA); the formulas dexperts and "
                   "contrastive bring their own")
    p.add_argument("--mask-floor", type=float, default=None, metavar="NLL",
                   help="charge this NLL (nats) where the mask drops the target, instead of an infinite one; reported "
                   "as a floor (the prototype charged 30)")


def blend_terms(args: argparse.Namespace) -> tuple[tuple[str, ...], list[float] | None]:
    """The blend ``add_blend_arguments`` names: its models in term order, and the weights that
    ``--blend`` or ``--term`` give (None for the role flags, which give none).

    Raises:
        ValueError: more than one way, none, a role flag missing, or a bad term (named).
    """
    roles = (args.big, args.tuned, args.untuned)
    ways = [name for name, given in (("the role flags", any(r is not None for r in roles)),
                                     ("--blend", args.blend is not None), ("--term", bool(args.term))) if given]
    if len(ways) > 1:
        raise ValueError(f"give the blend's models by one of the role flags, --blend or --term, not {' and '.join(ways)}")
    if args.blend is not None:
        terms = parse_blend(args.blend)
    elif args.term:
        terms = tuple(parse_term(t) for t in args.term)
    else:
        missing = [f"--{r}" for r, m in zip(ROLES, roles, strict=True) if m is None]
        if missing:
            raise ValueError(f"the blend needs {', '.join(missing)} (or all its models with --blend or --term)")
        return tuple(roles), None
    return terms_models(terms), terms_weights(terms)


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """``--ray ADDRESS`` and ``--ray-workers N``: run the blend's kernels on a Ray cluster."""
    g = p.add_argument_group("Ray (pip install 'approxft[ray]')")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the blend's kernels on a Ray cluster: HOST:PORT of its head (`ray start --head`), auto "
                   "(the cluster this machine is part of), or local:N (start one here with N CPUs)")
    g.add_argument("--ray-workers", type=positive(int), default=None, metavar="N",
                   help="Ray workers, each holding one part of the positions (default: one per CPU of the cluster)")


def add_stream_argument(p: argparse.ArgumentParser) -> None:
    """``--stream``: evaluate shard by shard (``engine.streaming``)."""
    p.add_argument("--stream", action="store_true",
                   help="evaluate shard by shard, one shard's candidate matrix in memory at a time, for a store larger "
                   "than memory (ingest --shard-positions N); each figure reads the shards again")


def open_for(args: argparse.Namespace) -> Dataset:
    """The dataset ``args.store`` names, streaming under ``--stream`` (in this process, one
    estimator: not with ``--ray`` or ``--estimator all``) and for a sharded store under ``--ray``
    (the workers read the shards: the driver holds no matrix)."""
    if args.stream and args.ray is not None:
        raise ValueError("--stream runs in this process: leave out --ray (whose workers read a sharded store's "
                         "shards themselves)")
    if args.stream and args.estimator == ALL_ESTIMATORS:
        raise ValueError(f"--stream evaluates one estimator's blend: name one instead of --estimator {ALL_ESTIMATORS}")
    store = open_store(args.store)
    return Dataset(store, streaming=args.stream or (args.ray is not None and store.sharded))


@contextlib.contextmanager
def ray_cluster(args: argparse.Namespace) -> Iterator[Cluster | None]:
    """The cluster ``--ray`` names, connected (None without ``--ray``), closed on leaving."""
    if args.ray is None:
        if args.ray_workers is not None:
            raise ValueError("--ray-workers needs --ray ADDRESS")
        yield None
        return
    from ..distributed import connect

    with connect(args.ray, workers=args.ray_workers) as cluster:
        yield cluster


def add_prepare_options(p: argparse.ArgumentParser) -> None:
    """The corpus options ``prepare`` and ``collect`` share."""
    g = p.add_argument_group("corpus preparation")
    g.add_argument("--tokenizer", default="gpt2", help="gpt2 (bundled vocabulary), gpt2:DIR, tiktoken:ENCODING, or server (the big role's echo)")
    g.add_argument("--chunk-tokens", type=int, default=512, help="most tokens per request (default 512)")
    g.add_argument("--finetune-share", type=float, default=0.6, help="share of characters kept for fine-tuning, whole documents (default 0.6)")
    g.add_argument("--val-share", type=float, default=0.5, help="share of held-out documents in val, the rest test (default 0.5)")
    g.add_argument("--logprobs", type=int, default=5, help="top-k per position asked for (default 5, OpenAI's maximum for completions)")
    g.add_argument("--separator", default=DEFAULT_SEPARATOR, help="regex between documents of a text corpus (default: two or more blank lines)")


def prepare_from_args(args: argparse.Namespace, tokenize: TokenBytes) -> Prepared:
    """``ingest.prepare.corpus.prepare`` of ``args.corpus`` with the options of ``add_prepare_options``."""
    return prepare(
        read_documents(args.corpus, separator=args.separator),
        tokenize,
        chunk_tokens=args.chunk_tokens,
        finetune_share=args.finetune_share,
        val_share=args.val_share,
    )
