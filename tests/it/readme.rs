//! The shell examples of the README and of every page under docs/, run as
//! written and in order. ([`links`] checks the pages as a whole: the
//! README's length, every page linked, no dead link.)
//!
//! Every ```` ```console ```` block of README.md and of docs/**/*.md
//! (subfolders included) is a script with its expected output: a line
//! starting with `$ ` is a command, the lines after it up to the next `$ `
//! are what it prints (stdout and stderr together). The blocks of one
//! document run in document order, in one working directory, against one
//! fresh netd of their own (so a page sets up what its examples need),
//! started the way the quick start says (`cargo run --bin netd`: the built
//! binary, no `--config`, so the embedded default), with a private control
//! socket and state directory given the way a user would give them
//! (`NETD_CONTROL`, `NETD_STATE_DIR`), inside a network namespace of the
//! test's own so the documents' fixed ports cannot clash with anything else
//! (so, like the sniffer tests, it needs root and iproute2). Nothing is
//! left behind: each command's process group is killed when it ends, then
//! netd, the namespace and the temporary directories go.
//!
//! Commands run with bash, with the built `netd` and `netctl` first in
//! PATH; `cargo run -q --bin netctl --` and `cargo run --bin netd` are read
//! as `netctl` and `netd`. A command must exit 0 unless its expected output
//! has an error line (`netctl: ...` or `netd: ...`).
//!
//! What cannot be literal is matched by pattern. Both the expected and the
//! actual output go through one normaliser ([`normalise`]), line by line:
//!
//! - runs of spaces and tabs are one space, trailing ones and `\r` dropped
//!   (table columns are as wide as their values);
//! - ISO-8601 UTC times and 10-digit unix times are `<time>`;
//! - ports in the kernel's ephemeral range (32768 and up, what `:0`
//!   binds) are `<port>`;
//! - durations (`4s`, `1m30s`, `250ms`, `1.2ms`) are `<dur>`;
//! - byte counts with a unit (`0 B`, `40.2 KiB`, `1MB`) are `<bytes>`;
//! - packet counts (`10 packets`) are `<n> packets`: how many segments a
//!   TCP exchange takes depends on when the kernel sends its ACKs;
//! - `pid:N` is `pid:<pid>`.
//!
//! An expected line that is exactly `...` stands for any number of lines
//! (none included). A command that only reads (`netctl list`, `status`,
//! `stats` without `--watch`, `export`, `fault ls`) is run again until its
//! output matches or [`DEADLINE`] passes, since what it shows (a pool
//! filling, a capture counting) settles asynchronously.
//!
//! An HTML comment directly before a block (blank lines allowed between)
//! tells the harness more:
//!
//! - `<!-- readme-test: skip REASON -->`: the block is not run (it needs
//!   another host, a config the quick-start daemon does not have, or it
//!   streams until Ctrl-C); the reason is required.
//! - `<!-- readme-test: file NAME -->` before a block of any language: its
//!   text is written to NAME in the working directory when the run gets
//!   there, so examples use the files the document shows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use netd::util::addr::ControlAddr;

use crate::common::{DEADLINE, NETCTL, NETD, NetNs, Netd};

mod links;

/// One thing the harness does, in document order.
#[derive(Debug)]
enum Step {
    /// Write a file into the working directory.
    File { name: String, text: String },
    /// Run a console block.
    Console { line: usize, commands: Vec<Cmd> },
}

#[derive(Debug)]
struct Cmd {
    /// Line number in the document (1-based), for messages.
    line: usize,
    text: String,
    expected: Vec<String>,
}

/// A Markdown document as the harness reads it.
struct Parsed {
    steps: Vec<Step>,
    /// Blocks not run: (line, reason).
    skipped: Vec<(usize, String)>,
}

