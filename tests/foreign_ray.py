"""A Ray cluster another process runs on this machine, for tests: started and stopped by the test.

``ray start --head --block`` in a subprocess with its own temp dir and a free port; stopping it
terminates that process, which takes down the Ray processes it started (never ``ray stop``,
which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ForeignRay:
    """``with ForeignRay(tmp_path) as cluster:`` a one-CPU Ray head at ``cluster.address``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's sockets: at most 107 bytes a path
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None

    def __enter__(self) -> "ForeignRay":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        self.log = open(self.log_dir / "ray-start.log", "wb")
        self.process = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", f"--port={self.port}", "--num-cpus=1",
             "--include-dashboard=false", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.alive():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the foreign Ray did not start: {(self.log_dir / 'ray-start.log').read_text()[-2000:]}")
            time.sleep(0.5)
        return self

    def alive(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Take the cluster down: its ``ray start`` process, then anything left of its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only the processes it started
        except (ProcessLookupError, PermissionError):
            pass
        self.process = None
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def crash(self) -> None:
        """The cluster dies at once (SIGKILL to every process it started), as a machine that goes away."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait(timeout=30)
        self.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
