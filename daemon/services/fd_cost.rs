//! What each listener may cost in file descriptors at its limits, summed
//! over a configuration and checked against netd's descriptor budget
//! ([`crate::net::fd_budget`]) at start and by `netd --check-config`.

use crate::net::fd_budget::Budget;
use crate::proto;

/// Descriptors a listener may hold at its limits: its listening socket
/// (and the duplicate the supervisor keeps), plus what its kind says
/// ([`crate::services::ListenerKind::descriptors`]).
pub fn listener_cost(spec: &proto::ListenerSpec, budget: &Budget) -> u64 {
    let per = spec
        .kind
        .as_ref()
        .map_or(0, |k| crate::services::descriptors_kind(k, budget));
    per + 2
}

/// One descriptor per connection a TCP kind may hold (`max_connections`,
/// 0 for the default).
pub(crate) fn connections(max_connections: u32) -> u64 {
    match max_connections {
        0 => crate::services::DEFAULT_MAX_CONNECTIONS as u64,
        n => u64::from(n),
    }
}

/// A warning if the listeners' limits add up to more than the data
/// plane's budget.
pub fn check_listeners<'a>(
    specs: impl IntoIterator<Item = &'a proto::ListenerSpec>,
    budget: &Budget,
) -> Option<String> {
    let total: u64 = specs.into_iter().map(|s| listener_cost(s, budget)).sum();
    (total > budget.data_plane()).then(|| {
        format!(
            "the listeners' connection and client limits add up to {total} descriptors, \
             more than the {} netd's descriptor budget allows (RLIMIT_NOFILE {} minus {} \
             kept for the control plane): listeners stop accepting before their own \
             limits when the budget is used up; raise LimitNOFILE or lower \
             max_connections/max_clients",
            budget.data_plane(),
            budget.limit,
            budget.reserve
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::listener_spec::Kind;

    #[test]
    fn listener_limits_are_summed() {
        let spec = |k| proto::ListenerSpec { kind: Some(k) };
        let specs = [
            spec(Kind::TcpEcho(proto::TcpEchoSpec {
                max_connections: 100,
                ..Default::default()
            })),
            spec(Kind::Proxy(proto::ProxySpec {
                max_connections: 100,
                ..Default::default()
            })),
            spec(Kind::UdpProxy(proto::UdpProxySpec {
                max_clients: 10,
                ..Default::default()
            })),
        ];
        // 102 + 202 + 12.
        assert!(check_listeners(&specs, &Budget::of(316 + 64)).is_none());
        let w = check_listeners(&specs, &Budget::of(316 + 63)).expect("over");
        assert!(w.contains("add up to 316"), "{w}");
    }
}
