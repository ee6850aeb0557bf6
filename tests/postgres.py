"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package (``initdb``,
``pg_ctl``), a cluster of its own in a temporary folder, listening on 127.0.0.1 only, stopped
and removed afterwards. ``.ci/run`` installs the package where it is missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.helpers import free_port

USER = "approxft"


def _bin_dir() -> Path:
    """The newest installed PostgreSQL's programs (``/usr/lib/postgresql/<major>/bin``)."""
    on_path = shutil.which("pg_ctl")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found and on_path is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does it)")
    return Path(found[-1] if found else on_path).parent


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server with an empty database ``studies``; yield its SQLAlchemy URL (psycopg2)."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="approxft-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*command: object) -> None:
        done = subprocess.run([*as_owner, *map(str, command)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            raise RuntimeError(f"{command[0]} exited {done.returncode}: {done.stderr}{log}")

    try:
        run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", USER, "--no-sync")
        run(bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-t", "60",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -F", "start")
        try:
            run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", USER, "studies")
            yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/studies"
        finally:
            run(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
