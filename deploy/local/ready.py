"""Readiness probes for the local servers: one real request each, no client library.

Usage: python3 ready.py kafka|cql HOST PORT. Exits 0 when the server answers the request,
1 otherwise; stack.sh polls it until it succeeds.

- kafka: a Metadata request (v4). Ready once the answer lists at least one live broker, that
  is, once the broker has registered with its controller and serves requests.
- cql: a CQL v4 STARTUP, then `SELECT release_version FROM system.local`. Ready once the
  query returns rows.
"""
import socket
import struct
import sys


def read(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def kafka(s: socket.socket) -> bool:
    client = b"eip-stack"
    # Request header v1: api_key 3 (Metadata), version 4, correlation id, client id.
    header = struct.pack(">hhih", 3, 4, 1, len(client)) + client
    # Metadata v4 body: topics = null (all), allow_auto_topic_creation = false.
    request = header + struct.pack(">ib", -1, 0)
    s.sendall(struct.pack(">i", len(request)) + request)
    size = struct.unpack(">i", read(s, 4))[0]
    response = read(s, size)
    correlation, _throttle, brokers = struct.unpack(">iii", response[:12])
    return correlation == 1 and brokers >= 1


CQL_STARTUP, CQL_READY, CQL_QUERY, CQL_RESULT = 0x01, 0x02, 0x07, 0x08


def cql(s: socket.socket) -> bool:
    def frame(opcode: int, body: bytes, stream: int) -> bytes:
        return struct.pack(">BBhBI", 4, 0, stream, opcode, len(body)) + body

    def response() -> int:
        _version, _flags, _stream, opcode, length = struct.unpack(">BBhBI", read(s, 9))
        read(s, length)
        return opcode

    def string(text: str) -> bytes:
        return struct.pack(">H", len(text)) + text.encode()

    s.sendall(frame(CQL_STARTUP, struct.pack(">H", 1) + string("CQL_VERSION") + string("3.0.0"), 0))
    if response() != CQL_READY:
        return False
    query = b"SELECT release_version FROM system.local"
    # Long string query, consistency ONE, no flags.
    s.sendall(frame(CQL_QUERY, struct.pack(">I", len(query)) + query + struct.pack(">HB", 1, 0), 1))
    return response() == CQL_RESULT


def main() -> int:
    probe = {"kafka": kafka, "cql": cql}[sys.argv[1]]
    host, port = sys.argv[2], int(sys.argv[3])
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return 0 if probe(s) else 1
    except (OSError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main())
