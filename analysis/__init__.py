"""Analysis of a results store: aggregation, tables, plots, the report, paper claims.

Reads only ``results/<sweep>/`` (``harness.results.store``); never imports Ray.
"""
