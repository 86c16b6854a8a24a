#!/usr/bin/env python3
"""A reflection client that speaks only grpc.reflection.v1alpha, against netd.

Run by tests/it/reflection.rs with the venv's python (tests/py/requirements.txt):

  reflection_v1alpha.py TARGET NAME...
      TARGET is a grpcio target ("unix:/path/to/sock" or "127.0.0.1:PORT").
      grpcio-reflection's own v1alpha client (ProtoReflectionDescriptorDatabase,
      which calls /grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo
      only, as grpcurl 1.8, grpcui, Evans and Postman do) lists the services,
      resolves netd.v1.Control with everything it imports, and the test then
      calls ListListeners with message classes built from those descriptors;
      the listener names must be exactly NAME...

Every call has a deadline (TIMEOUT). Failures print "FAIL: ..." and exit 1.
"""

import sys
import traceback

TIMEOUT = 20.0  # seconds, per call: a deadline, not a measurement


class Fail(Exception):
    pass


def main(target, expected_names):
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        print("v1alpha reflection: services", services)
        for want in ("netd.v1.Control", "grpc.health.v1.Health"):
            if want not in services:
                raise Fail(f"v1alpha reflection lists {services}, without {want}")
        pool = descriptor_pool.DescriptorPool(db)
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
        names = sorted(l.name for l in reply.listeners)
        print("ListListeners:", names)
        if names != sorted(expected_names):
            raise Fail(f"ListListeners returned {names}, want {sorted(expected_names)}")


if __name__ == "__main__":
    try:
        if len(sys.argv) < 2:
            raise Fail("usage: reflection_v1alpha.py TARGET NAME...")
        main(sys.argv[1], sys.argv[2:])
    except Fail as e:
        print(f"FAIL: {e}")
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        print("FAIL: unexpected exception")
        sys.exit(1)
