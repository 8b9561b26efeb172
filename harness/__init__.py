"""batchscale: large-batch training experiments.

The data path reads one way: spec -> resolved trials -> Ray Tune -> trial loop -> measurements ->
results store -> analysis -> report. Each step is one module of this package (``spec``,
``scaling``/``schedules``, ``sweep``, ``trial``, ``store``) or of ``analysis``.
"""

__version__ = "0.1.0"
