#!/usr/bin/env python3
"""Standard gRPC clients against netd's Unix control socket.

Run by tests/it/grpc_interop.rs with the venv's python (packages pinned in
tests/py/requirements.txt):

  grpc_interop.py check-deps REQUIREMENTS
      exit 0 if the installed packages match the pins, 1 otherwise.
  grpc_interop.py grpcio SOCKET NAME...
      grpcio with default channel options ("unix:" + SOCKET, which sends the
      percent-encoded socket path as :authority): health check, server
      reflection, then netd.v1.Control/ListListeners with message classes
      built from the reflected descriptors; the listener names must be
      exactly NAME...
  grpc_interop.py raw SOCKET
      a gRPC health check over plain HTTP/2 (the h2 package) with a given
      :authority: "localhost", a raw socket path and a percent-encoded one.
      Each must get a gRPC response, not RST_STREAM.

Every call has a deadline (TIMEOUT). Failures print "FAIL: ..." and exit 1.
"""

import socket
import sys
import traceback

TIMEOUT = 20.0  # seconds, per call: a deadline, not a measurement

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


class Fail(Exception):
    pass


def check_deps(requirements):
    from importlib import metadata

    bad = []
    with open(requirements) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, want = line.split("==")
            try:
                have = metadata.version(name)
            except metadata.PackageNotFoundError:
                have = None
            if have != want:
                bad.append(f"{name}: want {want}, have {have}")
    if bad:
        raise Fail("Python packages do not match the pins: " + "; ".join(bad))


def grpcio(socket_path, expected_names):
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # The v1alpha messages are the v1 messages (same fields, same numbers);
    # grpcio-reflection ships only v1alpha, netd serves v1.
    from grpc_reflection.v1alpha import reflection_pb2

    # Default options on purpose: no grpc.default_authority override.
    with grpc.insecure_channel("unix:" + socket_path) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)

        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "netd.v1.Control"):
            reply = health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
            )
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                raise Fail(f"health of {service!r}: {reply.status}, want SERVING")
        print("health: SERVING")

        reflect = channel.stream_stream(
            REFLECTION_V1,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

        def ask(**request):
            replies = list(
                reflect(
                    iter([reflection_pb2.ServerReflectionRequest(**request)]),
                    timeout=TIMEOUT,
                )
            )
            if len(replies) != 1:
                raise Fail(f"reflection {request}: {len(replies)} replies, want 1")
            if replies[0].HasField("error_response"):
                raise Fail(f"reflection {request}: {replies[0].error_response}")
            return replies[0]

        services = sorted(
            s.name for s in ask(list_services="").list_services_response.service
        )
        print("reflection: services", services)
        for want in ("netd.v1.Control", "grpc.health.v1.Health"):
            if want not in services:
                raise Fail(f"reflection lists {services}, without {want}")

        # The file defining netd.v1.Control and, by name, what it imports.
        files = {}

        def learn(reply):
            for raw in reply.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(fd.name, fd)

        learn(ask(file_containing_symbol="netd.v1.Control"))
        while missing := {d for f in files.values() for d in f.dependency} - set(files):
            for name in sorted(missing):
                learn(ask(file_by_filename=name))
                if name not in files:
                    raise Fail(f"reflection did not return {name}")

        pool = descriptor_pool.DescriptorPool()
        added = set()

        def add(name):
            if name not in added:
                for dep in files[name].dependency:
                    add(dep)
                pool.Add(files[name])
                added.add(name)

        for name in sorted(files):
            add(name)

        method = pool.FindServiceByName("netd.v1.Control").methods_by_name[
            "ListListeners"
        ]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        list_listeners = channel.unary_unary(
            "/netd.v1.Control/ListListeners",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = list_listeners(request_class(), timeout=TIMEOUT)
        names = sorted(listener.name for listener in reply.listeners)
        print("ListListeners:", names)
        if names != sorted(expected_names):
            raise Fail(f"ListListeners: {names}, want {sorted(expected_names)}")


def raw_health_check(socket_path, authority):
    """One gRPC Health/Check on a fresh HTTP/2 connection with :authority
    set to `authority`; returns the grpc-status, raises Fail on a reset."""
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(socket_path)
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", authority),
                (":path", HEALTH_CHECK),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        # One length-prefixed message: an empty HealthCheckRequest.
        conn.send_data(stream, b"\x00\x00\x00\x00\x00", end_stream=True)
        sock.sendall(conn.data_to_send())

        headers, trailers, body = {}, {}, b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise Fail(f"authority {authority!r}: connection closed")
            for event in conn.receive_data(data):
                if getattr(event, "stream_id", stream) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(
                        event.flow_controlled_length, stream
                    )
                elif isinstance(event, h2.events.StreamReset):
                    code = getattr(event.error_code, "name", event.error_code)
                    raise Fail(f"authority {authority!r}: RST_STREAM({code})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise Fail(f"authority {authority!r}: GOAWAY({event.error_code})")
                elif isinstance(event, h2.events.StreamEnded):
                    if headers.get(":status") != "200":
                        raise Fail(f"authority {authority!r}: headers {headers}")
                    # Trailers-only replies carry grpc-status in the headers.
                    status = trailers.get("grpc-status", headers.get("grpc-status"))
                    return status, body
            sock.sendall(conn.data_to_send())


def raw(socket_path):
    # "localhost" first: it is valid everywhere, so a failure there is the
    # client's, not the authority's.
    # Every authority is tried, so that a failure report shows all of them.
    failed = []
    for authority in ("localhost", "/tmp/x.sock", "%2Ftmp%2Fx.sock"):
        try:
            status, body = raw_health_check(socket_path, authority)
            # grpc-status 0 and HealthCheckResponse{status: SERVING (1)}.
            if status != "0" or body != b"\x00\x00\x00\x00\x02\x08\x01":
                raise Fail(
                    f"authority {authority!r}: grpc-status {status}, body {body!r}"
                )
        except (Fail, OSError) as e:
            print(f"raw: {e}")
            failed.append(authority)
            continue
        print(f"raw: authority {authority!r}: grpc-status 0, SERVING")
    if failed:
        raise Fail(f"no gRPC reply with :authority {failed}")


def main(argv):
    try:
        if len(argv) == 2 and argv[0] == "check-deps":
            check_deps(argv[1])
        elif len(argv) >= 2 and argv[0] == "grpcio":
            grpcio(argv[1], argv[2:])
        elif len(argv) == 2 and argv[0] == "raw":
            raw(argv[1])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # grpc.RpcError, socket timeouts, ...
        traceback.print_exc()
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
