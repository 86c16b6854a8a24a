//! pcap export with a size cap and rotation: when the file reaches
//! `max_bytes`, it is closed and renamed to PATH.1 (PATH.1 to PATH.2, ...,
//! keeping `max_files` rotated files) and a fresh PATH is started. Every
//! file is a complete pcap (Ethernet link type) once it is closed; the
//! current one is written out (its buffer flushed) when the sniffer stops.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// Snap length recorded in the header and applied to packets.
pub const SNAPLEN: u32 = 262_144;
const HEADER_BYTES: u64 = 24;
const RECORD_HEADER_BYTES: u64 = 16;

pub struct Pcap {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    writer: Option<PcapWriter<BufWriter<File>>>,
    written: u64,
    pub packets: u64,
}

fn open(path: &Path) -> io::Result<PcapWriter<BufWriter<File>>> {
    let file = File::create(path)?;
    let header = PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    PcapWriter::with_header(BufWriter::with_capacity(256 * 1024, file), header)
        .map_err(io::Error::other)
}

impl Pcap {
    /// Create (truncate) the file now, so a bad path fails at start.
    pub fn create(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<Pcap> {
        let writer = open(path)?;
        Ok(Pcap {
            path: path.to_path_buf(),
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

    fn rotated(&self, i: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.close()?;
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.max_files));
            for i in (1..self.max_files).rev() {
                let _ = std::fs::rename(self.rotated(i), self.rotated(i + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.writer = Some(open(&self.path)?);
        self.written = HEADER_BYTES;
        Ok(())
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
