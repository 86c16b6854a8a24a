//! Test-only: a classic BPF interpreter that runs the programs
//! [`Filter::to_bpf`] emits the way the kernel runs a socket filter, and the
//! checks that tie the three together — the program, the user-space matcher
//! ([`Filter::matches`]) and the kernel itself.
//!
//! - [`check`] refuses what the kernel's `bpf_check_classic` refuses
//!   (length, jump targets, a final RET), so a program the tests pass is one
//!   `SO_ATTACH_FILTER` takes.
//! - [`run`] knows exactly the instructions the assembler emits; any other
//!   opcode, or an ancillary load other than the packet type, fails the
//!   test. A load past the end of the frame ends the program with 0 (drop),
//!   as in the kernel. The packet type is an input, so the loopback dedup
//!   (drop `PACKET_OUTGOING`) is checked too.
//! - `kernel_runs_the_program_as_the_interpreter_does` attaches real
//!   programs to packet sockets on `lo` in a network namespace of its own
//!   (root only), injects hand-written and generated frames, and requires
//!   the kernel to deliver exactly the frames the interpreter accepts. That
//!   is what makes the interpreter's verdicts, and with them the
//!   `fuzz_filter_*` properties, statements about the kernel.

use super::*;

/// `SKF_AD_OFF + SKF_AD_PKTTYPE`, as the assembler uses it.
const PKTTYPE: u32 = AD_PKTTYPE;
/// Largest program the kernel takes (`BPF_MAXINSNS`).
const MAXINSNS: usize = 4096;

pub const PACKET_HOST: u32 = 0;
pub const PACKET_OUTGOING: u32 = 4;

/// Refuse a program the kernel would refuse at attach time.
pub fn check(prog: &[libc::sock_filter]) -> Result<(), String> {
    if prog.is_empty() || prog.len() > MAXINSNS {
        return Err(format!("{} instructions", prog.len()));
    }
    for (pc, i) in prog.iter().enumerate() {
        let left = prog.len() - pc - 1;
        match i.code {
            0x05 if i.k as usize >= left => return Err(format!("{pc}: JA past the end")),
            0x74 if i.k >= 32 => return Err(format!("{pc}: shift by {}", i.k)),
            0x15 | 0x35 | 0x3d | 0x2d | 0x45 if i.jt as usize >= left || i.jf as usize >= left => {
                return Err(format!("{pc}: jump past the end"));
            }
            _ => {}
        }
    }
    match prog[prog.len() - 1].code {
        0x06 => Ok(()),
        c => Err(format!("the last instruction is {c:#x}, not RET")),
    }
}

/// Run `prog` on `frame` (from the Ethernet header on, as a SOCK_RAW packet
/// socket sees it) with packet type `pkttype`; the return value is the
/// number of bytes to keep, 0 for drop.
pub fn run(prog: &[libc::sock_filter], frame: &[u8], pkttype: u32) -> u32 {
    if let Err(e) = check(prog) {
        panic!("the kernel would refuse this program: {e}");
    }
    let load = |at: u32, n: usize| -> Option<u32> {
        if at >= 0x8000_0000 {
            // Negative offsets are the kernel's ancillary area.
            assert_eq!(at, PKTTYPE, "ancillary load {at:#x} not known here");
            return Some(pkttype);
        }
        let at = at as usize;
        let b = frame.get(at..at.checked_add(n)?)?;
        Some(b.iter().fold(0u32, |v, &c| v << 8 | c as u32))
    };
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    loop {
        let i = prog[pc];
        pc += 1;
        let jump = |t: bool| if t { i.jt as usize } else { i.jf as usize };
        match i.code {
            // LD W/H/B ABS
            0x20 | 0x28 | 0x30 => match load(i.k, width(i.code)) {
                Some(v) => a = v,
                None => return 0,
            },
            // LD W/H/B IND
            0x40 | 0x48 | 0x50 => match load(x.wrapping_add(i.k), width(i.code)) {
                Some(v) => a = v,
                None => return 0,
            },
            // LDX B MSH: X = 4 * (P[k] & 0xf)
            0xb1 => match load(i.k, 1) {
                Some(v) => x = (v & 0x0f) << 2,
                None => return 0,
            },
            0x80 => a = frame.len() as u32,              // LD W LEN
            0x04 => a = a.wrapping_add(i.k),             // ALU ADD K
            0x0c => a = a.wrapping_add(x),               // ALU ADD X
            0x14 => a = a.wrapping_sub(i.k),             // ALU SUB K
            0x1c => a = a.wrapping_sub(x),               // ALU SUB X
            0x54 => a &= i.k,                            // ALU AND K
            0x74 => a = a.checked_shr(i.k).unwrap_or(0), // ALU RSH K
            0x07 => x = a,                               // MISC TAX
            0x87 => a = x,                               // MISC TXA
            0x05 => pc += i.k as usize,                  // JA
            0x15 => pc += jump(a == i.k),                // JEQ K
            0x35 => pc += jump(a >= i.k),                // JGE K
            0x2d => pc += jump(a > x),                   // JGT X
            0x3d => pc += jump(a >= x),                  // JGE X
            0x45 => pc += jump(a & i.k != 0),            // JSET K
            0x06 => return i.k,                          // RET K
            c => panic!(
                "opcode {c:#04x} at {} is not one the assembler emits",
                pc - 1
            ),
        }
    }
}

