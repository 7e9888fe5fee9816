//! The Slack side of slackline's edge: what a Slack Events API request is and how we
//! decide to trust it.
//!
//! [`signature`] verifies Slack's `v0` request signature over the raw body against one
//! or more signing secrets (rotation, several apps), and signs bodies the same way for
//! tests and the `slackline send` command. [`envelope`] inspects a verified body just
//! enough to route it (event id, type, the channel that orders it) without ever
//! refusing it: a body that is not JSON or has an unknown shape is still a body we
//! archive and produce, and the normalizer decides what it means.

pub mod envelope;
pub mod signature;

pub use envelope::{
    event_channel, inspect, is_bare_event, is_channel_id, wrap_bare_event, EnvelopeInfo,
    EnvelopeKind,
};
pub use signature::{sign, SignatureError, SigningSecrets};
