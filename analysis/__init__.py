"""Analysis of run directories: ``breakdown.py`` (the report users run) and ``rundir.py`` (run
directory paths, schemas and read/write helpers); studies live next to them as scripts."""
