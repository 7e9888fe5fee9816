//! `SLACK_BOT_TOKENS` parsing and redaction.

use slackline_slack_api::BotTokens;

#[test]
fn parses_pairs_with_whitespace_and_trailing_comma() {
    let tokens = BotTokens::parse(" T123 = xoxb-1-abc , T456=xoxb-2-def,").unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens.get("T123"), Some("xoxb-1-abc"));
    assert_eq!(tokens.get("T456"), Some("xoxb-2-def"));
    assert_eq!(tokens.get("T789"), None);
    assert_eq!(tokens.teams().collect::<Vec<_>>(), ["T123", "T456"]);
    assert_eq!(
        "T1=xoxb-x".parse::<BotTokens>().unwrap().get("T1"),
        Some("xoxb-x")
    );
}

#[test]
fn empty_spec_means_no_tokens() {
    assert!(BotTokens::parse("").unwrap().is_empty());
    assert!(BotTokens::parse("  ").unwrap().is_empty());
}

#[test]
fn token_may_contain_equals_signs() {
    let tokens = BotTokens::parse("T1=xoxb-a=b").unwrap();
    assert_eq!(tokens.get("T1"), Some("xoxb-a=b"));
}

#[test]
fn errors_name_the_entry_and_never_echo_a_token() {
    let cases = [
        ("T1=xoxb-secret-1,xoxb-secret-2", "entry 2 has no '='"),
        ("=xoxb-secret-1", "entry 1 has an empty team id"),
        (
            "T1=xoxb-secret-1,T2=",
            "entry 2 (team T2) has an empty token",
        ),
        ("xoxb-secret-1=T1", "entry 1 starts with a token"),
        (
            "T1=xoxb-secret-1,T1=xoxb-secret-2",
            "team T1 appears more than once",
        ),
        (
            "T 1=xoxb-secret-1",
            "entry 1 has whitespace inside its team id",
        ),
        (
            "T1=xoxb-secret 1",
            "entry 1 (team T1) has whitespace inside its token",
        ),
    ];
    for (spec, expected) in cases {
        let error = BotTokens::parse(spec).unwrap_err();
        assert!(error.contains(expected), "{spec:?}: {error}");
        assert!(error.contains("SLACK_BOT_TOKENS"), "{error}");
        assert!(!error.contains("secret"), "token leaked: {error}");
    }
}

#[test]
fn debug_does_not_print_tokens() {
    let tokens = BotTokens::parse("T123=xoxb-very-secret,T456=xoxb-also-secret").unwrap();
    let debug = format!("{tokens:?}");
    assert!(debug.contains("T123") && debug.contains("T456"), "{debug}");
    assert!(!debug.contains("secret"), "{debug}");
}
