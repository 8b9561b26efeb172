#!/usr/bin/env python3
"""What a sweep's trial actor spends before its first step, in this fresh process (process time, so
CPU-s): importing ``ray`` and ``ray.tune``, importing torch and the trial loop (as
``harness.sweep.trainable`` does), and building a trial (its first optimizer imports
``torch._dynamo``). Run it twice: the first run may also generate the MNIST-1D data it trains on.

    .venv/bin/python scripts/actor-startup.py
"""

import time

t0 = time.process_time()
import ray
import ray.tune  # noqa: F401

t1 = time.process_time()
from harness.spec import TrialSpec
from harness.sweep.trainable import tune_trial  # noqa: F401
from harness.trial.loop import Trial

t2 = time.process_time()
Trial(TrialSpec.model_validate({"workload": "mnist1d_mlp", "workload_options": {"n_train": 2000, "n_test": 500},
                                "batch_size": 256, "method": "legw", "budget": {"epochs": 1}, "threads": 1}))
t3 = time.process_time()
print(f"ray and ray.tune {t1 - t0:.2f} CPU-s, torch and the trial loop {t2 - t1:.2f}, "
      f"building the trial {t3 - t2:.2f}; {t3 - t0:.2f} in all")
