"""The Ray a sweep runs on, and the environment its trials see there.

Three cases, decided at the start of each run (``RaySession.start``):

* ``--address`` / ``RAY_ADDRESS``: a cluster's Ray, joined with the sweep's runtime environment;
* a Ray this process already runs (``ray.init`` in a notebook, or the test suite's one Ray): the
  sweep runs on it and leaves it running;
* otherwise an embedded local Ray, started for the run and stopped after it; the processes it
  started are recorded (``harness.sweep.leftovers`` ends them if the driver is killed).

The ``BATCHSCALE_`` variables (cache and data folders, plugin modules, where Ray Train runs keep
their checkpoints) reach every trial in two ways: as the job's runtime environment where the sweep
starts or joins Ray by address, and in every trial's config (``trial_env``), applied by the trial
before anything reads them, so a trial on a Ray the sweep did not start sees them too.
"""

from __future__ import annotations

import os
from typing import Any

from harness.plugins import forwarded_env
from harness.sweep import leftovers
from harness.sweep.console import declared_resources


def trial_env(storage: str) -> dict[str, str]:
    """This process's ``BATCHSCALE_`` variables, and the folder of the data-parallel trials' Ray
    Train runs under the sweep's Tune ``storage``."""
    env = forwarded_env()
    env["BATCHSCALE_TRAIN_STORAGE"] = f"{storage.rstrip('/')}/data-parallel"
    return env


def tune_defaults() -> None:
    """How Tune behaves in a sweep's driver, unless this process's environment says otherwise."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our store replaces Tune's CSV/JSON logs
    # Ctrl-C raises KeyboardInterrupt in the driver; the store holds every checkpoint so far.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables; our view reports


class RaySession:
    def __init__(self, address: str | None, storage: str, verbose: bool = False):
        self.address, self.storage, self.verbose = address, storage, verbose
        self.joined = False  # True: a Ray this process already ran; it is left running

    def start(self) -> dict[str, Any]:
        """Start or join Ray; what the sweep's session record keeps about it."""
        tune_defaults()
        import ray

        runtime_env = {"env_vars": trial_env(self.storage)}
        level = "INFO" if self.verbose else "ERROR"
        if self.address:
            ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=self.verbose, logging_level=level)
            return {}
        if ray.is_initialized():
            self.joined = True
            return {"joined": True}
        ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=self.verbose,
                 configure_logging=True, logging_level=level, **declared_resources())
        return {"driver": leftovers.identity(os.getpid()), "processes": leftovers.started_by(os.getpid())}

    def stop(self) -> None:
        import ray

        if ray.is_initialized() and not self.joined:
            ray.shutdown()
