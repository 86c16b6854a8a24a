//! `loss` (UDP): datagrams dropped at random with `probability`; with
//! `burst_enter` set, in bursts instead (Gilbert-Elliott: `burst_enter`,
//! `burst_exit`, loss `bad_loss` inside a burst and `good_loss` outside).

use super::{Cx, Def, Key, Unit, Val};
use crate::fault::{ActionOn, UdpAction};
use crate::proto::LossFault as F;
use crate::spec::SpecError;

pub const DEF: Def = Def {
    name: "loss",
    tcp: false,
    udp: true,
    http: false,
    toxiproxy: false,
    keys: &[
        Key::new(
            "probability",
            Unit::Probability,
            "probability per datagram (0 to 1)",
        ),
        Key::new(
            "burst_enter",
            Unit::Probability,
            "(Gilbert-Elliott) probability of entering a burst",
        ),
        Key::new(
            "burst_exit",
            Unit::Probability,
            "(Gilbert-Elliott) probability of leaving a burst",
        ),
        Key::new(
            "bad_loss",
            Unit::Probability,
            "(Gilbert-Elliott) loss inside a burst (default 1)",
        ),
        Key::new(
            "good_loss",
            Unit::Probability,
            "(Gilbert-Elliott) loss outside bursts (default 0)",
        ),
    ],
};

pub fn get(m: &F, key: &str) -> Option<Val> {
    Some(match key {
        "probability" => Val::of_f64(m.probability),
        "burst_enter" => Val::of_f64(m.burst_enter),
        "burst_exit" => Val::of_f64(m.burst_exit),
        "bad_loss" => Val::Float(m.bad_loss),
        "good_loss" => Val::of_f64(m.good_loss),
        _ => return None,
    })
}

pub fn set(m: &mut F, key: &str, v: Val) {
    let f = v.float();
    match key {
        "probability" => m.probability = f.unwrap_or(0.0),
        "burst_enter" => m.burst_enter = f.unwrap_or(0.0),
        "burst_exit" => m.burst_exit = f.unwrap_or(0.0),
        "bad_loss" => m.bad_loss = f,
        "good_loss" => m.good_loss = f.unwrap_or(0.0),
        _ => {}
    }
}

pub fn compile(m: &F, cx: &Cx<'_>) -> Result<ActionOn, SpecError> {
    let p = cx.probability("probability", m.probability)?;
    let burst = if m.burst_enter > 0.0 {
        Some((
            cx.probability("burst_enter", m.burst_enter)?,
            cx.probability("burst_exit", m.burst_exit)?,
            cx.probability("bad_loss", m.bad_loss.unwrap_or(1.0))?,
            cx.probability("good_loss", m.good_loss)?,
        ))
    } else {
        if m.burst_exit != 0.0 || m.bad_loss.is_some() || m.good_loss != 0.0 {
            return Err(cx.err(
                "burst_exit, bad_loss and good_loss need burst_enter (Gilbert-Elliott)",
            ));
        }
        None
    };
    if burst.is_some() && p != 0.0 {
        return Err(cx.err(
            "give either probability (random loss) or burst_enter/burst_exit (bursts), not both",
        ));
    }
    Ok(ActionOn::Udp(UdpAction::Loss {
        probability: p,
        burst,
    }))
}
