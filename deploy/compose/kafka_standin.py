"""The Kafka stand-in image's entry point (tansu, a Kafka-protocol broker; NOT Apache Kafka).

    python3 kafka_standin.py serve                      # tansu with the compose file's KAFKA_* env
    python3 kafka_standin.py api-versions --bootstrap-server 127.0.0.1:9092   # the healthcheck
"""
import os
import socket
import struct
import sys


def serve() -> None:
    adv = os.environ.get("KAFKA_ADVERTISED_LISTENERS", "PLAINTEXT://localhost:9092")
    host_port = adv.split(",")[0].split("://", 1)[1]
    port = host_port.rsplit(":", 1)[1]
    argv = ["tansu", "broker", "--listener-url", f"tcp://0.0.0.0:{port}",
            "--advertised-listener-url", f"tcp://{host_port}", "--storage-engine", "memory://tansu/"]
    print("Kafka STAND-IN (tansu, not Apache Kafka):", " ".join(argv), flush=True)
    os.execvp(argv[0], argv)


def api_versions(bootstrap: str, timeout_s: float = 5.0) -> int:
    """ApiVersions v0 (api key 18): 0 when the broker answers with error_code 0."""
    host, port = bootstrap.rsplit(":", 1)
    client = b"healthcheck"
    body = struct.pack(">hhih", 18, 0, 7, len(client)) + client
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        head = s.recv(4, socket.MSG_WAITALL)
        (size,) = struct.unpack(">i", head)
        resp = s.recv(size, socket.MSG_WAITALL)
    corr, err = struct.unpack(">ih", resp[:6])
    return 0 if corr == 7 and err == 0 else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["api-versions"]:
        args = sys.argv[2:]
        server = args[args.index("--bootstrap-server") + 1] if "--bootstrap-server" in args else "127.0.0.1:9092"
        try:
            sys.exit(api_versions(server))
        except OSError as exc:
            print(exc, file=sys.stderr)
            sys.exit(1)
    else:
        sys.exit(__doc__)
