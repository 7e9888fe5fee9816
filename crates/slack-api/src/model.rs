//! What the client returns: a Slack user and a posted message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A Slack user as `users.info` describes it, reduced to what slackline needs.
///
/// Parsed leniently: unknown fields are ignored, and a field that is missing, `null`,
/// an empty string or of an unexpected type becomes `None` (or `false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user id (`U…` or `W…`).
    pub id: String,
    /// The user's own team (for Slack Connect users, their organisation's team).
    pub team_id: Option<String>,
    /// The legacy username (`name`).
    pub name: Option<String>,
    /// The full name (`real_name`, or `profile.real_name`).
    pub real_name: Option<String>,
    /// What Slack shows: `profile.display_name`, falling back to the real name, then
    /// to `name`.
    pub display_name: Option<String>,
    /// `profile.email`; often absent for Slack Connect users of other organisations
    /// and for bots.
    pub email: Option<String>,
    /// Whether the user is a bot user.
    pub is_bot: bool,
    /// Whether the user is deactivated.
    pub deleted: bool,
}

impl UserInfo {
    /// Reads a Slack user object (the `user` of `users.info`, or the `user` of a
    /// `user_change` event). `None` when `value` is not an object with an `id`.
    pub fn from_user_object(value: &Value) -> Option<Self> {
        let id = non_empty(value.get("id"))?;
        Self::from_user_object_with_id(value, id)
    }

    /// Like [`UserInfo::from_user_object`], using `fallback_id` when the object has
    /// no usable `id`.
    pub(crate) fn from_user_object_or(value: &Value, fallback_id: &str) -> Option<Self> {
        let id = non_empty(value.get("id")).unwrap_or_else(|| fallback_id.to_owned());
        Self::from_user_object_with_id(value, id)
    }

    fn from_user_object_with_id(value: &Value, id: String) -> Option<Self> {
        if !value.is_object() {
            return None;
        }
        let profile = value.get("profile");
        let field = |name: &str| non_empty(value.get(name));
        let profile_field = |name: &str| non_empty(profile.and_then(|p| p.get(name)));
        let name = field("name");
        let real_name = field("real_name").or_else(|| profile_field("real_name"));
        let display_name = profile_field("display_name")
            .or_else(|| real_name.clone())
            .or_else(|| name.clone());
        Some(Self {
            id,
            team_id: field("team_id").or_else(|| profile_field("team")),
            name,
            real_name,
            display_name,
            email: profile_field("email"),
            is_bot: value
                .get("is_bot")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            deleted: value
                .get("deleted")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// A string field that is present, a string, and not blank.
fn non_empty(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A message that `chat.postMessage` accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedMessage {
    /// The channel id Slack posted into (an id even if a name was given).
    pub channel: String,
    /// The message's `ts`: its id within the channel. Our own messages come back as
    /// events carrying this ts, which is how they are recognised as echoes.
    pub ts: String,
}
