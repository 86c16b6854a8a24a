//! Server reflection for clients that speak only `grpc.reflection.v1alpha`
//! (grpcurl 1.8, grpcui, Evans, Postman, Python's grpc_reflection.v1alpha):
//! netd serves it beside v1. The client is grpcio-reflection's own v1alpha
//! descriptor database (tests/py/reflection_v1alpha.py, the venv of
//! tests/it/grpc_interop.rs), on the Unix socket and on TCP.

use std::process::Command;

use crate::common::Netd;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/py/reflection_v1alpha.py"
);

const CONFIG: &str = "\
[[listener]]\nname = \"refl-tcp\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n\
[[listener]]\nname = \"refl-udp\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:0\"\n";

/// Run the v1alpha client against `target` within a deadline; its output,
/// or a panic with it and netd's log.
fn v1alpha_client(netd: &Netd, target: &str) -> String {
    crate::grpc_interop::run_script(netd, SCRIPT, &[target, "refl-tcp", "refl-udp"], "v1alpha")
}

#[test]
fn a_v1alpha_only_client_reflects_and_calls_netd_on_the_unix_socket() {
    let netd = Netd::start(CONFIG);
    let netd::util::addr::ControlAddr::Unix(socket) = &netd.control else {
        panic!("unix control socket expected")
    };
    let out = v1alpha_client(&netd, &format!("unix:{}", socket.display()));
    assert!(
        out.contains("ListListeners: ['refl-tcp', 'refl-udp']"),
        "{out}"
    );
}

#[test]
fn a_v1alpha_only_client_reflects_and_calls_netd_on_tcp() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("netd.toml"), CONFIG).expect("write config");
    let port = crate::common::free_tcp_port();
    let control: netd::util::addr::ControlAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut cmd = Command::new(crate::common::NETD);
    cmd.arg("--config")
        .arg(dir.path().join("netd.toml"))
        .arg("--control-insecure");
    let netd = Netd::spawn(cmd, dir, control);
    let out = v1alpha_client(&netd, &format!("127.0.0.1:{port}"));
    assert!(
        out.contains("ListListeners: ['refl-tcp', 'refl-udp']"),
        "{out}"
    );
}
