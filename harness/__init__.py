"""batchscale: large-batch training experiments.

The data path reads one way: spec -> resolved trials -> Ray Tune -> trial loop -> measurements ->
results store -> analysis -> report. The packages, in the order a study passes through them
(docs/architecture.md has the map and where to add each kind of thing):

* ``spec``: YAML -> validated specs; what follows from a spec without running anything (the cells
  its claims read, the tuned arm's LR lattice, the catalog of shipped studies);
* ``rules``: what a study compares: LR scaling and warmup rules, schedules, optimizers;
* ``workloads`` and ``data``: model, data, metric and base recipe; datasets and their loaders;
* ``trial``: the trial loop and the parts it composes (accumulation, precision, noise scale,
  auto-tuners, checkpoints, decentralized workers, data parallelism);
* ``sweep``: the protocol (pilot, budgets) and Ray Tune: plan -> one Tune run -> records;
* ``results``: the results store (parquet tables, records, schema);
* ``commands``: the ``batchscale`` commands (``cli`` parses the command line).

``errors`` (the one-line errors and their exit codes) and ``plugins`` (user modules registering
workloads and rules) are imported from everywhere.
"""

__version__ = "0.1.0"