fn width(code: u16) -> usize {
    match code & 0x18 {
        BPF_W => 4,
        BPF_H => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::sniffer::decode::decode;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }

    #[test]
    fn interpreter_semantics() {
        // ldh [12]; jeq #0x800, accept, drop
        let p = [
            ins(0x28, 0, 0, 12),
            ins(0x15, 0, 1, 0x800),
            ins(0x06, 0, 0, 96),
            ins(0x06, 0, 0, 0),
        ];
        let mut f = vec![0u8; 14];
        f[12] = 8;
        assert_eq!(run(&p, &f, PACKET_HOST), 96);
        assert_eq!(run(&p, &f[..13], PACKET_HOST), 0, "out of bounds drops");
        f[12] = 9;
        assert_eq!(run(&p, &f, PACKET_HOST), 0);
        // ldxb 4*([0]&0xf); ldb [x+1]; ret a? no: jeq #7
        let p = [
            ins(0xb1, 0, 0, 0),
            ins(0x50, 0, 0, 1),
            ins(0x15, 0, 1, 7),
            ins(0x06, 0, 0, 1),
            ins(0x06, 0, 0, 0),
        ];
        assert_eq!(run(&p, &[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 7], PACKET_HOST), 1);
        assert_eq!(run(&p, &[0x02, 0, 0, 0, 0, 0, 0, 0, 0], PACKET_HOST), 0);
        // The packet type through the ancillary area.
        let p = [
            ins(0x20, 0, 0, PKTTYPE),
            ins(0x15, 0, 1, PACKET_OUTGOING),
            ins(0x06, 0, 0, 0),
            ins(0x06, 0, 0, 1),
        ];
        assert_eq!(run(&p, &[], PACKET_HOST), 1);
        assert_eq!(run(&p, &[], PACKET_OUTGOING), 0);
        // What the kernel refuses.
        assert!(check(&[]).is_err());
        assert!(check(&[ins(0x28, 0, 0, 12)]).is_err(), "no final RET");
        assert!(check(&[ins(0x15, 1, 0, 0), ins(0x06, 0, 0, 0)]).is_err());
        assert!(check(&[ins(0x05, 0, 0, 1), ins(0x06, 0, 0, 0)]).is_err());
    }

    #[test]
    #[should_panic(expected = "not one the assembler emits")]
    fn unknown_opcode_fails() {
        // ALU MUL K: valid BPF, but not emitted, so not interpreted.
        run(&[ins(0x24, 0, 0, 1), ins(0x06, 0, 0, 0)], &[], PACKET_HOST);
    }

    /// The matcher-equivalence check the `fuzz_filter_*` property applies
    /// catches a kernel program that accepts everything: without it, every
    /// end-to-end test would pass with such a program, since user space
    /// filters again.
    #[test]
    fn an_accept_all_program_is_caught() {
        let accept_all = [ins(0x06, 0, 0, ACCEPT)];
        let f = Filter::parse("udp and port 53").unwrap();
        let disagree = super::super::tests::agree::frames()
            .into_iter()
            .filter(|(_, frame)| {
                let d = decode(frame);
                (run(&accept_all, frame, PACKET_HOST) != 0) != f.matches(&d)
                    && !super::super::tests::left_to_user_space(frame)
            })
            .count();
        assert!(disagree > 5, "{disagree}");
    }

    /// Loopback dedup: with `drop_outgoing`, the outgoing copy is always
    /// dropped and every other packet type decided as without it.
    #[test]
    fn outgoing_copies_are_dropped_only_with_dedup() {
        for text in ["", "tcp", "udp and port 53", "host ::1", "icmp"] {
            let f = Filter::parse(text).unwrap();
            let (dedup, plain) = (f.to_bpf(true), f.to_bpf(false));
            for (name, frame) in super::super::tests::agree::frames() {
                assert_eq!(run(&dedup, &frame, PACKET_OUTGOING), 0, "{text:?} {name}");
                for t in [PACKET_HOST, 1, 2, 3] {
                    assert_eq!(
                        run(&dedup, &frame, t),
                        run(&plain, &frame, t),
                        "{text:?} {name} type {t}"
                    );
                }
                assert_eq!(
                    run(&plain, &frame, PACKET_OUTGOING),
                    run(&plain, &frame, PACKET_HOST),
                    "{text:?} {name}"
                );
            }
        }
    }
}

