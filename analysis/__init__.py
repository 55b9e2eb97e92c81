"""Analysis of run directories: ``breakdown.py`` (the report users run), ``compare.py``,
``trace_export.py``; studies live next to them. The run-directory contract they read is
``overhead.contract``."""
