//! The access log: one line per HTTP request and per closed proxied
//! connection, kept off the connection's path.
//!
//! A connection task formats its line into a reused thread-local buffer
//! (a small fixed format, no tracing span or field machinery) and copies
//! it into a bounded buffer shared by few threads (one of [`SHARDS`],
//! under a mutex held only for that copy; see [`Shard`]). A background
//! thread (`netd-access-log`) takes the lines out and writes them with one
//! `write(2)`, every [`FLUSH_INTERVAL`] or as soon as a shard is half full,
//! so a busy listener costs a few writes per second, not one per request.
//! When the buffer is full (the disk or journald does
//! not keep up) the line is dropped and counted
//! (`netd_access_log_dropped_total` on `/metrics`, and a warning at most
//! every [`DROP_REPORT_INTERVAL`]): a connection never waits for the log.
//!
//! Output: stderr (journald under systemd) unless `[access_log] path` names
//! a file; the file is opened for appending through [`crate::sys::safe_file`]
//! (no symbolic link followed, only a regular file owned by netd) and
//! opened again by name on SIGUSR1, after logrotate has moved it.
//!
//! Format: logfmt (`ts=... listener=web client=127.0.0.1:40000 ...`) or,
//! with `[log] format = "json"`, one JSON object per line, with the field
//! names the tracing events used before. The `netd::access` log level still
//! decides whether lines are written at all (`RUST_LOG=netd::access=off`),
//! and each listener's `access_log = false` turns its own lines off.
//!
//! Before [`init`] (unit tests, `--check-config`) nothing is logged.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::cell::RefCell;
use std::fmt::Display;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use crate::sys::safe_file;

/// Default `[access_log] buffer_bytes`: about 8,000 lines of ~130 bytes,
/// some 100 ms of a saturated HTTP listener.
pub const DEFAULT_BUFFER_BYTES: usize = 1 << 20;
/// Bounds of `[access_log] buffer_bytes`. The writer holds a second buffer
/// of the same size while it writes, so memory is twice this at most.
pub const BUFFER_BYTES_RANGE: std::ops::RangeInclusive<usize> = (64 << 10)..=(256 << 20);
/// Longest a line waits in the buffer while lines keep coming.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Lines dropped are reported (a warning) at most this often.
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How long an idle writer sleeps; the first line after that wakes it.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How long exit waits for the writer to write what is buffered.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// `[access_log]` in the config, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Absolute path of the file; None writes to stderr.
    pub path: Option<PathBuf>,
    /// Bytes of lines buffered at most; more are dropped.
    pub buffer_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            path: None,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }
}

/// Lines dropped because the buffer was full or the write failed, since
/// start.
pub fn dropped() -> u64 {
    SINK.get().map_or(0, |s| s.dropped.load(Relaxed))
}

