//! Socket options set on accepted or connected streams.

use std::time::Duration;

use tokio::net::TcpStream;

/// Close with RST instead of FIN: SO_LINGER with a zero timeout, so that
/// the next close resets the connection.
pub fn abort(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