/// The kernel as the reference: packet sockets on `lo` in a network
/// namespace of this test's own (a thread that unshared its network
/// namespace), one per filter, see frames this test injects.
#[cfg(test)]
#[allow(unsafe_code)] // test only: raw packet sockets in a private namespace
mod kernel {
    use super::*;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    fn cvt(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
        if rc < 0 {
            let e = io::Error::last_os_error();
            Err(io::Error::new(e.kind(), format!("{what}: {e}")))
        } else {
            Ok(rc)
        }
    }

    fn ll(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = protocol.to_be();
        a.sll_ifindex = ifindex;
        a.sll_halen = 6;
        a
    }

    /// A packet socket on `ifindex`: receiving everything (through `prog`
    /// when given) or, with `receive` false, for sending only.
    fn packet_socket(
        ifindex: i32,
        receive: bool,
        prog: Option<&[libc::sock_filter]>,
    ) -> io::Result<OwnedFd> {
        let proto = if receive { libc::ETH_P_ALL as u16 } else { 0 };
        // SAFETY: plain socket(2); the result is checked.
        let fd = cvt(
            unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto.to_be()),
                )
            },
            "socket(AF_PACKET)",
        )?;
        // SAFETY: fd was just returned by socket(2) and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Some(prog) = prog {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: fprog points at `prog`, alive for the call; the
            // kernel copies the program.
            cvt(
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_ATTACH_FILTER,
                        (&fprog as *const libc::sock_fprog).cast(),
                        std::mem::size_of::<libc::sock_fprog>() as u32,
                    )
                },
                "SO_ATTACH_FILTER",
            )?;
        }
        if receive {
            let a = ll(ifindex, libc::ETH_P_ALL as u16);
            // SAFETY: `a` is a valid sockaddr_ll of the size given.
            cvt(
                unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&a as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                },
                "bind(lo)",
            )?;
        }
        Ok(fd)
    }

    fn send(fd: &OwnedFd, ifindex: i32, frame: &[u8]) -> io::Result<()> {
        let a = ll(ifindex, 0);
        // SAFETY: frame and `a` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&a as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n as usize != frame.len() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One queued frame and its packet type, or None when the queue is
    /// empty (`wait` false) or nothing came within 5 s.
    fn recv(fd: &OwnedFd, wait: bool) -> Option<(Vec<u8>, u32)> {
        let mut buf = vec![0u8; 70_000];
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and `from` are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Some((buf, u32::from(from.sll_pkttype)));
            }
            if !wait || Instant::now() > deadline {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
        }
    }

    /// Run `f` in a thread of its own in a new network namespace with `lo`
    /// up; the thread's namespace goes away with it.
    fn in_netns<T: Send>(f: impl FnOnce(i32) -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare(2) changes only this thread's namespace.
                cvt(
                    unsafe { libc::unshare(libc::CLONE_NEWNET) },
                    "unshare(CLONE_NEWNET) (needs root)",
                )
                .unwrap();
                // A child forked from this thread starts in its namespace.
                let out = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .output()
                    .expect("run ip (iproute2)");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // SAFETY: a NUL-terminated name.
                let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
                assert!(lo > 0);
                f(lo)
            })
            .join()
            .unwrap()
        })
    }

    /// Generated frames, from the `fuzz_*` generator with a fixed seed.
    fn generated(n: usize) -> Vec<Vec<u8>> {
        use proptest::strategy::{Strategy, ValueTree};
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let strategy = super::super::tests::fuzz::frame();
        (0..n)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .filter(|f| f.len() >= 14)
            .collect()
    }

    #[test]
    fn kernel_runs_the_program_as_the_interpreter_does() {
        let texts = [
            "",
            "tcp",
            "udp",
            "icmp",
            "port 53",
            "port 4000",
            "udp and port 53",
            "tcp and port 80",
            "host 10.0.0.1",
            "host 127.0.0.1 and tcp",
            "host ::1",
            "host fe80::2 and udp and port 53",
        ];
        let mut frames: Vec<Vec<u8>> = super::super::tests::agree::frames()
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        frames.extend(generated(400));
        let (checked, kept) = in_netns(|lo| {
            // The unfiltered reference socket first: the kernel hands a
            // packet to the newest packet socket first, so once the
            // reference has it, every filtered socket has had its turn.
            let reference = packet_socket(lo, true, None).unwrap();
            let progs: Vec<(String, bool, Vec<libc::sock_filter>)> = texts
                .iter()
                .flat_map(|t| {
                    let f = Filter::parse(t).unwrap();
                    [
                        (t.to_string(), true, f.to_bpf(true)),
                        (t.to_string(), false, f.to_bpf(false)),
                    ]
                })
                .collect();
            let socks: Vec<OwnedFd> = progs
                .iter()
                .map(|(_, _, p)| packet_socket(lo, true, Some(p)).unwrap())
                .collect();
            let sender = packet_socket(lo, false, None).unwrap();
            let (mut checked, mut kept, mut foreign) = (0usize, 0usize, 0usize);
            for frame in &frames {
                send(&sender, lo, frame).unwrap();
                // The copies the reference saw, as the kernel delivered them
                // (outgoing, then incoming). Packets the kernel sends on
                // its own (IPv6 neighbour discovery, say) are not ours.
                let ours = |c: &(Vec<u8>, u32)| c.0 == *frame;
                let mut copies = Vec::new();
                while copies.iter().all(|(_, t)| *t == PACKET_OUTGOING) {
                    let c = recv(&reference, true).expect("the injected frame comes back on lo");
                    if ours(&c) {
                        copies.push(c);
                    } else {
                        foreign += 1;
                    }
                }
                for ((text, dedup, prog), sock) in progs.iter().zip(&socks) {
                    let mut got = Vec::new();
                    while let Some(c) = recv(sock, false) {
                        if ours(&c) {
                            got.push(c);
                        }
                    }
                    let want: Vec<_> = copies
                        .iter()
                        .filter(|(bytes, t)| run(prog, bytes, *t) != 0)
                        .cloned()
                        .collect();
                    assert_eq!(
                        got.iter().map(|c| c.1).collect::<Vec<_>>(),
                        want.iter().map(|c| c.1).collect::<Vec<_>>(),
                        "{text:?} (dedup {dedup}) on {frame:02x?}: the kernel's verdict (left) \
                         differs from the interpreter's (right)"
                    );
                    assert!(got.iter().zip(&want).all(|(g, w)| g.0 == w.0));
                    checked += copies.len();
                    kept += got.len();
                }
            }
            eprintln!("{foreign} packets the kernel sent itself were skipped");
            (checked, kept)
        });
        // Both verdicts occurred, many times.
        assert!(
            kept > 1000 && checked - kept > 1000,
            "{kept} kept of {checked}"
        );
    }
}
