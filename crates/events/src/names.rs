//! Stable lower-case names of the model's variants, for JSON, logs and metric labels.

use crate::model::{AuthorKind, Kind, Mode};

impl Mode {
    /// `full` or `degraded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Degraded => "degraded",
        }
    }
}

impl AuthorKind {
    /// `agent`, `customer`, `bot` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorKind::Agent => "agent",
            AuthorKind::Customer => "customer",
            AuthorKind::Bot => "bot",
            AuthorKind::Unknown => "unknown",
        }
    }
}

impl Kind {
    /// `posted`, `edited`, `deleted`, `reaction_added`, `reaction_removed`,
    /// `member_joined`, `member_left` or `degraded`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Posted(_) => "posted",
            Kind::Edited(_) => "edited",
            Kind::Deleted(_) => "deleted",
            Kind::ReactionAdded(_) => "reaction_added",
            Kind::ReactionRemoved(_) => "reaction_removed",
            Kind::MemberJoined(_) => "member_joined",
            Kind::MemberLeft(_) => "member_left",
            Kind::Degraded(_) => "degraded",
        }
    }
}
