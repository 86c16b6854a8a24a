//! Standard gRPC clients on the Unix control socket. grpcio (C-core),
//! grpc-java and grpc-swift send the socket path as the HTTP/2 `:authority`,
//! which stock h2 resets with PROTOCOL_ERROR; netd's vendored h2 serves such
//! requests as if they had no authority (vendor/h2/NETD-PATCH.md).
//!
//! The clients are Python (tests/py/grpc_interop.py), run with a venv at
//! `$NETD_PY_VENV` or `target/py-venv` holding the packages pinned in
//! tests/py/requirements.txt; the venv is created here if it is missing or
//! out of date (.ci/run creates it up front). No venv is a failure, never a
//! skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, Netd};
use netd::util::addr::ControlAddr;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/grpc_interop.py");
const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/requirements.txt");

/// The listeners netd boots with; ListListeners must return exactly these.
const CONFIG: &str = "\
[[listener]]\nname = \"interop-tcp\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n\
[[listener]]\nname = \"interop-udp\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:0\"\n";
const LISTENERS: [&str; 2] = ["interop-tcp", "interop-udp"];

/// The venv's python, with the pinned packages installed (also used by
/// tests/it/toxiproxy_api.rs).
pub(crate) fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = std::env::var_os("NETD_PY_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv"));
        let python = venv.join("bin/python");
        if deps_ok(&python).is_ok() {
            return python;
        }
        let fail = |what: &str| -> ! {
            panic!(
                "cannot set up the Python venv for the gRPC interop test at {}: {what}\n\
                 Needs python3 with venv and pip (Debian: apt-get install python3-venv) \
                 and PyPI, or set NETD_PY_VENV to a venv with tests/py/requirements.txt \
                 installed.",
                venv.display()
            )
        };
        eprintln!("creating the Python venv {}", venv.display());
        if !python.exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
                .unwrap_or_else(|e| fail(&e));
        }
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(REQUIREMENTS))
        .unwrap_or_else(|e| fail(&e));
        deps_ok(&python).unwrap_or_else(|e| fail(&e));
        python
    })
}

/// Whether `python` exists and has exactly the pinned packages.
fn deps_ok(python: &Path) -> Result<(), String> {
    if !python.exists() {
        return Err(format!("{} does not exist", python.display()));
    }
    run(Command::new(python)
        .arg(SCRIPT)
        .arg("check-deps")
        .arg(REQUIREMENTS))
}

/// Run a setup command to completion; Err with its output if it fails.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Run tests/py/grpc_interop.py with `args` (after the socket path) against
/// `netd`, within a deadline; panics with the script's output and netd's
/// log unless it succeeds.
fn interop(netd: &Netd, mode: &str, args: &[&str]) -> String {
    let ControlAddr::Unix(socket) = &netd.control else {
        panic!("unix control socket expected")
    };
    let socket = socket.to_str().expect("a UTF-8 socket path");
    let mut all = vec![mode, socket];
    all.extend_from_slice(args);
    run_script(netd, SCRIPT, &all, mode)
}

/// Run the venv's Python on `script` with `args` within a deadline; its
/// output (stdout and stderr, kept in `py-{tag}.out` of netd's directory),
/// or a panic with it and netd's log.
pub fn run_script(netd: &Netd, script: &str, args: &[&str], tag: &str) -> String {
    let out_path = netd.dir.path().join(format!("py-{tag}.out"));
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup output file"))
        .stderr(out)
        .spawn()
        .expect("run python");
    // Each call in the script has its own deadline; this one only keeps a
    // wedged interpreter from hanging the test.
    let deadline = Instant::now() + DEADLINE * 6;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let name = Path::new(script)
        .file_name()
        .map_or(script.into(), |n| n.to_string_lossy());
    match status {
        Some(s) if s.success() => output,
        _ => panic!(
            "{name} {tag} failed ({}):\n{output}\nnetd log:\n{}",
            status.map_or("killed at the deadline".to_string(), |s| s.to_string()),
            netd.log()
        ),
    }
}

/// grpcio with default channel options: health, reflection and a netd.v1
/// call built from the reflected descriptors.
#[test]
fn grpcio_default_channel_on_unix_socket() {
    let netd = Netd::start(CONFIG);
    let out = interop(&netd, "grpcio", &LISTENERS);
    assert!(
        out.contains("ListListeners: ['interop-tcp', 'interop-udp']"),
        "{out}"
    );
}

/// Raw HTTP/2 with the two kinds of authority gRPC clients send on a Unix
/// socket (a path, a percent-encoded path): each must get a gRPC reply, not
/// RST_STREAM, whatever grpcio's defaults become.
#[test]
fn socket_path_as_authority_gets_a_grpc_reply() {
    let netd = Netd::start(CONFIG);
    let out = interop(&netd, "raw", &[]);
    for authority in ["'/tmp/x.sock'", "'%2Ftmp%2Fx.sock'"] {
        assert!(
            out.contains(&format!(
                "raw: authority {authority}: grpc-status 0, SERVING"
            )),
            "{out}"
        );
    }
}
