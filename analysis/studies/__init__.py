"""Studies: one command each, ``python -m analysis.studies.<name> [--smoke] [--out RUN_DIR]``.

Each writes a run directory with ``report.md``, CSV tables, ``plots/*.png`` and ``config.json``
(arguments, versions, thread counts, process CPU). See docs/studies.md.

    batch_latency     ORT latency vs batch size per model: warm-up, linear fit, memory, limit
    planner           exact instance/batch plans from batch_latency fits
    preprocessing     decode/resize/normalize share vs the detector's inference ceiling
    training_batch    training time and test accuracy vs batch size x epochs (MNIST CNN, custom CNN)
    server_batching   Triton: no batching vs dynamic batching; HTTP vs gRPC
"""
STUDIES = ("batch_latency", "planner", "preprocessing", "training_batch", "server_batching")
