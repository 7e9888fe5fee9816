//! `users.info` against a real HTTP server on loopback that answers like Slack.

mod common;

use std::time::{Duration, Instant};

use common::*;
use slackline_slack_api::{ApiOptions, BotTokens, SlackApi, SlackApiError, UserInfo};

#[tokio::test]
async fn full_user_with_email() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let user = api.users_info(TEAM_A, U_FULL).await.unwrap();
    assert_eq!(
        user,
        UserInfo {
            id: U_FULL.into(),
            team_id: Some(TEAM_A.into()),
            name: Some("ada".into()),
            real_name: Some("Ada Lovelace".into()),
            display_name: Some("ada.l".into()),
            email: Some("ada@example.com".into()),
            is_bot: false,
            deleted: false,
        }
    );
    let seen = slack.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "users.info");
    assert_eq!(seen[0].subject, U_FULL);
}

#[tokio::test]
async fn slack_connect_user_without_email_falls_back_to_real_name() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let user = api.users_info(TEAM_A, U_CONNECT).await.unwrap();
    assert_eq!(user.id, U_CONNECT);
    assert_eq!(user.team_id.as_deref(), Some(TEAM_CONNECT));
    assert_eq!(user.email, None);
    // profile.display_name is "" → real name.
    assert_eq!(user.display_name.as_deref(), Some("Grace Hopper"));
    assert_eq!(user.real_name.as_deref(), Some("Grace Hopper"));
}

#[tokio::test]
async fn minimal_user_falls_back_to_name_and_ignores_missing_fields() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let user = api.users_info(TEAM_A, "U0PLAIN").await.unwrap();
    assert_eq!(user.id, "U0PLAIN");
    assert_eq!(user.name.as_deref(), Some("u0plain"));
    assert_eq!(user.display_name.as_deref(), Some("u0plain"));
    assert_eq!(user.real_name, None);
    assert_eq!(user.email, None);
    assert!(!user.is_bot && !user.deleted);
}

#[tokio::test]
async fn user_not_found_and_not_visible_are_typed_and_not_retryable() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let missing = api.users_info(TEAM_A, U_MISSING).await.unwrap_err();
    assert_eq!(missing, SlackApiError::UserNotFound);
    assert!(!missing.is_retryable());
    let hidden = api.users_info(TEAM_A, U_HIDDEN).await.unwrap_err();
    assert_eq!(hidden, SlackApiError::UserNotVisible);
    assert!(!hidden.is_retryable());
    assert_eq!(hidden.kind(), "user_not_visible");
}

#[tokio::test]
async fn rate_limit_with_short_retry_after_waits_and_retries_once() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let started = Instant::now();
    let user = api.users_info(TEAM_A, U_RATE_ONCE).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(user.id, U_RATE_ONCE);
    assert_eq!(slack.requests_for(U_RATE_ONCE), 2, "one 429, one retry");
    assert!(
        elapsed >= Duration::from_secs(1),
        "waited Retry-After: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "waited only once: {elapsed:?}"
    );
}

#[tokio::test]
async fn rate_limit_with_long_retry_after_fails_fast_and_gates_the_team() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let started = Instant::now();
    let error = api.users_info(TEAM_A, U_RATE_LONG).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "did not wait");
    assert_eq!(
        error,
        SlackApiError::RateLimited {
            retry_after: Duration::from_secs(120)
        }
    );
    assert!(error.is_retryable());
    assert_eq!(slack.requests(), 1);

    // While Slack's window is open, other lookups for that team do not call Slack.
    let error = api.users_info(TEAM_A, U_FULL).await.unwrap_err();
    match error {
        SlackApiError::RateLimited { retry_after } => {
            assert!(retry_after > Duration::from_secs(100), "{retry_after:?}")
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(slack.requests(), 1, "no request while rate limited");
    // Rate-limit errors are not cached, and another team is not affected.
    api.users_info(TEAM_B, U_FULL).await.unwrap();
    assert_eq!(slack.requests(), 2);
}

#[tokio::test]
async fn server_error_is_http_500_and_retryable() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let error = api.users_info(TEAM_A, U_500).await.unwrap_err();
    assert_eq!(error, SlackApiError::Http { status: 500 });
    assert!(error.is_retryable());
    assert_eq!(
        slack.requests_for(U_500),
        1,
        "5xx is not retried by the client"
    );
}

