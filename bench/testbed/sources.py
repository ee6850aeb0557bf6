"""The default corpora: English text from Debian packages, installed with apt and extracted to
JSON-lines documents (``{"title", "text"}``, what ``ingest.prepare.corpus.read_documents`` reads).

General English (the base models' training text and the general held-out text):

- ``austen``: Jane Austen's six novels (``r-cran-janeaustenr``; the novels are public domain),
  one document per chapter, hard-wrapped lines joined into paragraphs. The package holds them
  as R data; it is downloaded and unpacked (``apt-get download``, ``dpkg-deb -x``) rather than
  installed, which would pull in R itself;
- ``fortunes``: the ``fortunes`` package's cookie files (not the ASCII-art ones), one
  document per fortune;
- ``jargon``, ``devil``: the Jargon File (``dict-jargon``) and Bierce's *Devil's Dictionary*
  (``dict-devil``), one document per entry;
- ``gcide``: a seeded sample of entries of the Collaborative International Dictionary of
  English (``dict-gcide``; Webster's 1913 and WordNet), markup lightly cleaned, capped at
  ``GCIDE_SHARE`` of the general characters so that definitions do not drown the prose.

Domain: ``kjv``, the King James Bible (``bible-kjv-text``, printed by ``bible`` from
``bible-kjv``), one document per chapter (title line "Genesis 1", then one verse per line,
without verse numbers), in canonical order.

The extractors (``extract``) are pure functions over the packages' file contents;
``extract_defaults`` does the installing and records what it used.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.testbed.errors import BuildError
from bench.testbed.extract import (
    FORTUNE_SKIP,
    austen_chapters,
    dict_documents,
    dict_entries,
    fortune_documents,
    fortune_files,
    gcide_text,
    kjv_chapters,
    r_character_vectors,
    sample_documents,
)
from ingest.prepare.corpus import Document

FORTUNES_DIR = Path("/usr/share/games/fortunes")
DICTD_DIR = Path("/usr/share/dictd")
BIBLE_DATA = Path("/usr/lib/bible.data")
AUSTEN_RDB = Path("usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
"""Inside the unpacked ``r-cran-janeaustenr`` package."""
GCIDE_SHARE = 0.3
"""At most this share of the default general characters comes from GCIDE definitions."""
KJV_RANGE = "gen1:1-rev22:21"
"""The whole Bible, as ``bible`` spells a verse range."""
BIBLE_LINE_WIDTH = 100_000
"""``bible -l``: wider than any verse, so that each verse is one line."""
SAMPLE_SEED = 0
"""Seed of the GCIDE entry sample."""


@dataclass(frozen=True)
class SourceRecord:
    """What one extracted corpus file came from (``sources.json`` in the testbed)."""

    name: str
    packages: dict[str, str]
    """Debian package -> version."""
    inputs: list[str]
    """The package files read."""
    output: str
    """The extracted JSON-lines file (its name in the build's work folder)."""
    sha256: str
    """Of the extracted file."""
    documents: int
    characters: int
    selection: str
    """How the documents were chosen and shaped."""


def _run(command: list[str], what: str, *, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, cwd=cwd)
    except OSError as err:
        raise BuildError(f"{what}: cannot run {command[0]}: {err.strerror}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BuildError(f"{what}: {' '.join(command[:3])} ... exited with {done.returncode}: {last}")
    return done.stdout


def package_version(package: str) -> str | None:
    """The installed version of a Debian package, None if it is not installed."""
    done = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", package], capture_output=True, text=True, check=False)
    return done.stdout[3:] if done.returncode == 0 and done.stdout.startswith("ii") else None


def install(packages: Sequence[str]) -> dict[str, str]:
    """``apt-get install -y`` what is missing of ``packages``; returns package -> version."""
    missing = [p for p in packages if package_version(p) is None]
    if missing:
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], f"installing {', '.join(missing)}")
    versions = {p: package_version(p) for p in packages}
    absent = [p for p, v in versions.items() if v is None]
    if absent:
        raise BuildError(f"apt-get did not install {', '.join(absent)}")
    return versions  # type: ignore[return-value]