/// Lines written, since start.
pub fn written() -> u64 {
    SINK.get().map_or(0, |s| s.written.load(Relaxed))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sleep {
    Awake,
    /// Waiting out FLUSH_INTERVAL: woken early only by a half-full buffer.
    Short,
    /// Idle: the next line wakes it.
    Long,
}

/// The writer's state, under `Sink::state` (with the condvar it sleeps
/// on). Lines are not here: they go to the shards.
#[derive(Debug)]
struct State {
    sleep: Sleep,
    closing: bool,
}

/// Lines waiting for the writer. The buffer is split in [`SHARDS`], each
/// thread filling its own (assigned round robin at its first line): with
/// one buffer, the runtime's workers took one lock per line between them,
/// and under load a contended lock is a futex wait, a wake and a context
/// switch (`perf stat -e syscalls:sys_enter_futex`: 1.6-4x the futex calls
/// of the same listener with its log off). Lines of different threads may
/// interleave out of time order by up to a flush interval; each carries its
/// time stamp.
#[derive(Debug, Default)]
struct Shard {
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
}

const SHARDS: usize = 4;

#[derive(Debug)]
struct Sink {
    state: Mutex<State>,
    /// `state.sleep` as the line pushers read it without the lock (see
    /// [`Sink::push`]); written with the lock held.
    sleep: std::sync::atomic::AtomicU8,
    shards: [Mutex<Shard>; SHARDS],
    wake: Condvar,
    /// Set by `close` once the writer has written its last batch.
    closed: Mutex<bool>,
    closed_cv: Condvar,
    cap: usize,
    json: bool,
    dropped: AtomicU64,
    written: AtomicU64,
    reopen: AtomicBool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// Where a line is formatted before it is copied into the shared buffer.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    /// This thread's shard.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Sleep {
    fn code(self) -> u8 {
        match self {
            Sleep::Awake => 0,
            Sleep::Short => 1,
            Sleep::Long => 2,
        }
    }
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Bytes one shard holds at most.
    fn shard_cap(&self) -> usize {
        self.cap / SHARDS
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock()
    }

    fn set_sleep(&self, st: &mut State, sleep: Sleep) {
        st.sleep = sleep;
        self.sleep
            .store(sleep.code(), std::sync::atomic::Ordering::SeqCst);
    }

    fn push(&self, line: &[u8]) {
        let len = {
            let mut sh = self.shard(SHARD.with(|s| *s));
            if sh.buf.len() + line.len() > self.shard_cap() {
                drop(sh);
                self.dropped.fetch_add(1, Relaxed);
                return;
            }
            sh.buf.extend_from_slice(line);
            sh.lines += 1;
            sh.buf.len()
        };
        // Read after the line is in: the writer announces a long sleep
        // before it looks at the shards, so either it sees this line or
        // this sees its long sleep and wakes it.
        let wake = match self.sleep.load(std::sync::atomic::Ordering::SeqCst) {
            2 => true,
            1 => len >= self.shard_cap() / 2,
            _ => false,
        };
        if wake {
            let mut st = self.lock();
            if st.sleep != Sleep::Awake {
                self.set_sleep(&mut st, Sleep::Awake);
                drop(st);
                self.wake.notify_one();
            }
        }
    }

    fn poke(&self) {
        let mut st = self.lock();
        self.set_sleep(&mut st, Sleep::Awake);
        drop(st);
        self.wake.notify_one();
    }

    /// Whether a shard is half full (the writer should write now), or, with
    /// `any`, holds anything.
    fn pending(&self, any: bool) -> bool {
        (0..SHARDS).any(|i| {
            let sh = self.shard(i);
            if any {
                !sh.buf.is_empty()
            } else {
                sh.buf.len() >= self.shard_cap() / 2
            }
        })
    }

    /// Move every shard's lines into `out`; the number of lines.
    fn take_all(&self, out: &mut Vec<u8>) -> u64 {
        let mut lines = 0;
        for i in 0..SHARDS {
            let mut sh = self.shard(i);
            out.extend_from_slice(&sh.buf);
            sh.buf.clear();
            lines += std::mem::take(&mut sh.lines);
        }
        lines
    }
}

/// Where the writer writes.
enum Output {
    /// A descriptor of its own for fd 2: writing through `std::io::stderr`
    /// would hold std's stderr lock while a write blocks (a full pipe to
    /// journald), and every tracing event on any thread would wait on it.
    Stderr(File),
    File {
        dir: safe_file::Dir,
        name: String,
        file: File,
    },
}

impl Output {
    fn open(path: Option<&Path>) -> io::Result<Output> {
        let Some(path) = path else {
            use std::os::fd::AsFd as _;
            let fd = io::stderr().as_fd().try_clone_to_owned()?;
            return Ok(Output::Stderr(File::from(fd)));
        };
        let (dir, name) = split(path)?;
        let dir = safe_file::Dir::open_or_create(dir)?;
        let file = dir.append_file(&name)?;
        Ok(Output::File { dir, name, file })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::Stderr(file) | Output::File { file, .. } => file.write_all(bytes),
        }
    }

    /// Open the file again by name (logrotate moved the old one away).
    fn reopen(&mut self) {
        if let Output::File { dir, name, file } = self {
            match dir.append_file(name) {
                Ok(f) => {
                    *file = f;
                    tracing::info!(target: "netd", path = %dir.path().join(&*name).display(), "access log reopened");
                }
                Err(e) => {
                    tracing::warn!(target: "netd", path = %dir.path().join(&*name).display(), error = %e, "cannot reopen the access log; writing to the old file")
                }
            }
        }
    }
}

/// The directory and the file name of an absolute path.
fn split(path: &Path) -> io::Result<(&Path, String)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "not an absolute file path");
    let dir = path.parent().ok_or_else(bad)?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    safe_file::check_file_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok((dir, name.to_string()))
}

