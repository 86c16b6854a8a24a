//! deploy/kubernetes checked offline: the ConfigMap's netd.toml is a config
//! netd accepts, and tests/py/k8s_check.py validates the manifests against
//! the Kubernetes JSON schemas bundled in the `kubernetes-validate` PyPI
//! package (strict: unknown fields are errors), checks the PodMonitor (a
//! CRD it has no schema for) field by field and the PrometheusRule against
//! deploy/prometheus/netd.rules.yml, and checks that the pieces
//! agree (ports, selectors, the generated ConfigMap's name).
//!
//! Runs the venv's python (`$NETD_PY_VENV` or `target/py-venv`, pins in
//! tests/py/requirements.txt), creating or updating it when the pins are not
//! met, as tests/it/grpc_interop.rs does; .ci/run sets it up front. No venv is
//! a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{NETD, output_within_deadline};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/k8s_check.py");
const INTEROP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/grpc_interop.py");
const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/requirements.txt");
/// The oldest Kubernetes the manifests are for: gRPC probes are GA from
/// 1.27; 1.30 is the oldest release the upstream project still patched
/// when these were written.
const KUBERNETES: &str = "1.30.0";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?}: {}\n{text}", out.status))
    }
}

/// The venv's python with the pinned packages.
fn python() -> PathBuf {
    let venv = std::env::var_os("NETD_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv"));
    let python = venv.join("bin/python");
    let deps =
        |python: &Path| run(Command::new(python).args([INTEROP, "check-deps", REQUIREMENTS]));
    if python.exists() && deps(&python).is_ok() {
        return python;
    }
    let fail = |e: String| -> ! {
        panic!(
            "cannot set up the Python venv {} (python3 with venv and pip, and PyPI, are \
             needed; or set NETD_PY_VENV to a venv with tests/py/requirements.txt): {e}",
            venv.display()
        )
    };
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).unwrap_or_else(|e| fail(e));
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
    .unwrap_or_else(|e| fail(e));
    deps(&python).unwrap_or_else(|e| fail(e));
    python
}

#[test]
fn the_configmaps_netd_toml_is_a_valid_config() {
    let mut cmd = Command::new(NETD);
    cmd.arg("--config")
        .arg(Path::new(DIR).join("netd.toml"))
        .arg("--check-config");
    let out = output_within_deadline(cmd).expect("netd --check-config exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manifests_validate_offline_against_the_kubernetes_schemas() {
    let out = run(Command::new(python()).args([CHECK, DIR, KUBERNETES]))
        .unwrap_or_else(|e| panic!("deploy/kubernetes does not validate:\n{e}"));
    assert!(out.contains("ok: 4 resources valid"), "{out}");
    assert!(out.contains("PrometheusRule"), "{out}");
}
