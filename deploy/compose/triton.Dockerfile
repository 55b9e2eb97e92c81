# STAND-IN for nvcr.io/nvidia/tritonserver when no registry is reachable (make compose-test): the
# real tritonserver 2.51 binary from the nvidia-pytriton 0.7.0 wheel, which has ONLY the Python
# backend. The models builder then writes the python flavour of the repository
# (OVERHEAD_TRITON_FLAVOUR=python: model.py runs ONNX Runtime inside Triton's Python backend).
# `tritonserver` on PATH is a wrapper adding the backend directory and the library path; the
# compose file's command and the curl healthcheck are used unchanged.
ARG BASE_IMAGE=overhead-base:bookworm
FROM ${BASE_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# libpython3.11: the backend stub links it (the same Python as the venv: Debian's 3.11)
RUN apt-get update && apt-get install -y --no-install-recommends libpython3.11 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/tritonserver \
    && /opt/tritonserver/bin/pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime>=1.18"
COPY deploy/compose/tritonserver.sh /usr/local/bin/tritonserver
RUN set -e; SP=$(/opt/tritonserver/bin/python -c 'import pytriton, os; print(os.path.dirname(pytriton.__file__))'); \
    T=$SP/tritonserver; mkdir -p /opt/tritonserver/backends/python; \
    cp $T/backends/python/libtriton_python.so $T/backends/python/triton_python_backend_utils.py \
       $T/python_backend_stubs/3.11/triton_python_backend_stub /opt/tritonserver/backends/python/; \
    ln -s $T /opt/tritonserver/dist; \
    ln -s $(dirname $SP)/nvidia_pytriton.libs /opt/tritonserver/libs; \
    chmod 755 /usr/local/bin/tritonserver; \
    groupadd --system --gid 1000 triton-server; \
    useradd --system --uid 1000 --gid triton-server --home-dir /tmp --shell /usr/sbin/nologin triton-server
USER 1000:1000
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