/// Open the output and start the writer thread. Call once, before the
/// runtime starts (it opens the file, which blocks). `json` follows
/// `[log] format`.
pub fn init(settings: &Settings, json: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let output = Output::open(settings.path.as_deref()).with_context(|| {
        format!(
            "cannot open the access log {}",
            settings.path.as_deref().unwrap_or(Path::new("")).display()
        )
    })?;
    let sink = Sink {
        state: Mutex::new(State {
            sleep: Sleep::Awake,
            closing: false,
        }),
        sleep: std::sync::atomic::AtomicU8::new(Sleep::Awake.code()),
        shards: Default::default(),
        wake: Condvar::new(),
        closed: Mutex::new(false),
        closed_cv: Condvar::new(),
        cap: settings.buffer_bytes,
        json,
        dropped: AtomicU64::new(0),
        written: AtomicU64::new(0),
        reopen: AtomicBool::new(false),
    };
    if SINK.set(sink).is_err() {
        anyhow::bail!("the access log is already set up");
    }
    std::thread::Builder::new()
        .name("netd-access-log".into())
        .spawn(move || writer(SINK.get().expect("set above"), output))
        .context("cannot start the access log's writer thread")?;
    Ok(())
}

/// Open the file again by name (SIGUSR1); nothing for stderr. Returns at
/// once: the writer thread does it.
pub fn reopen() {
    if let Some(sink) = SINK.get() {
        sink.reopen.store(true, Relaxed);
        sink.poke();
    }
}

/// Write what is buffered and stop the writer (at exit). Waits for the
/// write at most [`CLOSE_WAIT`].
pub fn close() {
    let Some(sink) = SINK.get() else { return };
    sink.lock().closing = true;
    sink.poke();
    let mut done = sink.closed.lock();
    let _ = sink
        .closed_cv
        .wait_while_for(&mut done, |done| !*done, CLOSE_WAIT);
}

fn writer(sink: &Sink, mut out: Output) {
    let mut spare: Vec<u8> = Vec::new();
    let mut idle_rounds = 0u32;
    let mut reported_dropped = 0u64;
    let mut last_report: Option<Instant> = None;
    let mut write_error_reported: Option<Instant> = None;
    loop {
        let mut st = sink.lock();
        let urgent = st.closing || sink.reopen.load(Relaxed) || sink.pending(false);
        if !urgent {
            // A long sleep is announced before the shards are looked at
            // (see `Sink::push`).
            let long = idle_rounds >= 2 && {
                sink.set_sleep(&mut st, Sleep::Long);
                !sink.pending(true)
            };
            sink.set_sleep(&mut st, if long { Sleep::Long } else { Sleep::Short });
            let _ = sink
                .wake
                .wait_for(&mut st, if long { IDLE_WAKE } else { FLUSH_INTERVAL });
            sink.set_sleep(&mut st, Sleep::Awake);
        }
        let closing = st.closing;
        drop(st);
        let lines = sink.take_all(&mut spare);

        if sink.reopen.swap(false, Relaxed) {
            // Lines already buffered were meant for the old file; they go
            // to the new one, which is where a reader looks after rotation.
            out.reopen();
        }
        if spare.is_empty() {
            idle_rounds = idle_rounds.saturating_add(1);
        } else {
            idle_rounds = 0;
            match out.write_all(&spare) {
                Ok(()) => {
                    sink.written.fetch_add(lines, Relaxed);
                }
                Err(e) => {
                    sink.dropped.fetch_add(lines, Relaxed);
                    if write_error_reported.is_none_or(|t| t.elapsed() >= DROP_REPORT_INTERVAL) {
                        write_error_reported = Some(Instant::now());
                        tracing::warn!(target: "netd", error = %e, lines, "cannot write the access log; lines dropped");
                    }
                }
            }
            spare.clear();
        }
        let dropped = sink.dropped.load(Relaxed);
        if dropped > reported_dropped
            && last_report.is_none_or(|t| t.elapsed() >= DROP_REPORT_INTERVAL)
        {
            tracing::warn!(
                target: "netd",
                dropped = dropped - reported_dropped,
                total = dropped,
                "access log: lines dropped (the buffer was full or the write failed)"
            );
            reported_dropped = dropped;
            last_report = Some(Instant::now());
        }
        if closing {
            let mut done = sink.closed.lock();
            *done = true;
            sink.closed_cv.notify_all();
            return;
        }
    }
}

/// Whether a line would be written: the writer runs and the `netd::access`
/// target is enabled at info. Cheap (tracing caches the answer per call
/// site); call it before gathering what a line needs.
#[inline]
pub fn enabled() -> bool {
    SINK.get().is_some() && tracing::enabled!(target: "netd::access", tracing::Level::INFO)
}

