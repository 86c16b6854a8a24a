//! The Debian package's inputs, checked without building it (the live
//! systemd test builds and installs it): the man pages and completions
//! that `netd --generate-docs` and `netctl generate-docs` write from the
//! clap definitions, the maintainer scripts, and that every asset
//! `[package.metadata.deb]` names exists or is generated.

use std::path::Path;
use std::process::Command;

use crate::common::{NETCTL, NETD};

fn generate(dir: &Path) {
    for (bin, args) in [
        (NETD, vec!["--generate-docs"]),
        (NETCTL, vec!["generate-docs"]),
    ] {
        let out = Command::new(bin)
            .args(args)
            .arg(dir)
            .output()
            .expect("run the generator");
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn man_pages_and_completions_come_from_the_clap_definitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path());
    let read = |p: &str| {
        std::fs::read_to_string(dir.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let netctl = read("netctl.1");
    assert!(netctl.contains(".TH netctl 1"), "{netctl}");
    assert!(netctl.contains("reload"), "netctl(1) lacks reload");
    assert!(
        !netctl.contains("generate\\-docs"),
        "the hidden command is documented"
    );
    let netd = read("netd.8");
    assert!(netd.contains(".TH netd 8"), "{netd}");
    assert!(netd.contains("\\-\\-check\\-config"), "{netd}");
    assert!(
        !netd.contains("generate\\-docs"),
        "the hidden flag is documented"
    );
    for name in ["netd", "netctl"] {
        let bash = dir.path().join("completions/bash").join(name);
        let out = Command::new("bash")
            .arg("-n")
            .arg(&bash)
            .output()
            .expect("bash -n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        read(&format!("completions/zsh/_{name}"));
        read(&format!("completions/fish/{name}.fish"));
    }
    assert!(read("completions/bash/netctl").contains("reload"));
}

#[test]
fn maintainer_scripts_parse_and_every_package_asset_is_there() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for script in ["postinst", "prerm", "postrm", "build-deb"] {
        let path = root.join("deploy/debian").join(script);
        let shell = if script == "build-deb" { "bash" } else { "sh" };
        let out = Command::new(shell)
            .arg("-n")
            .arg(&path)
            .output()
            .expect("sh -n");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("Cargo.toml parses");
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets");
    let generated = tempfile::tempdir().expect("tempdir");
    generate(generated.path());
    for asset in assets {
        let source = asset[0].as_str().expect("asset source");
        if let Some(bin) = source.strip_prefix("target/release/") {
            assert!(["netd", "netctl"].contains(&bin), "{source}");
        } else if let Some(g) = source.strip_prefix("target/deb-assets/") {
            // build-deb gzips the man pages and the README.
            let made = g.strip_suffix(".gz").unwrap_or(g);
            assert!(
                made == "README.md" || generated.path().join(made).is_file(),
                "{source} is not generated"
            );
        } else {
            assert!(root.join(source).is_file(), "{source} does not exist");
        }
    }
    assert_eq!(deb["conf-files"][0].as_str(), Some("/etc/netd/netd.toml"));
}
