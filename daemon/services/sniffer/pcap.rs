//! pcap export with a size cap and rotation: when the file reaches
//! `max_bytes`, it is closed and renamed to NAME.1 (NAME.1 to NAME.2, ...,
//! keeping `max_files` rotated files) and a fresh NAME is started. Every
//! file is a complete pcap (Ethernet link type) once it is closed; the
//! current one is written out (its buffer flushed) when the sniffer stops.
//!
//! Files live in `capture_dir` and are opened, renamed and removed only
//! through [`crate::sys::safe_file::Dir`]: a rotation slot held by anything but
//! one of netd's own regular files (a symbolic link, another user's file)
//! is left alone, with a warning, and that step of the rotation skipped.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

use crate::sys::safe_file::{Dir, Skipped};

/// Snap length recorded in the header and applied to packets.
pub const SNAPLEN: u32 = 262_144;
const HEADER_BYTES: u64 = 24;
const RECORD_HEADER_BYTES: u64 = 16;

pub struct Pcap {
    dir: Dir,
    name: String,
    max_bytes: u64,
    max_files: u32,
    writer: Option<PcapWriter<BufWriter<File>>>,
    written: u64,
    pub packets: u64,
}

fn open(dir: &Dir, name: &str) -> io::Result<PcapWriter<BufWriter<File>>> {
    let file = dir.create_file(name)?;
    let header = PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    PcapWriter::with_header(BufWriter::with_capacity(256 * 1024, file), header)
        .map_err(io::Error::other)
}

impl Pcap {
    /// Create (truncate) file `name` in `dir` now, so a bad file fails at
    /// start.
    pub fn create(dir: Dir, name: &str, max_bytes: u64, max_files: u32) -> io::Result<Pcap> {
        let writer = open(&dir, name)?;
        Ok(Pcap {
            dir,
            name: name.to_string(),
            max_bytes,
            max_files,
            writer: Some(writer),
            written: HEADER_BYTES,
            packets: 0,
        })
    }

    pub fn write(&mut self, time: SystemTime, frame: &[u8]) -> io::Result<()> {
        let record = RECORD_HEADER_BYTES + frame.len() as u64;
        if self.written + record > self.max_bytes && self.written > HEADER_BYTES {
            self.rotate()?;
        }
        let ts: Duration = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let data = &frame[..frame.len().min(SNAPLEN as usize)];
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("pcap writer closed"))?;
        w.write_packet(&PcapPacket::new(ts, frame.len() as u32, data))
            .map_err(io::Error::other)?;
        self.written += RECORD_HEADER_BYTES + data.len() as u64;
        self.packets += 1;
        Ok(())
    }

    fn rotated(&self, i: u32) -> String {
        format!("{}.{i}", self.name)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.close()?;
        if self.max_files == 0 {
            let skipped = self.dir.remove_ours(&self.name)?;
            self.warn_skipped(skipped);
        } else {
            let oldest = self.rotated(self.max_files);
            let removed = self.dir.remove_ours(&oldest);
            self.warn_failed(&oldest, removed);
            for i in (1..self.max_files).rev() {
                let (from, to) = (self.rotated(i), self.rotated(i + 1));
                let moved = self.dir.rename_ours(&from, &to);
                self.warn_failed(&from, moved);
            }
            let moved = self.dir.rename_ours(&self.name, &self.rotated(1))?;
            self.warn_skipped(moved);
        }
        self.writer = Some(open(&self.dir, &self.name)?);
        self.written = HEADER_BYTES;
        Ok(())
    }

    fn warn_skipped(&self, skipped: Option<Skipped>) {
        if let Some(s) = skipped {
            tracing::warn!(
                file = %self.path(&s.name).display(),
                "pcap rotation: leaving {} alone ({}); that step is skipped",
                s.name,
                s.what
            );
        }
    }

    fn warn_failed(&self, name: &str, result: io::Result<Option<Skipped>>) {
        match result {
            Ok(skipped) => self.warn_skipped(skipped),
            Err(e) => tracing::warn!(
                file = %self.path(name).display(),
                error = %e,
                "pcap rotation: cannot move this file; that step is skipped"
            ),
        }
    }

    /// Flush and close the current file; later writes fail.
    pub fn close(&mut self) -> io::Result<()> {
        match self.writer.take() {
            Some(w) => w.into_writer().flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Pcap {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
