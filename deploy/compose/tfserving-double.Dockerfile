# TF Serving TEST DOUBLE image, NOT TF Serving (make compose-test; no registry gives
# tensorflow/serving here). tests/tfserving_double.py serves the SavedModels of the models volume
# with TensorFlow over TF Serving's real gRPC and REST APIs. It starts from the models-builder image
# (which has TensorFlow and tensorflow-serving-api), so it adds one small layer. bash is there for
# the compose file's /dev/tcp healthcheck.
ARG MODELS_IMAGE=overhead-models:0.1.0
FROM ${MODELS_IMAGE}
COPY tests/tfserving_double.py deploy/compose/tfserving_double_main.py /opt/tfserving-double/
WORKDIR /opt/tfserving-double
ENV TF_CPP_MIN_LOG_LEVEL=2
USER 10001:10001
EXPOSE 8500 8501
ENTRYPOINT ["python", "/opt/tfserving-double/tfserving_double_main.py"]
