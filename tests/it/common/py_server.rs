//! A Python program serving on a loopback port it prints on its first
//! line (a header-echoing HTTP upstream, a gRPC or WebSocket server...);
//! killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

pub struct PyServer {
    child: Child,
    pub addr: SocketAddr,
}

impl PyServer {
    /// Run `python -c script` and wait for the port it prints.
    pub fn start(python: &std::path::Path, script: &str) -> PyServer {
        Self::spawn(Command::new(python).args(["-c", script]))
    }

    /// Run `cmd` (a Python program) and wait for the port it prints.
    pub fn spawn(cmd: &mut Command) -> PyServer {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the python server's first line");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the python server said {line:?}, not a port"));
        PyServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