def unpack(package: str, work: Path) -> tuple[Path, str]:
    """``apt-get download`` one package into ``work`` and unpack it there (nothing installed);
    returns (the unpacked root, the version)."""
    target = work / package
    target.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", package], f"downloading {package}", cwd=target)
    debs = sorted(target.glob(f"{package}_*.deb"))
    if not debs:
        raise BuildError(f"apt-get download {package} left no .deb file in {target}")
    _run(["dpkg-deb", "-x", str(debs[-1]), str(target / "root")], f"unpacking {debs[-1]}")
    version = _run(["dpkg-deb", "-f", str(debs[-1]), "Version"], f"reading {debs[-1]}").strip()
    return target / "root", version


def write_documents(path: Path, documents: Sequence[Document]) -> str:
    """Write ``documents`` as JSON lines (``title``, ``text``); returns the file's sha256."""
    data = "".join(json.dumps({"title": d.name, "text": d.text}, ensure_ascii=False) + "\n" for d in documents).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _record(name: str, packages: dict[str, str], inputs: Sequence[Path], out: Path, documents: Sequence[Document], selection: str) -> SourceRecord:
    sha = write_documents(out, documents)
    return SourceRecord(name, packages, [str(p) for p in inputs], out.name, sha, len(documents), sum(len(d.text) for d in documents), selection)


def _dictd(name: str) -> tuple[str, bytes, list[Path]]:
    index, data = DICTD_DIR / f"{name}.index", DICTD_DIR / f"{name}.dict.dz"
    return index.read_text(encoding="utf-8"), gzip.decompress(data.read_bytes()), [index, data]


def extract_defaults(work: Path, log: Callable[[str], None]) -> tuple[list[Path], Path, list[SourceRecord]]:
    """Install and extract the default corpora into ``work``; returns (general files, the domain
    file, what each came from)."""
    work.mkdir(parents=True, exist_ok=True)
    versions = install(["fortunes", "dict-jargon", "dict-devil", "dict-gcide", "bible-kjv", "bible-kjv-text"])
    records = []

    austen_root, austen_version = unpack("r-cran-janeaustenr", work / "deb")
    rdb = austen_root / AUSTEN_RDB
    novels = [austen_chapters(lines) for lines in r_character_vectors(rdb.read_bytes())]
    records.append(_record("austen", {"r-cran-janeaustenr": austen_version}, [rdb], work / "austen.jsonl",
                           [d for novel in novels for d in novel], "the six novels, one document per chapter, paragraphs reflowed"))

    files = fortune_files(FORTUNES_DIR)
    fortunes = [d for f in files for d in fortune_documents(f.read_text(encoding="utf-8", errors="replace"), source=f.name)]
    records.append(_record("fortunes", {"fortunes": versions["fortunes"]}, files, work / "fortunes.jsonl", fortunes,
                           f"every cookie file but {', '.join(sorted(FORTUNE_SKIP))}, one document per fortune"))

    for name, package in (("jargon", "dict-jargon"), ("devil", "dict-devil")):
        index, data, inputs = _dictd(name)
        records.append(_record(name, {package: versions[package]}, inputs, work / f"{name}.jsonl",
                               dict_documents(index, data), "one document per dictionary entry"))

    index, data, inputs = _dictd("gcide")
    entries = [Document(word, gcide_text(text)) for word, text in dict_entries(index, data)]
    entries = [d for d in entries if d.text]
    others = sum(r.characters for r in records)
    budget = int(GCIDE_SHARE / (1 - GCIDE_SHARE) * others)
    records.append(_record("gcide", {"dict-gcide": versions["dict-gcide"]}, inputs, work / "gcide.jsonl",
                           sample_documents(entries, budget, seed=SAMPLE_SEED),
                           f"a seeded sample (seed {SAMPLE_SEED}) of entries, at most {GCIDE_SHARE:.0%} of the general "
                           "characters, markup lightly cleaned"))

    printed = _run(["bible", f"-l{BIBLE_LINE_WIDTH}", KJV_RANGE], "printing the KJV with bible")
    chapters = kjv_chapters(printed)
    records.append(_record("kjv", {"bible-kjv": versions["bible-kjv"], "bible-kjv-text": versions["bible-kjv-text"]}, [BIBLE_DATA],
                           work / "kjv.jsonl", chapters, "the whole Bible, one document per chapter, one verse per line, no verse numbers"))
    for r in records:
        log(f"source {r.name}: {r.documents:,} documents, {r.characters:,} characters ({', '.join(f'{p} {v}' for p, v in r.packages.items())})")
    general = [work / r.output for r in records if r.name != "kjv"]
    return general, work / "kjv.jsonl", records
