"""The rules a study compares, as pure functions of a base recipe and a batch size: LR scaling and
warmup rules (``scaling``), the resolved recipe they produce (``recipe``), LR schedules
(``schedules``), optimizers (``optimizers``, with ``layerwise`` trust ratios for LARS and LAMB).

May import: ``harness.errors`` and ``harness.plugins`` only (``harness.spec`` builds on these
models); nothing that trains.
Add an LR or warmup rule in ``scaling`` (or as a plugin), an optimizer in ``optimizers``."""
