//! A few lines of raw HTTP/2 for tests that must misbehave where a real
//! client library would not (ignore SETTINGS_MAX_CONCURRENT_STREAMS, send a
//! bare preface): frames, uncompressed HPACK literals, frame reads.

use std::io::Read;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Append one frame.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK literal header field without indexing, no Huffman (strings under
/// 127 bytes).
pub fn hpack(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// Read one frame: (type, flags, stream, payload).
pub fn read_frame(s: &mut impl Read) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[3], h[4], stream, p))
}

/// Send the preface and an empty SETTINGS, read the server's SETTINGS and
/// return its SETTINGS_MAX_CONCURRENT_STREAMS (`None` if not announced).
/// Panics if the first frame back is not SETTINGS.
pub fn handshake(s: &mut (impl Read + std::io::Write)) -> Option<u32> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    s.write_all(&out).expect("write preface");
    let (kind, _, _, payload) = read_frame(s).expect("server SETTINGS");
    assert_eq!(kind, 0x4, "server SETTINGS first");
    payload
        .chunks(6)
        .find(|c| c[..2] == [0, 3])
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
}