/// The steps of one Markdown document, and the blocks it skips.
fn parse(doc: &str) -> Result<Parsed, String> {
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    let mut directive: Option<(usize, String)> = None;
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- readme-test:") {
            let body = rest
                .strip_suffix("-->")
                .ok_or(format!("line {}: unterminated readme-test comment", i + 1))?;
            directive = Some((i + 1, body.trim().to_string()));
            continue;
        }
        let Some(lang) = trimmed.strip_prefix("```") else {
            if !trimmed.is_empty() {
                if let Some((at, d)) = directive.take() {
                    return Err(format!("line {at}: `{d}` is not directly before a block"));
                }
            }
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut body = Vec::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                closed = true;
                break;
            }
            body.push(l.get(indent..).unwrap_or(l.trim_start()).to_string());
        }
        if !closed {
            return Err(format!("line {}: unclosed code block", i + 1));
        }
        let directive = directive.take();
        match directive.as_ref().map(|(at, d)| (*at, d.as_str())) {
            Some((at, d)) if d.starts_with("skip") => {
                let reason = d["skip".len()..].trim();
                if reason.is_empty() {
                    return Err(format!("line {at}: a skip needs a reason"));
                }
                skipped.push((i + 1, reason.to_string()));
            }
            Some((at, d)) if d.starts_with("file ") => {
                let name = d["file ".len()..].trim();
                if name.is_empty() || name.contains('/') {
                    return Err(format!("line {at}: bad file name '{name}'"));
                }
                let mut text = body.join("\n");
                text.push('\n');
                steps.push(Step::File {
                    name: name.to_string(),
                    text,
                });
            }
            Some((at, d)) => return Err(format!("line {at}: unknown directive '{d}'")),
            None if lang == "console" => steps.push(Step::Console {
                line: i + 1,
                commands: commands(i + 2, &body)?,
            }),
            None => {}
        }
    }
    Ok(Parsed { steps, skipped })
}

/// The commands of a console block whose first line is document line
/// `first`.
fn commands(first: usize, body: &[String]) -> Result<Vec<Cmd>, String> {
    let mut out: Vec<Cmd> = Vec::new();
    for (k, l) in body.iter().enumerate() {
        if let Some(c) = l.strip_prefix("$ ") {
            out.push(Cmd {
                line: first + k,
                text: c.to_string(),
                expected: Vec::new(),
            });
        } else if let Some(cmd) = out.last_mut() {
            cmd.expected.push(l.clone());
        } else {
            return Err(format!(
                "line {}: output before any `$ ` command",
                first + k
            ));
        }
    }
    Ok(out)
}

/// What the documents write for the binaries, as they are on PATH.
fn resolve(command: &str) -> String {
    command
        .replace("cargo run -q --bin netctl --", "netctl")
        .replace("cargo run --bin netd", "netd")
}

/// Whether a command only reads (and so may be run again until its output
/// settles).
fn read_only(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    if words.first() != Some(&"netctl") || command.contains("--watch") || command.contains('|') {
        return false;
    }
    match words.iter().position(|w| {
        [
            "list", "status", "stats", "export", "fault", "start", "stop", "update",
        ]
        .contains(w)
    }) {
        Some(p) => match words[p] {
            "fault" => words.get(p + 1) == Some(&"ls"),
            "list" | "status" | "stats" | "export" => true,
            _ => false,
        },
        None => false,
    }
}

/// Replace every match of `re` in `s` by `with`.
fn sub(s: &str, re: &str, with: &str) -> String {
    regex::Regex::new(re)
        .expect("normaliser pattern")
        .replace_all(s, with)
        .into_owned()
}

/// The normaliser the module doc describes, for one line.
fn normalise(line: &str) -> String {
    let mut s = line.replace('\r', "").replace('\t', " ");
    s = sub(&s, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>");
    s = sub(&s, r"\b\d{10}(\.\d+)?\b", "<time>");
    let ports = regex::Regex::new(r":(\d{5})\b").expect("port pattern");
    s = ports
        .replace_all(&s, |c: &regex::Captures| match c[1].parse::<u32>() {
            Ok(p) if (32768..=65535).contains(&p) => ":<port>".to_string(),
            _ => c[0].to_string(),
        })
        .into_owned();
    s = sub(&s, r"\b(\d+(\.\d+)?(ns|µs|us|ms|s|m|h|d))+\b", "<dur>");
    s = sub(
        &s,
        r"\b\d+(\.\d+)? ?(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\b",
        "<bytes>",
    );
    s = sub(&s, r"\b\d+ packets\b", "<n> packets");
    s = sub(&s, r"pid:\d+", "pid:<pid>");
    s = sub(&s, r" +", " ");
    s.trim_end().to_string()
}

/// Whether normalised `actual` lines match normalised `expected` ones,
/// where an expected `...` stands for any number of lines.
fn matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => (0..=actual.len()).any(|k| matches(rest, &actual[k..])),
        Some((e, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| a == e && matches(rest, more)),
    }
}