/// One HTTP request; `client_cert` is the subject of the verified TLS
/// client certificate, when there is one.
#[allow(clippy::too_many_arguments)] // one per field of the line
pub fn http(
    listener: &str,
    client: SocketAddr,
    client_cert: Option<&str>,
    method: &str,
    path: &str,
    status: u16,
    bytes: u64,
    duration_us: u64,
) {
    emit(|l| {
        l.str("listener", listener);
        l.plain("client", client);
        if let Some(subject) = client_cert {
            l.str("tls_client", subject);
        }
        l.str("method", method);
        l.str("path", path);
        l.num("status", status.into());
        l.num("bytes", bytes);
        l.num("duration_us", duration_us);
    });
}

/// One request through an http-proxy: the `http` line's fields, then the
/// route it was counted under and the upstream that answered (none when
/// netd answered itself: a limit, a fault, no upstream reachable).
#[derive(Debug, Clone, Copy)]
pub struct HttpProxyRequest<'a> {
    pub listener: &'a str,
    pub client: SocketAddr,
    /// The verified TLS client certificate's subject.
    pub client_cert: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    pub duration_us: u64,
    pub route: &'a str,
    pub upstream: Option<SocketAddr>,
}

/// One request through an http-proxy (see [`HttpProxyRequest`]).
pub fn http_proxy(r: &HttpProxyRequest<'_>) {
    emit(|l| http_proxy_fields(l, r));
}

fn http_proxy_fields(l: &mut Line<'_>, r: &HttpProxyRequest<'_>) {
    l.str("listener", r.listener);
    l.plain("client", r.client);
    if let Some(subject) = r.client_cert {
        l.str("tls_client", subject);
    }
    l.str("method", r.method);
    l.str("path", r.path);
    l.num("status", r.status.into());
    l.num("bytes", r.bytes);
    l.num("duration_us", r.duration_us);
    l.str("route", r.route);
    if let Some(u) = r.upstream {
        l.plain("upstream", u);
    }
}

/// One closed proxied connection; `upstream` is None when none was
/// reachable (`end = "no upstream"`).
pub fn proxy(
    listener: &str,
    client: SocketAddr,
    upstream: Option<SocketAddr>,
    bytes_up: u64,
    bytes_down: u64,
    duration_ms: u64,
    end: &str,
) {
    emit(|l| {
        l.str("listener", listener);
        l.plain("client", client);
        if let Some(u) = upstream {
            l.plain("upstream", u);
        }
        l.num("bytes_up", bytes_up);
        l.num("bytes_down", bytes_down);
        l.num("duration_ms", duration_ms);
        l.str("end", end);
    });
}

/// A proxied connection whose client spoke TLS: [`proxy`]'s fields, then
/// the TLS version and the verified client certificate's subject (`-`:
/// none).
pub fn proxy_tls(
    listener: &str,
    client: SocketAddr,
    upstream: Option<SocketAddr>,
    (bytes_up, bytes_down): (u64, u64),
    duration_ms: u64,
    end: &str,
    (tls_version, tls_client): (&str, &str),
) {
    emit(|l| {
        l.str("listener", listener);
        l.plain("client", client);
        if let Some(u) = upstream {
            l.plain("upstream", u);
        }
        l.num("bytes_up", bytes_up);
        l.num("bytes_down", bytes_down);
        l.num("duration_ms", duration_ms);
        l.str("end", end);
        l.str("tls", tls_version);
        l.str(
            "tls_client",
            if tls_client.is_empty() {
                "-"
            } else {
                tls_client
            },
        );
    });
}

fn emit(fields: impl FnOnce(&mut Line<'_>)) {
    let Some(sink) = SINK.get() else { return };
    if !tracing::enabled!(target: "netd::access", tracing::Level::INFO) {
        return;
    }
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        let mut line = Line {
            buf,
            json: sink.json,
            first: true,
        };
        if line.json {
            line.buf.push(b'{');
        }
        line.plain("ts", humantime::format_rfc3339_micros(SystemTime::now()));
        fields(&mut line);
        if line.json {
            line.buf.push(b'}');
        }
        line.buf.push(b'\n');
        sink.push(buf);
        // A huge line (a long path) should not keep its memory per thread.
        if buf.capacity() > 16 << 10 {
            *buf = Vec::with_capacity(256);
        }
    });
}

/// A line being formatted: logfmt or JSON.
struct Line<'a> {
    buf: &'a mut Vec<u8>,
    json: bool,
    first: bool,
}