#[tokio::test]
async fn slow_answer_times_out() {
    let slack = FakeSlack::start().await;
    let api = slack.client_with(ApiOptions {
        request_timeout: Duration::from_millis(300),
        ..ApiOptions::default()
    });
    let started = Instant::now();
    let error = api.users_info(TEAM_A, U_SLOW).await.unwrap_err();
    assert_eq!(error, SlackApiError::Timeout);
    assert!(error.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn body_that_is_not_json_is_a_bad_response() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let error = api.users_info(TEAM_A, U_GARBAGE).await.unwrap_err();
    assert!(matches!(error, SlackApiError::BadResponse(_)), "{error:?}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn each_team_uses_its_own_token() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    let user = api.users_info(TEAM_B, U_FULL).await.unwrap();
    assert_eq!(
        user.team_id.as_deref(),
        Some(TEAM_B),
        "server saw team B's token"
    );
    let auth: Vec<_> = slack
        .seen()
        .into_iter()
        .map(|s| s.authorization.unwrap_or_default())
        .collect();
    assert_eq!(
        auth,
        [format!("Bearer {TOKEN_A}"), format!("Bearer {TOKEN_B}")]
    );
}

#[tokio::test]
async fn wrong_token_is_an_api_error_and_not_cached() {
    let slack = FakeSlack::start().await;
    let tokens = BotTokens::parse(&format!("{TEAM_A}=xoxb-revoked")).unwrap();
    let api = SlackApi::new(&slack.base_url, tokens, ApiOptions::default()).unwrap();
    for _ in 0..2 {
        let error = api.users_info(TEAM_A, U_FULL).await.unwrap_err();
        assert_eq!(
            error,
            SlackApiError::Api {
                error: "invalid_auth".into()
            }
        );
        assert!(!error.is_retryable());
    }
    assert_eq!(slack.requests(), 2);
    assert_eq!(
        slack.seen()[0].authorization.as_deref(),
        Some("Bearer xoxb-revoked")
    );
}

#[tokio::test]
async fn unknown_team_is_no_token_without_any_request() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let error = api.users_info("T0UNKNOWN", U_FULL).await.unwrap_err();
    assert_eq!(
        error,
        SlackApiError::NoToken {
            team: "T0UNKNOWN".into()
        }
    );
    assert!(!error.is_retryable());
    assert_eq!(slack.requests(), 0);
}

#[tokio::test]
async fn unreachable_server_is_a_retryable_transport_error() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tokens = BotTokens::parse(&format!("{TEAM_A}={TOKEN_A}")).unwrap();
    let api = SlackApi::new(
        format!("http://127.0.0.1:{port}/api"),
        tokens,
        ApiOptions::default(),
    )
    .unwrap();
    let error = api.users_info(TEAM_A, U_FULL).await.unwrap_err();
    assert!(matches!(error, SlackApiError::Transport(_)), "{error:?}");
    assert!(error.is_retryable());
}

// ---- cache ----------------------------------------------------------------------

#[tokio::test]
async fn second_lookup_is_served_from_the_cache() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let first = api.users_info(TEAM_A, U_FULL).await.unwrap();
    let second = api.users_info(TEAM_A, U_FULL).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(slack.requests(), 1);
    let stats = api.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));

    // Cached per installing team: team B's view is looked up separately.
    api.users_info(TEAM_B, U_FULL).await.unwrap();
    assert_eq!(slack.requests(), 2);
}

#[tokio::test]
async fn not_visible_and_not_found_are_cached_negatively() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    for _ in 0..3 {
        assert_eq!(
            api.users_info(TEAM_A, U_HIDDEN).await.unwrap_err(),
            SlackApiError::UserNotVisible
        );
        assert_eq!(
            api.users_info(TEAM_A, U_MISSING).await.unwrap_err(),
            SlackApiError::UserNotFound
        );
    }
    assert_eq!(slack.requests_for(U_HIDDEN), 1);
    assert_eq!(slack.requests_for(U_MISSING), 1);
    assert_eq!(api.cache_stats().hits, 4);
}

