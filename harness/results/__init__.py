"""The results store: one sweep's trials and measurements as parquet tables, with each running
trial's record beside them until it is folded in (``store``), and the columns they hold
(``schema``). Everything downstream (``analysis``, ``report``) reads a sweep through here.

May import: ``harness.errors`` only."""
