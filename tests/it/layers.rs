//! The daemon's module layers: every `crate::` path in `daemon/` goes to
//! the module's own folder or to a folder before it in the order
//! the "Layers" table of `daemon/lib.rs`'s doc lists, so no cycle between
//! folders can come back. Comments are not code and are skipped; so are
//! unit-test modules (an inline `#[cfg(test)] mod ... {` to the end of the
//! file, and files declared as `#[cfg(test)] mod name;`), which may build a
//! whole config to test a low layer.

use std::path::{Path, PathBuf};

/// The folders of `daemon/`, lowest layer first, as the "Layers" table of
/// `daemon/lib.rs`'s doc lists them (rows `//! | [`name`] | role |`).
/// `proto` is generated and below everything.
fn layer_order(root: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(root.join("daemon/lib.rs")).expect("read daemon/lib.rs");
    let mut order = vec!["proto".to_string()];
    for line in lib.lines() {
        if let Some(rest) = line.strip_prefix("//! | [`") {
            if let Some(end) = rest.find("`]") {
                order.push(rest[..end].to_string());
            }
        }
    }
    assert!(order.len() > 5, "no layer table in daemon/lib.rs");
    order
}

/// The files of modules declared `#[cfg(test)] mod name;` (test code).
fn test_module_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        // A file's child modules live beside it (mod.rs, lib.rs) or in a
        // folder of its own name (filter.rs -> filter/).
        let dir = match f.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs" | "main.rs") => f.parent().expect("a parent").to_path_buf(),
            _ => f.with_extension(""),
        };
        for w in lines.windows(2) {
            if w[0].trim() != "#[cfg(test)]" {
                continue;
            }
            let decl = w[1].trim();
            let Some(name) = decl
                .strip_suffix(';')
                .and_then(|d| d.rsplit_once("mod "))
                .map(|(_, n)| n.trim())
            else {
                continue;
            };
            out.push(dir.join(format!("{name}.rs")));
            out.push(dir.join(name).join("mod.rs"));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::X` module names a line of code uses.
fn crate_paths(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `netd_crate::`, `$crate::`
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push(&rest[..end]);
    }
    out
}

/// Every `crate::` path that goes from a layer to a later one:
/// `file:line: from -> to`.
fn violations(root: &Path) -> Vec<String> {
    let order = layer_order(root);
    let rank = |m: &str| order.iter().position(|o| o == m);
    let daemon = root.join("daemon");
    let mut files = Vec::new();
    rust_files(&daemon, &mut files);
    files.sort();
    let test_only = test_module_files(&files);
    let mut bad = Vec::new();
    for f in files {
        if test_only.contains(&f) {
            continue;
        }
        let rel = f.strip_prefix(&daemon).expect("under daemon/");
        let mut comps = rel.components();
        let top = comps
            .next()
            .expect("a component")
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        if comps.next().is_none() && (top == "lib.rs" || top == "main.rs") {
            continue; // the crate roots sit above every folder
        }
        let first = top.trim_end_matches(".rs").to_string();
        let from =
            rank(&first).unwrap_or_else(|| panic!("daemon/{first}/ is not in lib.rs's layer list"));
        let text = std::fs::read_to_string(&f).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if code == "#[cfg(test)]"
                && lines.get(n + 1).is_some_and(|l| {
                    let l = l.trim_start();
                    l.starts_with("mod ") && l.trim_end().ends_with('{')
                })
            {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            for to in crate_paths(code) {
                let Some(r) = rank(to) else { continue };
                if r > from {
                    bad.push(format!(
                        "daemon/{}:{}: {first} -> {to}",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn no_module_uses_a_later_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bad = violations(root);
    assert!(
        bad.is_empty(),
        "{} paths go against the layer order of daemon/lib.rs (move the item down, or pass it in):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_a_wrong_way_path() {
    assert_eq!(
        crate_paths("use crate::supervisor::Supervisor;"),
        ["supervisor"]
    );
    assert_eq!(
        crate_paths("x($crate::a) + netd_crate::b + crate::c::d"),
        ["c"]
    );
}

#[test]
fn test_only_module_files_are_recognised() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("daemon"), &mut files);
    let test_only = test_module_files(&files);
    assert!(test_only.contains(&root.join("daemon/supervisor/tests.rs")));
    assert!(test_only.contains(&root.join("daemon/services/sniffer/filter/tests.rs")));
    assert!(!test_only.contains(&root.join("daemon/supervisor/mod.rs")));
}
