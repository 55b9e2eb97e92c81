# STAND-IN for redis:7.2.5-alpine when no registry is reachable (make compose-test): Debian's real
# redis-server (7.0) and redis-cli. The compose file passes the command (AOF on the /data volume).
ARG BASE_IMAGE=overhead-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
COPY deploy/compose/redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh
RUN chmod 755 /usr/local/bin/redis-entrypoint.sh
WORKDIR /data
USER redis
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
EXPOSE 6379
CMD ["redis-server", "--port", "6379", "--appendonly", "yes"]
