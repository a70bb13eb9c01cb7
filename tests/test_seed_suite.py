"""The seed's own test suite passes against tollmesh with its import line switched to ``mesh``.

nano-empire-tollbooth 0.3.0's ``tests/test_tollbooth.py`` (33 tests) comes from its sdist: the
file named by ``TOLLMESH_SEED_SDIST`` if set (an offline machine), else the one pip downloads
from the package index (kept in pytest's cache, so it is fetched once). The archive's SHA-256 is
pinned, so the suite run is exactly the published one. The suite runs in a subprocess, in an
empty folder (its booths write their default ledgers in the current folder), against this
checkout's ``mesh``. Without the sdist (no index reachable) the test is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SEED = "nano-empire-tollbooth==0.3.0"
SDIST_NAME = "nano_empire_tollbooth-0.3.0.tar.gz"
SDIST_SHA256 = "7978542b76be90a23e3db783fd66cc9f4256de00d5efe9012debcabcb09e854a"
SUITE_MEMBER = "nano_empire_tollbooth-0.3.0/tests/test_tollbooth.py"
SEED_IMPORT = "from nano_empire_tollbooth import ("
SEED_TESTS = 33
REPO = Path(__file__).resolve().parent.parent
DOWNLOAD_TIMEOUT_S = 300


def _sdist(cache_dir: Path) -> Path:
    """The seed's sdist: TOLLMESH_SEED_SDIST, or one already in the cache, or a download into it."""
    given = os.environ.get("TOLLMESH_SEED_SDIST")
    if given:
        return Path(given)
    cached = cache_dir / SDIST_NAME
    if cached.exists():
        return cached
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", SEED, "-d", str(cache_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot download the seed's sdist ({SEED}) to run its test suite: {exc}")
    if done.returncode != 0 or not cached.exists():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"cannot download the seed's sdist ({SEED}) to run its test suite: pip said: {last[0]}"
                    " (set TOLLMESH_SEED_SDIST to a local copy)")
    return cached


def _switched_suite(sdist: Path) -> str:
    """The seed's test_tollbooth.py with its one import line switched to ``mesh``."""
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert digest == SDIST_SHA256, f"{sdist} is not the published {SDIST_NAME} (sha256 {digest})"
    with tarfile.open(sdist) as archive:
        source = archive.extractfile(SUITE_MEMBER).read().decode()
    assert source.count(SEED_IMPORT) == 1 and source.count("import nano_empire_tollbooth") == 0
    return source.replace(SEED_IMPORT, "from mesh import (")


def test_the_seeds_own_suite_passes_with_one_import_line_switched(request, tmp_path):
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider: download to a temp dir
    sdist = _sdist(cache.mkdir("seed-sdist") if cache is not None else tmp_path / "seed-sdist")
    (tmp_path / "test_seed_tollbooth.py").write_text(_switched_suite(sdist))
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    env = {k: v for k, v in os.environ.items() if k != "TOLLBOOTH_PAPER_MODE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_seed_tollbooth.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.fullmatch(rf"{SEED_TESTS} passed( in .*)?", summary.split(",")[0].strip()), summary
