//! Discarding a peer's leftover input before a close, so the close sends a
//! FIN and not a reset (lingering close): used by the HTTP service after an
//! early answer and by the proxy after refusing a client.

use std::io;
use std::time::Duration;

/// Discards what a peer still sends after netd has shut its write side, so
/// that the close which follows sends a FIN rather than a reset. Linux
/// resets a connection closed with unread input, and a reset can destroy
/// the last reply before the peer reads it. Ends at EOF or a read error, at
/// `quiet` without data, or at `total` in all.
pub struct Drain {
    quiet: Duration,
    end: tokio::time::Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Drain {
    pub fn new(quiet: Duration, total: Duration) -> Drain {
        let now = tokio::time::Instant::now();
        Drain {
            quiet,
            end: now + total,
            timer: Box::pin(tokio::time::sleep_until(now + quiet.min(total))),
        }
    }

    pub fn poll_drain(
        &mut self,
        stream: &tokio::net::TcpStream,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::future::Future;
        use std::task::Poll;
        let mut scratch = [0u8; 8192];
        // Bounded per poll: a peer sending flat out cannot hold the worker.
        for _ in 0..64 {
            match stream.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {
                    let now = tokio::time::Instant::now();
                    if now >= self.end {
                        return Poll::Ready(());
                    }
                    self.timer.as_mut().reset((now + self.quiet).min(self.end));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    match stream.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Ready(Ok(())) => {}
                    }
                }
                Err(_) => return Poll::Ready(()),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
