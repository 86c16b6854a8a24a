//! The control plane: the `netd.v1.Control` service ([`service`]) and its
//! watch streams ([`watch`]), who may call it ([`auth`]), how connections to
//! any of netd's own endpoints are admitted ([`admission`], [`conn`],
//! [`peer_uid`]), and the client side `netctl` uses ([`client`]).

pub mod admission;
pub mod auth;
pub mod client;
pub mod conn;
pub mod peer_uid;
pub mod service;
pub mod watch;