#[tokio::test]
async fn negative_entries_expire_after_their_own_ttl() {
    let slack = FakeSlack::start().await;
    let api = slack.client_with(ApiOptions {
        negative_cache_ttl: Duration::from_millis(200),
        ..ApiOptions::default()
    });
    api.users_info(TEAM_A, U_HIDDEN).await.unwrap_err();
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    api.users_info(TEAM_A, U_HIDDEN).await.unwrap_err();
    assert_eq!(slack.requests(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.users_info(TEAM_A, U_HIDDEN).await.unwrap_err();
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    assert_eq!(slack.requests_for(U_HIDDEN), 2, "negative entry expired");
    assert_eq!(slack.requests_for(U_FULL), 1, "positive entry still fresh");
}

#[tokio::test]
async fn positive_entries_expire_after_cache_ttl() {
    let slack = FakeSlack::start().await;
    let api = slack.client_with(ApiOptions {
        cache_ttl: Duration::from_millis(200),
        ..ApiOptions::default()
    });
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    assert_eq!(slack.requests_for(U_FULL), 2);
}

#[tokio::test]
async fn retryable_errors_are_not_cached() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let error = api.users_info(TEAM_A, U_500_ONCE).await.unwrap_err();
    assert!(error.is_retryable());
    let user = api.users_info(TEAM_A, U_500_ONCE).await.unwrap();
    assert_eq!(user.id, U_500_ONCE);
    assert_eq!(slack.requests_for(U_500_ONCE), 2);
    // ... and the success is.
    api.users_info(TEAM_A, U_500_ONCE).await.unwrap();
    assert_eq!(slack.requests_for(U_500_ONCE), 2);
}

#[tokio::test]
async fn invalidate_user_forces_a_new_lookup() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    api.invalidate_user(TEAM_A, U_FULL);
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    assert_eq!(slack.requests(), 2);
}

#[tokio::test]
async fn concurrent_lookups_share_one_request() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.users_info(TEAM_A, U_LAGGY).await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().unwrap().id, U_LAGGY);
    }
    assert_eq!(slack.requests_for(U_LAGGY), 1);
    let stats = api.cache_stats();
    assert_eq!(stats.misses + stats.hits, 8);
    assert!(stats.coalesced >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_cancelled_lookup_does_not_strand_the_others() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    // The first lookup starts the request and is dropped mid-flight.
    let first = tokio::spawn({
        let api = api.clone();
        async move { api.users_info(TEAM_A, U_LAGGY).await }
    });
    while slack.requests_for(U_LAGGY) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::spawn({
        let api = api.clone();
        async move { api.users_info(TEAM_A, U_LAGGY).await }
    });
    while api.cache_stats().coalesced == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    let user = second.await.unwrap().unwrap();
    assert_eq!(user.id, U_LAGGY);
    // The second lookup took over with its own request, and cached the result.
    api.users_info(TEAM_A, U_LAGGY).await.unwrap();
    assert_eq!(slack.requests_for(U_LAGGY), 2);
}

#[tokio::test]
async fn capacity_is_bounded_and_evicts_the_oldest() {
    let slack = FakeSlack::start().await;
    let api = slack.client_with(ApiOptions {
        cache_capacity: 3,
        ..ApiOptions::default()
    });
    for user in ["U1", "U2", "U3", "U4"] {
        api.users_info(TEAM_A, user).await.unwrap();
    }
    assert_eq!(api.cache_stats().entries, 3);
    // U2..U4 are still cached; U1 was evicted.
    for user in ["U2", "U3", "U4"] {
        api.users_info(TEAM_A, user).await.unwrap();
    }
    assert_eq!(slack.requests(), 4);
    api.users_info(TEAM_A, "U1").await.unwrap();
    assert_eq!(slack.requests(), 5);
    assert_eq!(api.cache_stats().entries, 3);
}

#[tokio::test]
async fn capacity_zero_disables_the_cache() {
    let slack = FakeSlack::start().await;
    let api = slack.client_with(ApiOptions {
        cache_capacity: 0,
        ..ApiOptions::default()
    });
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    api.users_info(TEAM_A, U_FULL).await.unwrap();
    assert_eq!(slack.requests(), 2);
    assert_eq!(api.cache_stats().entries, 0);
}
