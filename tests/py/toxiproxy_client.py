"""A Toxiproxy-style test run against netd's Toxiproxy-compatible API with
the real client library from PyPI (toxiproxy-python, pinned in
requirements.txt), as a Toxiproxy user's suite would run it. Driven by
tests/it/toxiproxy_api.rs:

  toxiproxy_client.py API_PORT UPSTREAM

UPSTREAM is a TCP echo server the proxies forward to. The script leaves a
known state behind for the Rust test to compare with netd's own view:

  - proxy "py_main" (listen 127.0.0.1:0, upstream UPSTREAM), enabled, with
    one toxic "final_latency": latency 42 ms, jitter 3 ms, upstream,
    toxicity 0.25;
  - proxy "py_pop" (created by POST /populate), disabled;
  - no proxy "py_tmp" (created, then destroyed).

toxiproxy-python 0.1.1 has no call for updating a toxic or for the server's
/populate: those go through its own APIConsumer (the same HTTP session and
error mapping). Failures print "FAIL: ..." and exit 1.
"""

import json
import sys
import traceback

TIMEOUT = 20.0  # seconds, per HTTP call: a deadline, not a measurement


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def expect_raises(exc, fn, what):
    try:
        fn()
    except exc:
        return
    raise Fail(f"{what}: no {exc.__name__} raised")


def run(port, upstream):
    import requests
    from toxiproxy import Toxiproxy
    from toxiproxy.api import APIConsumer
    from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

    # Every call of the library goes through requests; give each a deadline.
    original = requests.Session.request

    def with_timeout(self, *args, **kwargs):
        kwargs.setdefault("timeout", TIMEOUT)
        return original(self, *args, **kwargs)

    requests.Session.request = with_timeout

    server = Toxiproxy()
    server.update_api_consumer("127.0.0.1", port)
    check(server.running(), "running() is False")

    version = json.loads(server.version())
    check(version["version"].startswith("2."), f"version: {version}")

    check(server.reset(), "reset")

    # Create, list, get.
    main = server.create(upstream=upstream, name="py_main", listen="127.0.0.1:0")
    check(main.enabled is True, f"enabled after create: {main.enabled}")
    check(main.upstream == upstream, f"upstream: {main.upstream}")
    host, _, bound = main.listen.rpartition(":")
    check(host == "127.0.0.1" and int(bound) != 0, f"listen not bound: {main.listen}")
    proxies = server.proxies()
    check("py_main" in proxies, f"py_main not listed: {sorted(proxies)}")
    check(proxies["py_main"].listen == main.listen, "listen differs in the list")
    expect_raises(
        ProxyExists,
        lambda: APIConsumer.post(
            "/proxies", json={"name": "py_main", "upstream": upstream}
        ),
        "duplicate proxy (409)",
    )
    expect_raises(NotFound, lambda: APIConsumer.get("/proxies/py_nope"), "unknown proxy")

    # Toxics: add with defaults, list, update (merge), add another, remove.
    main.add_toxic(type="latency", attributes={"latency": 100, "jitter": 5})
    toxics = main.toxics()
    check(list(toxics) == ["latency_downstream"], f"toxics: {list(toxics)}")
    lat = toxics["latency_downstream"]
    check(lat.type == "latency" and lat.stream == "downstream", f"{vars(lat)}")
    check(lat.toxicity == 1.0, f"toxicity: {lat.toxicity}")
    check(lat.attributes == {"latency": 100, "jitter": 5}, f"attributes: {lat.attributes}")

    updated = APIConsumer.post(
        "/proxies/py_main/toxics/latency_downstream", json={"attributes": {"latency": 250}}
    ).json()
    check(
        updated["attributes"] == {"latency": 250, "jitter": 5},
        f"update did not merge: {updated}",
    )
    check(
        main.get_toxic("latency_downstream").attributes["latency"] == 250,
        "update not listed",
    )

    main.add_toxic(
        type="bandwidth", stream="upstream", name="bw", toxicity=0.5, attributes={"rate": 64}
    )
    bw = main.get_toxic("bw")
    check(bw is not None and bw.stream == "upstream", "bw toxic")
    check(bw.toxicity == 0.5 and bw.attributes == {"rate": 64}, f"bw: {vars(bw)}")
    expect_raises(
        ProxyExists,
        lambda: main.add_toxic(type="bandwidth", stream="upstream", name="bw"),
        "duplicate toxic (409)",
    )
    expect_raises(InvalidToxic, lambda: main.add_toxic(type="nonsense"), "unknown type")
    expect_raises(
        InvalidToxic,
        lambda: main.add_toxic(type="latency", stream="sideways"),
        "bad stream",
    )
    expect_raises(
        NotFound, lambda: APIConsumer.get("/proxies/py_main/toxics/nope"), "unknown toxic"
    )
    check(main.destroy_toxic("bw"), "destroy_toxic")
    check(list(main.toxics()) == ["latency_downstream"], "bw not removed")

    # Disable and enable; the stand-in fault is not a toxic.
    main.disable()
    check(server.get_proxy("py_main").enabled is False, "not disabled")
    check(list(main.toxics()) == ["latency_downstream"], "disable shows as a toxic")
    main.enable()
    check(server.get_proxy("py_main").enabled is True, "not enabled again")
    with main.down():
        check(server.get_proxy("py_main").enabled is False, "down() did not disable")
    check(server.get_proxy("py_main").enabled is True, "down() did not enable again")

    # The library's own populate (create when missing) and destroy.
    made = server.populate(
        [{"name": "py_tmp", "upstream": upstream, "listen": "127.0.0.1:0"}]
    )
    check([p.name for p in made] == ["py_tmp"], "library populate")
    check(server.destroy(server.get_proxy("py_tmp")), "destroy")
    check(server.get_proxy("py_tmp") is None, "py_tmp still listed")

    # The server's /populate: create or replace, 201 with the proxies.
    r = APIConsumer.post(
        "/populate",
        json=[
            {"name": "py_pop", "upstream": upstream, "listen": "127.0.0.1:0"},
            {"name": "py_main", "upstream": upstream, "listen": main.listen},
        ],
    )
    check(r.status_code == 201, f"/populate: {r.status_code} {r.text}")
    names = [p["name"] for p in r.json()["proxies"]]
    check(names == ["py_pop", "py_main"], f"/populate proxies: {names}")
    # Unchanged py_main was kept as it was, toxic included.
    check(
        main.get_toxic("latency_downstream") is not None, "populate dropped a kept proxy's toxic"
    )

    # Reset: every proxy enabled, every toxic gone.
    server.get_proxy("py_pop").disable()
    check(server.reset(), "reset")
    for name, p in server.proxies().items():
        check(p.enabled is True, f"{name} still disabled after reset")
        check(p.toxics() == {}, f"{name} still has toxics after reset")

    # The state the Rust test compares with netd's own view.
    main.add_toxic(
        type="latency",
        stream="upstream",
        name="final_latency",
        toxicity=0.25,
        attributes={"latency": 42, "jitter": 3},
    )
    server.get_proxy("py_pop").disable()
    print("listen=" + main.listen)


def main(argv):
    try:
        if len(argv) != 2:
            print(__doc__, file=sys.stderr)
            return 2
        run(int(argv[0]), argv[1])
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the library's exceptions, requests' errors, ...
        traceback.print_exc()
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
