//! Man pages and shell completions, generated from the clap definitions of
//! `netd` and `netctl` so that they cannot drift from `--help`. Each binary
//! writes its own (`netd --generate-docs DIR`, `netctl generate-docs DIR`,
//! both hidden); deploy/debian/build-deb puts them into the package.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap_complete::Shell;

/// Write `DIR/NAME.SECTION` (roff) and the bash, zsh and fish completions
/// under `DIR/completions/` (named as each shell looks them up: `NAME`,
/// `_NAME`, `NAME.fish`). Returns the files written.
pub fn write(cmd: clap::Command, section: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    let mut put = |path: PathBuf, bytes: Vec<u8>| -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let mut man = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual(if section == "8" {
            "System Administration"
        } else {
            "User Commands"
        })
        .render(&mut man)
        .with_context(|| format!("rendering the {name}({section}) man page"))?;
    put(dir.join(format!("{name}.{section}")), man)?;
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut out);
        put(
            dir.join("completions").join(shell.to_string()).join(file),
            out,
        )?;
    }
    Ok(written)
}
