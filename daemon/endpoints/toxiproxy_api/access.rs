//! Who may call the Toxiproxy API ([`Access`]: roles from `[control.roles]`
//! and the optional bearer [`Token`]) and what the proxies made through it
//! may do ([`Rules`]).

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use crate::control::auth::{Caller, Policy, Role};

/// What the proxies made through the API may do, whoever asks
/// (`[toxiproxy_api]` `allowed_ports`, `max_proxies`, `persist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Ports a proxy may listen on (0, "pick one", always may).
    pub allowed_ports: RangeInclusive<u16>,
    /// Proxies made through the API that may exist at once.
    pub max_proxies: usize,
    /// Whether they are saved in the state file (brought back after a
    /// restart) rather than ephemeral.
    pub persist: bool,
}

impl Default for Rules {
    /// Unprivileged ports, 64 proxies, ephemeral (as Toxiproxy's).
    fn default() -> Self {
        Rules {
            allowed_ports: 1024..=65535,
            max_proxies: 64,
            persist: false,
        }
    }
}

impl Rules {
    /// `"1024-65535"` or one port `"8000"`; ports 1 to 65535.
    pub fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, String> {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "'{s}' is not a port range like 1024-65535 (ports 1 to 65535)"
            )),
        };
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => (port(s)?, port(s)?),
        };
        if lo > hi {
            return Err(format!("'{s}': the first port is above the last"));
        }
        Ok(lo..=hi)
    }
}

/// Who may call the API and what its proxies may reach; one per endpoint,
/// shared by its connections.
#[derive(Debug)]
pub struct Access {
    /// `[control.roles]`, as the control socket applies them.
    pub(super) policy: Policy,
    pub(super) rules: Rules,
    /// netd's own TCP endpoints (control, metrics, health, this API): no
    /// proxy made here may forward to one.
    pub(super) own_endpoints: Vec<SocketAddr>,
    /// Held from counting the API's proxies to starting one, so that
    /// concurrent creates cannot pass `max_proxies` together.
    pub(super) creating: tokio::sync::Mutex<()>,
    /// `[toxiproxy_api] token_file`'s token: a request presenting it
    /// (`Authorization: Bearer`) acts as admin, from anywhere.
    pub(super) token: Option<Token>,
}

/// A bearer token, never shown (Debug prints `<redacted>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Shortest token accepted from `token_file`.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Token {
    /// The token in `text` (a token file's content, surrounding
    /// whitespace trimmed): at least [`MIN_TOKEN_BYTES`] printable ASCII
    /// characters, as an HTTP header carries them.
    pub fn parse(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_BYTES || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the token must be at least {MIN_TOKEN_BYTES} printable ASCII characters without spaces"
            ));
        }
        Ok(Token(t.to_string()))
    }
}

impl Access {
    pub fn new(policy: Policy, rules: Rules, own_endpoints: Vec<SocketAddr>) -> Access {
        Access {
            policy,
            rules,
            own_endpoints,
            creating: tokio::sync::Mutex::new(()),
            token: None,
        }
    }

    /// Accept `token` as admin (`[toxiproxy_api] token_file`).
    pub fn with_token(mut self, token: Option<Token>) -> Access {
        self.token = token;
        self
    }

    /// The caller on a connection accepted on `local` from `peer`, with
    /// its role; unidentified callers get [`Role::None`].
    pub(super) async fn identify(
        &self,
        source: crate::control::admission::Source,
        peer: SocketAddr,
    ) -> Caller {
        // The uid was looked up once, at admission.
        let user = match source {
            crate::control::admission::Source::Uid(uid) => {
                crate::control::peer_uid::local_user(uid).await
            }
            crate::control::admission::Source::Ip(_) => None,
        };
        match user {
            Some(u) => Caller {
                identity: format!("toxiproxy-api {} {peer}", u.identity()),
                role: self.policy.caller(&u.peer(), false, None).role,
            },
            None => Caller {
                identity: format!("toxiproxy-api unidentified {peer}"),
                role: Role::None,
            },
        }
    }
}
