"""TF Serving deployment files: versioned SavedModel directories, ``models.config`` and the
batching parameters file (``deploy/tfserving/config.py``). The real ``tensorflow_model_server``
runs under Docker Compose on a user's machine; tests here use a TEST DOUBLE
(``tests/tfserving_double.py``)."""
