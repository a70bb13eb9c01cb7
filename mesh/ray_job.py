"""Whether this process is a Ray job's entrypoint (``ray job submit ... -- tollmesh ...``), and where its files go.

Ray runs a job's entrypoint on the cluster's head (unless the submission asks for resources
elsewhere) with ``RAY_ADDRESS`` set to the cluster and ``RAY_JOB_CONFIG_JSON_ENV_VAR`` holding its
submission id and runtime environment. A submission with ``--working-dir DIR`` runs the entrypoint
in a copy of DIR that Ray unpacks under its temp directory on the head and deletes once no job
uses it: a run directory given as a relative path (the default ``./tollmesh-out``) would land in
that copy and vanish with it. :func:`check_run_dir` refuses that, naming an absolute path instead.

>>> job = RayJob(submission_id="raysubmit_1", working_dir="gcs://_ray_pkg_abc.zip", cwd=Path("/tmp/ray/pkg"))
>>> check_run_dir(Path("/data/runs/default-seed7"), job)
>>> check_run_dir(Path("/tmp/ray/pkg/tollmesh-out/default-seed7"), job)
Traceback (most recent call last):
...
mesh.core.errors.ConfigError: the run directory /tmp/ray/pkg/tollmesh-out/default-seed7 is inside the copy of --working-dir that Ray made for job raysubmit_1 (/tmp/ray/pkg), which Ray deletes after the job: give --out an absolute path on the head, such as --out /data/runs
>>> current_job({}) is None
True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from mesh.core.errors import ConfigError

__all__ = ["JOB_CONFIG_ENV", "RayJob", "check_run_dir", "current_job"]

#: the variable Ray sets in a job's entrypoint: its submission id and runtime environment, as JSON
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@dataclass(frozen=True)
class RayJob:
    """The Ray job this process is the entrypoint of."""

    submission_id: str
    working_dir: Optional[str]  # the runtime env's working_dir (None: the job runs where the head's Ray runs)
    cwd: Path  # where the entrypoint runs: Ray's copy of the working directory, if there is one

    @property
    def temporary_dir(self) -> Optional[Path]:
        """The folder Ray deletes after the job (None: the job has no working_dir of its own)."""
        return self.cwd if self.working_dir else None


def current_job(environ: Optional[Mapping[str, str]] = None) -> Optional[RayJob]:
    """The Ray job this process runs as (None: it is not a job's entrypoint)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    metadata = config.get("metadata") or {}
    submission_id = metadata.get("job_submission_id")
    if not submission_id:
        return None  # a driver started inside some other job's worker, not a submitted job's entrypoint
    working_dir = (config.get("runtime_env") or {}).get("working_dir")
    return RayJob(submission_id=str(submission_id), working_dir=working_dir or None, cwd=Path.cwd())


def check_run_dir(run_dir: Path, job: RayJob) -> None:
    """Raise :class:`ConfigError` if ``run_dir`` (absolute) lies in the folder Ray deletes after ``job``."""
    temporary = job.temporary_dir
    if temporary is None:
        return
    if run_dir == temporary or temporary in run_dir.parents:
        raise ConfigError(
            f"the run directory {run_dir} is inside the copy of --working-dir that Ray made for job "
            f"{job.submission_id} ({temporary}), which Ray deletes after the job: give --out an absolute path "
            "on the head, such as --out /data/runs"
        )
