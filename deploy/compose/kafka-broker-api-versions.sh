#!/bin/sh
# Stand-in for Kafka's tool of the same name: `--bootstrap-server HOST:PORT` -> a real ApiVersions
# request to the broker; exit 0 when it answers without error.
exec python3 /opt/kafka/kafka_standin.py api-versions "$@"
