"""The breakdown report of one run directory, one concern per module.

    load          read a run directory (``Run``, ``load_run``) and the open-loop view of it
    attribution   closure: split each request's end-to-end time over its spans
    summary       per step and size class: counts, throughput, latency, component shares
    validity      stable steps, enough requests, a load generator that kept up
    findings      the prose "what this says"
    tables        the report's tables as strings (shared by the files and the console)
    fmt           how numbers and load levels are written
    render        report.md / report.html (Jinja2 templates in templates/), breakdown.csv
    plots         plots/*.png
    console       the rich tables printed to the terminal
    cli           ``report(run_dir)`` and ``main`` (``python analysis/breakdown.py RUN_DIR``)

Reads only the run directory (``overhead.contract.rundir``); never imports ``deploy/``.
"""
