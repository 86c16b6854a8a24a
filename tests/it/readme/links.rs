//! The documentation as a whole: README.md stays a newcomer's page (at most
//! [`MAX_README_LINES`] lines), every page (docs/**/*.md, bench/README.md)
//! is reachable from it by links, and no relative link or `#anchor` in
//! them points at nothing. A page nobody links is a page nobody reads; a
//! dead link is the first thing a moved section leaves behind.
//!
//! An anchor is checked against the target page's headings, made into ids
//! as GitHub does (lower case; letters, digits, `-` and `_` kept, spaces
//! made `-`, everything else dropped). Links inside code blocks are not
//! links. External links (`https:`, `mailto:`, ...) are not followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// The most lines README.md may have.
pub const MAX_README_LINES: usize = 400;

/// How deep under docs/ pages are looked for.
const MAX_DEPTH: usize = 8;

/// Every .md file under `dir`, subfolders included, sorted.
pub fn markdown_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && depth < MAX_DEPTH {
                todo.push((p, depth + 1));
            } else if kind.is_file() && p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The lines of `text` outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |l| {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The link targets of a Markdown text, in order (`[text](target)`; the
/// text may span lines, the target does not).
fn links(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\]\(([^)\s]+)\)").expect("link pattern");
    prose(text)
        .flat_map(|l| {
            re.captures_iter(l)
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The id GitHub gives a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text: its headings' ids.
fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .filter_map(|l| {
            let hashes = l.len() - l.trim_start_matches('#').len();
            (hashes > 0 && l[hashes..].starts_with(' ')).then(|| slug(&l[hashes..]))
        })
        .collect()
}

/// `path` relative to `root`, `..` and `.` resolved without touching the
/// file system; `None` if it leaves `root`.
fn normal(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What is wrong with the documentation under `root`: one line per
/// problem, empty when all is well.
pub fn problems(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut pages: Vec<PathBuf> = vec![PathBuf::from("README.md")];
    pages.extend(
        markdown_under(&root.join("docs"))
            .into_iter()
            .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf)),
    );
    if root.join("bench/README.md").is_file() {
        pages.push(PathBuf::from("bench/README.md"));
    }
    let mut texts = BTreeMap::new();
    for p in &pages {
        match std::fs::read_to_string(root.join(p)) {
            Ok(t) => {
                texts.insert(p.clone(), t);
            }
            Err(e) => bad.push(format!("{}: cannot read: {e}", p.display())),
        }
    }
    if let Some(readme) = texts.get(Path::new("README.md")) {
        let n = readme.lines().count();
        if n > MAX_README_LINES {
            bad.push(format!(
                "README.md has {n} lines, more than {MAX_README_LINES}: move the detail to docs/ and link it"
            ));
        }
    }
    // Links: each must resolve; .md targets are the edges for reachability.
    let mut edges: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for (page, text) in &texts {
        let dir = page.parent().unwrap_or(Path::new(""));
        for target in links(text) {
            if target.contains(':') && !target.starts_with('#') {
                continue; // https:, mailto:, file: ...
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                Some(page.clone())
            } else {
                normal(&dir.join(path))
            };
            let Some(resolved) = resolved else {
                bad.push(format!(
                    "{}: link '{target}' leaves the repository",
                    page.display()
                ));
                continue;
            };
            if !root.join(&resolved).exists() {
                bad.push(format!(
                    "{}: link '{target}': {} does not exist",
                    page.display(),
                    resolved.display()
                ));
                continue;
            }
            if resolved.extension().is_some_and(|x| x == "md") {
                edges
                    .entry(page.clone())
                    .or_default()
                    .push(resolved.clone());
            }
            if let Some(anchor) = anchor {
                let text = match texts.get(&resolved) {
                    Some(t) => Some(t.clone()),
                    None if resolved.extension().is_some_and(|x| x == "md") => {
                        std::fs::read_to_string(root.join(&resolved)).ok()
                    }
                    None => None,
                };
                if let Some(text) = text {
                    if !anchors(&text).contains(anchor) {
                        bad.push(format!(
                            "{}: link '{target}': {} has no heading with the id '{anchor}'",
                            page.display(),
                            resolved.display()
                        ));
                    }
                }
            }
        }
    }
    // Reachability from README.md.
    let mut seen = BTreeSet::from([PathBuf::from("README.md")]);
    let mut todo = vec![PathBuf::from("README.md")];
    while let Some(p) = todo.pop() {
        for next in edges.get(&p).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    for p in texts.keys() {
        if !seen.contains(p) {
            bad.push(format!(
                "{} is not reachable from README.md by links: link it from README.md or a page linked from it",
                p.display()
            ));
        }
    }
    bad
}

#[test]
fn readme_is_short_and_every_page_is_linked_and_every_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bad = problems(root);
    assert!(
        bad.is_empty(),
        "the documentation has {} problem(s):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn link_check_finds_long_readmes_orphans_and_dead_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write = |p: &str, text: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write(
        "README.md",
        "# netd\n\nSee [the guide](docs/guide.md) and [more](docs/guide.md#a-b-c).\n\n```\n[not a link](nowhere.md)\n```\n",
    );
    write(
        "docs/guide.md",
        "# Guide\n\n## A, b (c)\n\n[deep](kinds/x.md), [up](../README.md#netd)\n",
    );
    write("docs/kinds/x.md", "# X\n\n[self](#x)\n");
    write("bench/README.md", "# Benchmarks\n");
    let bad = problems(root);
    assert_eq!(
        bad,
        [
            "bench/README.md is not reachable from README.md by links: link it from README.md or a page linked from it"
        ]
    );

    write(
        "docs/kinds/x.md",
        "# X\n\n[bench](../../bench/README.md), [gone](y.md), [bad anchor](../guide.md#nope), [out](../../../etc/passwd)\n",
    );
    write("docs/orphan.md", "# Orphan\n");
    write("README.md", &"line\n".repeat(MAX_README_LINES + 1));
    let bad = problems(root);
    assert!(
        bad.iter().any(|b| b.starts_with("README.md has 401 lines")),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.contains("docs/kinds/y.md does not exist")),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.contains("has no heading with the id 'nope'")),
        "{bad:?}"
    );
    assert!(
        bad.iter().any(|b| b.contains("leaves the repository")),
        "{bad:?}"
    );
    for orphan in ["docs/orphan.md", "docs/guide.md", "bench/README.md"] {
        assert!(
            bad.iter()
                .any(|b| b.starts_with(&format!("{orphan} is not reachable"))),
            "{orphan}: {bad:?}"
        );
    }
}

