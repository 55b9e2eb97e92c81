#!/bin/sh
# As the upstream redis image's entrypoint does: a redis-server started without a config file gets
# `--protected-mode no` (else it refuses the other containers; only the bridge network reaches it).
if [ "$1" = "redis-server" ]; then
    shift
    exec redis-server "$@" --protected-mode no
fi
exec "$@"