impl Line<'_> {
    fn key(&mut self, k: &str) {
        if self.json {
            if !self.first {
                self.buf.push(b',');
            }
            self.buf.push(b'"');
            self.buf.extend_from_slice(k.as_bytes());
            self.buf.extend_from_slice(b"\":");
        } else {
            if !self.first {
                self.buf.push(b' ');
            }
            self.buf.extend_from_slice(k.as_bytes());
            self.buf.push(b'=');
        }
        self.first = false;
    }

    /// A value whose text needs no escaping (an address, a time stamp):
    /// bare in logfmt, quoted in JSON.
    fn plain(&mut self, k: &str, v: impl Display) {
        self.key(k);
        if self.json {
            self.buf.push(b'"');
        }
        let _ = write!(self.buf, "{v}");
        if self.json {
            self.buf.push(b'"');
        }
    }

    fn num(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.buf, "{v}");
    }

    /// Any text: quoted and escaped where needed.
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        if self.json {
            escape_json(self.buf, v);
        } else {
            escape_logfmt(self.buf, v);
        }
    }
}

/// logfmt: bare when the value is non-empty printable ASCII without
/// space, `"`, `\` or `=`; otherwise quoted, with `"` and `\` escaped and
/// other bytes outside printable ASCII written as `\xNN`.
fn escape_logfmt(buf: &mut Vec<u8>, v: &str) {
    let bare = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'='));
    if bare {
        buf.extend_from_slice(v.as_bytes());
        return;
    }
    buf.push(b'"');
    for b in v.bytes() {
        match b {
            b'"' | b'\\' => buf.extend_from_slice(&[b'\\', b]),
            b' '..=b'~' => buf.push(b),
            _ => {
                let _ = write!(buf, "\\x{b:02x}");
            }
        }
    }
    buf.push(b'"');
}

/// A JSON string (RFC 8259): `"` and `\` escaped, control characters as
/// `\u00NN`; other UTF-8 as is.
fn escape_json(buf: &mut Vec<u8>, v: &str) {
    buf.push(b'"');
    for b in v.bytes() {
        match b {
            b'"' | b'\\' => buf.extend_from_slice(&[b'\\', b]),
            0..0x20 | 0x7f => {
                let _ = write!(buf, "\\u{b:04x}");
            }
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logfmt(v: &str) -> String {
        let mut b = Vec::new();
        escape_logfmt(&mut b, v);
        String::from_utf8(b).unwrap()
    }

    fn json(v: &str) -> String {
        let mut b = Vec::new();
        escape_json(&mut b, v);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        assert_eq!(logfmt("/a/b?x=1"), "\"/a/b?x=1\"");
        assert_eq!(logfmt("/plain"), "/plain");
        assert_eq!(logfmt(""), "\"\"");
        assert_eq!(logfmt("closed by netd"), "\"closed by netd\"");
        assert_eq!(
            logfmt("a\"b\\c\nd\u{e9}"),
            "\"a\\\"b\\\\c\\x0ad\\xc3\\xa9\""
        );
    }

    #[test]
    fn json_strings_parse_back() {
        for v in ["/x", "a\"b", "back\\slash", "nl\n\t\u{7f}", "caf\u{e9}", ""] {
            let text = json(v);
            let back: String = serde_json::from_str(&text).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn an_http_proxy_line_ends_with_its_route_and_upstream() {
        let mut buf = Vec::new();
        let mut l = Line {
            buf: &mut buf,
            json: false,
            first: true,
        };
        let mut r = HttpProxyRequest {
            listener: "hp",
            client: "127.0.0.1:4000".parse().unwrap(),
            client_cert: None,
            method: "GET",
            path: "/api/x",
            status: 200,
            bytes: 95,
            duration_us: 41,
            route: "/api",
            upstream: Some("127.0.0.1:9001".parse().unwrap()),
        };
        http_proxy_fields(&mut l, &r);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "listener=hp client=127.0.0.1:4000 method=GET path=/api/x status=200 bytes=95 duration_us=41 route=/api upstream=127.0.0.1:9001"
        );
        r.upstream = None;
        r.status = 502;
        let mut buf = Vec::new();
        let mut l = Line {
            buf: &mut buf,
            json: false,
            first: true,
        };
        http_proxy_fields(&mut l, &r);
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.ends_with("status=502 bytes=95 duration_us=41 route=/api"),
            "{text}"
        );
    }

    #[test]
    fn lines_have_their_fields() {
        let mut buf = Vec::new();
        let mut l = Line {
            buf: &mut buf,
            json: true,
            first: true,
        };
        l.buf.push(b'{');
        l.str("listener", "web \"1\"");
        l.plain("client", "127.0.0.1:4000".parse::<SocketAddr>().unwrap());
        l.num("status", 200);
        l.buf.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["listener"], "web \"1\"");
        assert_eq!(v["client"], "127.0.0.1:4000");
        assert_eq!(v["status"], 200);
    }
}
