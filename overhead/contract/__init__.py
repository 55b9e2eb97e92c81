"""The run contract, at the bottom of the house: what every layer agrees on and nothing else.

    records.py    Span, RequestRecord, StepRecord (one Arrow schema each), STAGES, COMPONENTS
    rundir.py     the run directory: paths, Parquet/JSON read and write helpers
    runconfig.py  config.json as a typed RunConfig (one reader, one writer)
    ceiling.py    the inference-only ceiling (CeilingRecord, ceiling.json)
    stability.py  is a load step stable? (windowed throughput and p50)
    topics.py     broker topic names of the pipeline

Imports nothing from the project, and nothing heavy at import time (the gevent-patched
locustfile imports it): pyarrow and pandas are imported inside the functions that need them.
"""
