"""The ``batchscale`` commands as functions of plain arguments (``harness.cli`` parses the command
line and calls them): ``train``; ``schedule``, ``plan``, ``list`` (inspect); ``sweep``, ``report``,
``reproduce`` (study)."""
