//! Bot tokens per installing workspace, as configured in `SLACK_BOT_TOKENS`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The bot token of every installing workspace (team id → `xoxb-…` token).
///
/// Parsed from the `SLACK_BOT_TOKENS` format `T123=xoxb-...,T456=xoxb-...`. The
/// [`Debug`] output lists team ids only: tokens are never printed, and parse errors
/// name the entry by position and team id, never by its token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BotTokens {
    by_team: BTreeMap<String, String>,
}

impl BotTokens {
    /// Parses `TEAM=TOKEN` pairs separated by commas.
    ///
    /// Whitespace around entries, team ids and tokens is ignored, as are empty entries
    /// (a trailing comma); an empty string gives no tokens. Errors say which entry
    /// (1-based) is wrong and why: no `=`, empty team id, empty token, a token where
    /// the team id belongs (`xoxb-…=T123`), whitespace inside a team id or token, or
    /// the same team twice.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut by_team = BTreeMap::new();
        for (index, entry) in spec.split(',').enumerate() {
            let position = index + 1;
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some((team, token)) = entry.split_once('=') else {
                return Err(format!(
                    "SLACK_BOT_TOKENS entry {position} has no '=' (expected TEAM_ID=xoxb-...)"
                ));
            };
            let (team, token) = (team.trim(), token.trim());
            if team.is_empty() {
                return Err(format!(
                    "SLACK_BOT_TOKENS entry {position} has an empty team id (expected TEAM_ID=xoxb-...)"
                ));
            }
            if team.starts_with("xox") {
                return Err(format!(
                    "SLACK_BOT_TOKENS entry {position} starts with a token; the order is TEAM_ID=xoxb-..."
                ));
            }
            if team.chars().any(char::is_whitespace) {
                return Err(format!(
                    "SLACK_BOT_TOKENS entry {position} has whitespace inside its team id"
                ));
            }
            if token.is_empty() {
                return Err(format!(
                    "SLACK_BOT_TOKENS entry {position} (team {team}) has an empty token"
                ));
            }
            if token.chars().any(char::is_whitespace) {
                return Err(format!(
                    "SLACK_BOT_TOKENS entry {position} (team {team}) has whitespace inside its token"
                ));
            }
            if by_team.insert(team.to_owned(), token.to_owned()).is_some() {
                return Err(format!(
                    "SLACK_BOT_TOKENS entry {position}: team {team} appears more than once"
                ));
            }
        }
        Ok(Self { by_team })
    }

    /// Sets the token of one team, replacing any previous one.
    pub fn insert(&mut self, team_id: impl Into<String>, token: impl Into<String>) {
        self.by_team.insert(team_id.into(), token.into());
    }

    /// The token of `team_id`, if one is configured.
    pub fn get(&self, team_id: &str) -> Option<&str> {
        self.by_team.get(team_id).map(String::as_str)
    }

    /// Whether `team_id` has a token.
    pub fn contains(&self, team_id: &str) -> bool {
        self.by_team.contains_key(team_id)
    }

    /// The team ids that have a token, in sorted order.
    pub fn teams(&self) -> impl Iterator<Item = &str> {
        self.by_team.keys().map(String::as_str)
    }

    /// How many teams have a token.
    pub fn len(&self) -> usize {
        self.by_team.len()
    }

    /// Whether no team has a token.
    pub fn is_empty(&self) -> bool {
        self.by_team.is_empty()
    }
}

impl FromStr for BotTokens {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Self::parse(spec)
    }
}

impl<T: Into<String>, K: Into<String>> FromIterator<(T, K)> for BotTokens {
    fn from_iter<I: IntoIterator<Item = (T, K)>>(iter: I) -> Self {
        Self {
            by_team: iter
                .into_iter()
                .map(|(team, token)| (team.into(), token.into()))
                .collect(),
        }
    }
}

impl fmt::Debug for BotTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.by_team.keys().map(|team| (team, "<redacted>")))
            .finish()
    }
}
