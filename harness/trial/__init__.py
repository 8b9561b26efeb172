"""The trial loop (``loop.Trial``) and the parts it composes: micro-batch accumulation and placement
(``placement``, ``calibrate``), precision, ghost batch norm, the gradient noise scale (``noise``),
the auto-tuners that steer the LR as it trains (``autotune``: AdaScale, AutoWU), augmentation
(``objective``, ``adversarial``), decentralized workers (``gossip``, ``decentralized``,
``collectives``), data parallelism on Ray Train (``distributed``), sharpness, and checkpoints.

May import: ``harness.rules``, ``harness.workloads``, ``harness.data``, ``harness.spec``,
``harness.results`` (the environment it records); never ``harness.sweep`` or ``harness.commands``.
The parts see the trial through ``types.TrialView``, not ``loop.Trial``: nothing here imports
the loop back."""