#[test]
fn headings_become_githubs_ids() {
    assert_eq!(slug("Toxics (TCP)"), "toxics-tcp");
    assert_eq!(
        slug("Runtime state, update, drain, apply and reload"),
        "runtime-state-update-drain-apply-and-reload"
    );
    assert_eq!(
        slug("Access log against nginx's"),
        "access-log-against-nginxs"
    );
    assert_eq!(slug("`netctl` and netd_v1"), "netctl-and-netd_v1");
    assert_eq!(
        links("a [b\nc](d.md#e) and [f](https://x.org) `x`"),
        ["d.md#e", "https://x.org"]
    );
}

/// Every registered kind is documented where a user looks: its page
/// docs/kinds/SLUG.md, its row in the README's kinds table, and its row in
/// docs/configuration.md's key table naming every key of its flat form.
/// netctl's flags and help follow from the kind's keys; these pages are
/// written by hand, so a new kind or key is checked here.
#[test]
fn every_kind_has_its_page_and_its_rows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
    let readme = read("README.md");
    let config = read("docs/configuration.md");
    for k in netd::services::KINDS {
        let page = format!("docs/kinds/{}.md", k.slug);
        assert!(root.join(&page).is_file(), "{}: {page} is missing", k.slug);
        let link = format!("| [`{}`]({page}) |", k.slug);
        assert!(
            readme.lines().any(|l| l.starts_with(&link)),
            "{}: no row in the README's kinds table (a line starting {link})",
            k.slug
        );
        let head = format!("| `{}` |", k.slug);
        let row = config
            .lines()
            .find(|l| l.starts_with(&head))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no row in docs/configuration.md's key table (a line starting {head})",
                    k.slug
                )
            });
        for key in k.keys {
            let named = row
                .match_indices(&format!("`{}", key.key))
                .any(|(i, m)| matches!(row[i + m.len()..].chars().next(), Some('`' | ' ')));
            assert!(
                named,
                "{}: docs/configuration.md's row does not name `{}`",
                k.slug, key.key
            );
        }
    }
}
