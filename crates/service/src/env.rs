//! Configuration from environment variables (12-factor), with every problem reported
//! at once: a service that fails to start names each missing or malformed variable.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// One or more configuration problems, each naming its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One line per problem: `NAME: what is wrong`.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// A reader over a set of variables that collects errors instead of stopping at the
/// first one. Build it from the process ([`Env::from_process`]) or from pairs in tests.
#[derive(Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    problems: Vec<String>,
}

impl Env {
    /// The current process environment.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// Explicit variables (tests, the `slackline dev` wiring).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            problems: Vec::new(),
        }
    }

    /// The raw value when set and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// A required string; records a problem and returns an empty string when missing.
    pub fn required(&mut self, name: &str) -> String {
        match self.get(name) {
            Some(v) => v.to_owned(),
            None => {
                self.problems.push(format!("{name}: required but not set"));
                String::new()
            }
        }
    }

    /// An optional string with a default.
    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// An optional value parsed with `FromStr`, with a default.
    pub fn parse_or<T>(&mut self, name: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<T>() {
                Ok(v) => v,
                Err(e) => {
                    self.problems
                        .push(format!("{name}: cannot parse {raw:?}: {e}"));
                    default
                }
            },
        }
    }

    /// A required value parsed by `parse`, which explains its own errors.
    pub fn required_with<T, F>(&mut self, name: &str, parse: F) -> Option<T>
    where
        F: FnOnce(&str) -> Result<T, String>,
    {
        let raw = self.get(name).map(str::to_owned);
        match raw {
            None => {
                self.problems.push(format!("{name}: required but not set"));
                None
            }
            Some(raw) => match parse(&raw) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.problems.push(format!("{name}: {e}"));
                    None
                }
            },
        }
    }

    /// A boolean: `true/false/1/0/yes/no`, case-insensitive.
    pub fn bool_or(&mut self, name: &str, default: bool) -> bool {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}: expected true or false, got {v:?}"));
                default
            }
        }
    }

    /// Records a problem found while interpreting a variable.
    pub fn problem(&mut self, name: &str, message: impl fmt::Display) {
        self.problems.push(format!("{name}: {message}"));
    }

    /// Ok when no problem was recorded; otherwise every problem at once.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_name() {
        let mut env = Env::from_pairs([("PORT", "eighty"), ("FLAG", "maybe"), ("BLANK", "  ")]);
        let _ = env.required("MISSING");
        let _ = env.required("BLANK");
        let port: u16 = env.parse_or("PORT", 80);
        let _ = env.bool_or("FLAG", false);
        assert_eq!(port, 80);
        let err = env.finish().unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        let text = err.to_string();
        for name in ["MISSING", "BLANK", "PORT", "FLAG"] {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn defaults_and_values() {
        let mut env = Env::from_pairs([("N", " 7 "), ("B", "YES"), ("S", "x")]);
        assert_eq!(env.parse_or::<u32>("N", 1), 7);
        assert_eq!(env.parse_or::<u32>("ABSENT", 1), 1);
        assert!(env.bool_or("B", false));
        assert_eq!(env.string_or("S", "d"), "x");
        assert_eq!(env.string_or("T", "d"), "d");
        assert_eq!(
            env.required_with("S", |s| Ok::<_, String>(s.len())),
            Some(1)
        );
        assert_eq!(env.required_with("S", |_| Err::<u8, _>("bad".into())), None);
        assert_eq!(
            env.finish().unwrap_err().problems,
            vec!["S: bad".to_string()]
        );
    }
}