/// Where the documents' commands run: the namespace, the daemon, the
/// working directory and PATH.
struct Session {
    // Dropped in this order: netd is stopped before its namespace goes.
    netd: Netd,
    ns: NetNs,
    work: tempfile::TempDir,
    path: String,
}

impl Session {
    fn start() -> Session {
        let ns = NetNs::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let control = ControlAddr::Unix(dir.path().join("netd.sock"));
        // The quick start's `cargo run --bin netd`: no --config. The
        // control socket and state directory come from NETD_CONTROL and
        // NETD_STATE_DIR, which Netd::spawn sets.
        let netd = Netd::spawn(ns.command(NETD), dir, control);
        let bin = Path::new(NETCTL).parent().expect("bin dir");
        assert_eq!(Path::new(NETD).parent(), Some(bin));
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Session {
            netd,
            ns,
            work: tempfile::tempdir().expect("work dir"),
            path,
        }
    }

    /// Run one command: its combined output (lines) and whether it exited
    /// 0. The command runs in a process group of its own, killed whole if
    /// it is still running at [`DEADLINE`] (an example that runs until
    /// Ctrl-C needs a skip), so nothing it started outlives the test.
    fn run(&self, command: &str) -> Result<(Vec<String>, bool), String> {
        use std::os::unix::process::CommandExt;
        let out_path = self.netd.dir.path().join("command.out");
        let out = std::fs::File::create(&out_path).map_err(|e| format!("command output: {e}"))?;
        let mut cmd = self.ns.command("bash");
        cmd.args(["-c", &format!("exec 2>&1\n{command}")])
            .current_dir(self.work.path())
            .env("PATH", &self.path)
            .env("NETD_CONTROL", self.netd.control.to_string())
            .env_remove("NETD_STATE_DIR")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("spawn bash: {e}"))?;
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                waited => {
                    // SAFETY: kill(2) on the process group this test made.
                    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                    let _ = child.wait();
                    return Err(match waited {
                        Err(e) => format!("waiting for it: {e}"),
                        _ => format!("still running after {DEADLINE:?}"),
                    });
                }
            }
        };
        // Whatever it left in its process group goes too.
        // SAFETY: as above.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let text = std::fs::read(&out_path).map_err(|e| format!("command output: {e}"))?;
        let text = String::from_utf8_lossy(&text);
        Ok((text.lines().map(str::to_string).collect(), status.success()))
    }

    /// Run a command and check it against the document; the failure, if any.
    fn check(&self, doc: &str, c: &Cmd) -> Result<(), String> {
        let command = resolve(&c.text);
        let expected: Vec<String> = c.expected.iter().map(|l| normalise(l)).collect();
        let wants_error = c
            .expected
            .iter()
            .any(|l| l.starts_with("netctl: ") || l.starts_with("netd: "));
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (out, ok) = self
                .run(&command)
                .map_err(|e| format!("{doc}:{}: `{}`: {e}", c.line, c.text))?;
            let actual: Vec<String> = out.iter().map(|l| normalise(l)).collect();
            let good = matches(&expected, &actual) && ok != wants_error;
            if good {
                return Ok(());
            }
            if !read_only(&command) || Instant::now() > deadline {
                return Err(format!(
                    "{doc}:{}: `{}` {}\n--- the document shows:\n{}\n--- it printed:\n{}\n--- normalised, expected:\n{}\n--- normalised, got:\n{}",
                    c.line,
                    c.text,
                    if ok == wants_error {
                        format!("exited {}", if ok { "0" } else { "non-zero" })
                    } else {
                        "printed something else".to_string()
                    },
                    c.expected.join("\n"),
                    out.join("\n"),
                    expected.join("\n"),
                    actual.join("\n"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The documents whose console blocks are checked: README.md, then
/// docs/**/*.md by path.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    docs.extend(links::markdown_under(&root.join("docs")));
    docs
}

/// Run one document's steps against a netd of its own; the report of
/// what failed, if anything did.
fn run_document(path: &Path) -> Result<(), String> {
    let name = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {name}: {e}"))?;
    let Parsed { steps, skipped } = parse(&text).map_err(|e| format!("{name}: {e}"))?;
    if !steps.iter().any(|s| matches!(s, Step::Console { .. })) {
        return Ok(());
    }
    for (line, reason) in &skipped {
        eprintln!("{name}:{line}: console block skipped: {reason}");
    }
    let session = Session::start();
    // Every failing command is reported, not only the first: a later one
    // may fail because of an earlier one, but a documentation edit usually
    // touches several.
    let mut failures = Vec::new();
    for step in &steps {
        match step {
            Step::File { name: file, text } => {
                std::fs::write(session.work.path().join(file), text)
                    .map_err(|e| format!("{name}: write {file}: {e}"))?;
            }
            Step::Console { line, commands } => {
                eprintln!("{name}:{line}: running console block");
                for c in commands {
                    if let Err(e) = session.check(&name, c) {
                        failures.push(e);
                    }
                }
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} command(s) of {name} do not run as written:\n\n{}\n\n--- netd's log ({name}):\n{}",
        failures.len(),
        failures.join("\n\n"),
        session.netd.log()
    ))
}

/// Every document runs, even after one fails: a change to a shared
/// message usually breaks several.
#[test]
fn readme_console_blocks_run_as_written() {
    let failed: Vec<String> = documents()
        .iter()
        .filter_map(|doc| run_document(doc).err())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n========\n\n"));
}

#[test]
fn normaliser_keeps_what_is_literal_and_patterns_the_rest() {
    assert_eq!(
        normalise(
            "echo      tcp-echo  running  127.0.0.1:8080  0 active, 0 total  0 B  0 B  0   4s"
        ),
        "echo tcp-echo running 127.0.0.1:8080 0 active, 0 total <bytes> <bytes> 0 <dur>"
    );
    assert_eq!(
        normalise("started e2 (tcp-echo) on 127.0.0.1:41234"),
        normalise("started e2 (tcp-echo) on 127.0.0.1:57001")
    );
    assert_ne!(
        normalise("on 127.0.0.1:8080"),
        normalise("on 127.0.0.1:8081")
    );
    assert_eq!(
        normalise(r#""started_at": "2026-11-28T13:48:19Z","#),
        r#""started_at": "<time>","#
    );
    assert_eq!(normalise("rate=1MB/s, 12.5 KiB"), "rate=<bytes>/s, <bytes>");
    assert_eq!(normalise("uptime 1m30s, 100/s"), "uptime <dur>, 100/s");
    assert_eq!(
        normalise("tcp 312 packets, 0 B"),
        "tcp <n> packets, <bytes>"
    );
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches(&e(&["a", "...", "c"]), &e(&["a", "b", "b", "c"])));
    assert!(matches(&e(&["a", "...", "c"]), &e(&["a", "c"])));
    assert!(!matches(&e(&["a", "c"]), &e(&["a", "b", "c"])));
    assert!(read_only("netctl -o json status e2"));
    assert!(read_only("netctl fault ls"));
    assert!(!read_only("netctl fault add db slow --type latency"));
    assert!(!read_only(
        "netctl start tcp-echo status --listen 127.0.0.1:0"
    ));
    assert!(!read_only("netctl stats --watch"));
}

#[test]
fn directives_are_checked() {
    let doc = "<!-- readme-test: skip -->\n```console\n$ true\n```\n";
    assert!(parse(doc).is_err(), "a skip without a reason");
    let doc = "<!-- readme-test: file a.toml -->\ntext\n```toml\nx = 1\n```\n";
    assert!(parse(doc).is_err(), "a directive not before its block");
    let doc = "<!-- readme-test: file a.toml -->\n\n```toml\nx = 1\n```\n```console\n$ cat a.toml\nx = 1\n```\n";
    let Parsed { steps, skipped } = parse(doc).expect("parse");
    assert!(skipped.is_empty());
    assert!(
        matches!(&steps[0], Step::File { name, text } if name == "a.toml" && text == "x = 1\n")
    );
    assert!(
        matches!(&steps[1], Step::Console { commands, .. } if commands.len() == 1 && commands[0].expected == ["x = 1"])
    );
}
