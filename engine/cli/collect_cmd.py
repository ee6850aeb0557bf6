"""``approxft collect``: log-probabilities of every role's model over a prepared corpus."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack, nullcontext
from pathlib import Path

from ingest.collect.collect import DeepSamplePlan, VerifyPlan, collect, plan, raw_path
from ingest.collect.config import RoleConfig, read_config
from ingest.collect.deep import manifest_vocabulary
from ingest.collect.jobs import VLLM_FULL_FLAGS, ManifestRequest, read_requests
from ingest.collect.rawlog import run_lock
from ingest.collect.run_manifest import RunManifest, run_manifest
from ingest.collect.verify import VERIFY_TOLERANCE
from ingest.prepare.corpus import TokenBytes, prepared_summary

from .options import add_prepare_options, positive, prepare_from_args

ALL = "all"


def calibration_k(text: str) -> int | str:
    """``--calibration-k``: a positive int, or ``all`` (argparse type)."""
    if text == ALL:
        return ALL
    try:
        return positive(int)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or {ALL}, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="collect every role's log-probabilities from OpenAI-compatible endpoints (resumable)",
        description="Prepare the corpus (unless --corpus is already a requests.jsonl manifest), then "
        "send every role's requests concurrently through the openai client and append each "
        "response to OUT/raw/<role>.jsonl as it arrives. A rerun sends only what is missing. "
        "Roles, endpoints and the NAMES of the key variables come from the TOML config (see "
        "ingest/collect/config.py). Prints a JSON summary; exit 1 when anything is left undone.",
        epilog="Example: approxft collect --models models.toml --corpus grimm.txt --out grimm-run --calibration 200 --calibration-k 1000\n"
        "  then: approxft ingest grimm-run/raw/{big,tuned,untuned}.jsonl --requests grimm-run/requests.jsonl --out grimm.store\n"
        "Whole distributions (--calibration-k all) need a server that lists every token: approxft serve, or\n"
        f"  vLLM started with {VLLM_FULL_FLAGS} (OpenAI caps k at 20; vLLM's default --max-logprobs is 20).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", required=True, metavar="TOML", help="roles -> model, base_url, api_key_env, mode, ...")
    p.add_argument("--corpus", required=True, metavar="FILE", help="text or JSONL corpus, or a prepared requests.jsonl")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: requests.jsonl, raw/, deep/")
    p.add_argument("--roles", default=None, help="comma-separated roles to collect (default: all)")
    p.add_argument("--calibration", type=int, default=0, metavar="N",
                   help="also gather a calibration sample at N positions, drawn at random in proportion to each split and context-length bucket")
    p.add_argument("--calibration-k", type=calibration_k, default=100, metavar="K|all",
                   help="entries per calibration list (default 100), or all: each model's whole next-token distribution "
                   "(the manifest tokenizer's vocabulary), stored as full rows; raw log gzipped")
    p.add_argument("--verify", type=positive(int), default=0, metavar="N",
                   help="first score N positions (drawn like --calibration's) both by echo and by next-token requests, per "
                   "role, and refuse a role whose two disagree by more than --verify-tolerance: a shifted echo, another "
                   "tokenization, a temperature applied to log-probabilities (recorded in OUT/raw/<role>.endpoint.json; "
                   "a passed check is not repeated)")
    p.add_argument("--verify-tolerance", type=positive(float), default=VERIFY_TOLERANCE, metavar="NATS",
                   help=f"largest difference --verify accepts between the two scores (default {VERIFY_TOLERANCE:g})")
    p.add_argument("--dry-run", action="store_true", help="print request and token counts (and cost) and exit")
    add_prepare_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    roles = read_config(args.models)
    if args.roles:
        wanted = args.roles.split(",")
        unknown = set(wanted) - {r.role for r in roles}
        if unknown:
            raise ValueError(f"--roles: {', '.join(sorted(unknown))} not in {args.models}")
        roles = [r for r in roles if r.role in wanted]
    out = Path(args.out)
    # Held before the manifest: a second run into OUT is refused before it writes anything.
    with nullcontext() if args.dry_run else run_lock(out):
        return _run(args, roles, out)


def _run(args: argparse.Namespace, roles: list[RoleConfig], out: Path) -> int:
    found = _manifest(args, roles, out)
    manifest = found.path
    requests = read_requests(found.manifest)
    calibration = _calibration(args, requests, manifest)
    if args.dry_run:
        print(json.dumps({"manifest": str(manifest), "roles": plan(roles, requests, out, calibration)}, indent=2))
        return 0
    results = collect(roles, requests, out, calibration=calibration,
                      verify=VerifyPlan(args.verify, args.verify_tolerance) if args.verify else None)
    done = [r.role for r in roles if results[r.role].get("main", {}).get("complete")]
    payload = {
        "manifest": str(manifest),
        "roles": results,
        "ingest": "approxft ingest " + " ".join(str(raw_path(out, role)) for role in done) + f" --requests {manifest} --out STORE",
    }
    print(json.dumps(payload, indent=2))
    problems = []
    for role, result in results.items():
        if "error" in result:
            problems.append(f"{role}: {result['error']}")
        for name in ("main", "calibration"):
            part = result.get(name)
            if part and part["fatal"]:
                problems.append(f"{role} {name}: stopped: {part['fatal']}")
            elif part and not part["complete"]:
                first = f", first: {part['failures'][0]}" if part["failures"] else ""
                problems.append(f"{role} {name}: {part['pending']} of {part['total']} requests not collected "
                                f"({part['failed']} failed{first}; see {part['raw']}); rerun to retry")
    for problem in problems:
        print(f"approxft collect: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _calibration(args: argparse.Namespace, requests: list[ManifestRequest], manifest: Path) -> DeepSamplePlan | None:
    """The calibration sample asked for: top-K lists, or whole distributions over the vocabulary
    of the tokenizer that prepared the manifest (``--calibration-k all``)."""
    if not args.calibration:
        return None
    if args.calibration_k == ALL:
        vocabulary = manifest_vocabulary(requests, file=str(manifest),
                                         fallback=None if args.tokenizer == "server" else args.tokenizer)
        return DeepSamplePlan.whole(args.calibration, vocabulary)
    return DeepSamplePlan(args.calibration, args.calibration_k)


def _manifest(args: argparse.Namespace, roles: list[RoleConfig], out: Path) -> RunManifest:
    """The run's manifest (``ingest.collect.run_manifest``), prepared with ``--tokenizer``."""

    with ExitStack() as opened:  # the server tokenizer's client, closed once the corpus is prepared

        def tokenizer() -> TokenBytes:
            if args.tokenizer == "server":
                from ingest.collect.server_tokens import server_tokenizer

                big = next((r for r in roles if r.role == "big"), roles[0])
                return opened.enter_context(server_tokenizer(big, os.environ.get(big.api_key_env) if big.api_key_env else None))
            from ingest.prepare.tokenizer import local_tokenizer

            return local_tokenizer(args.tokenizer)

        found = run_manifest(args.corpus, out, prepare=lambda tokenize: prepare_from_args(args, tokenize),
                             tokenizer=tokenizer, logprobs=args.logprobs, tokenizer_name=args.tokenizer,
                             reuse_without_checking=args.tokenizer == "server", write=not args.dry_run)
    if found.written is not None:
        print(f"approxft collect: prepared {json.dumps(prepared_summary(found.written, found.path))}", file=sys.stderr)
    return found
