//! Two members of the group and rebalances while replies for several channels are
//! flowing (a second member joins mid-stream, then the first leaves): every reply is
//! posted exactly once, and each channel's posts are in reply order (guarantees 2 and
//! 3 across a handover).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

const ROOT: &str = "1764000000.000100";
const CHANNELS: usize = 6;
const PER_CHANNEL: usize = 12;

fn replies(range: std::ops::Range<usize>) -> Vec<slackline_events::Reply> {
    let mut out = Vec::new();
    for i in range {
        for c in 0..CHANNELS {
            out.push(reply(
                &format!("r-{c}-{i}"),
                &format!("C0RB{c}"),
                ROOT,
                &format!("{c}/{i}"),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_mid_stream_posts_every_reply_once_in_channel_order() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let extra = [("SLACK_SENDER_CHANNEL_INTERVAL_MS", "150")];
    let mut first = start(config(&cluster, &db.url, &slack, &extra)).await;
    produce_replies(&cluster, &replies(0..PER_CHANNEL / 2)).await;
    wait_until("some replies posted", Duration::from_secs(30), || async {
        slack.posted().len() >= CHANNELS * 2
    })
    .await;
    // A second member joins while the first is posting.
    let mut second = start(config(&cluster, &db.url, &slack, &extra)).await;
    produce_replies(&cluster, &replies(PER_CHANNEL / 2..PER_CHANNEL)).await;
    wait_until("more replies posted", Duration::from_secs(30), || async {
        slack.posted().len() >= CHANNELS * PER_CHANNEL * 2 / 3
    })
    .await;
    assert!(
        slack.posted().len() < CHANNELS * PER_CHANNEL,
        "still flowing when the first member leaves"
    );
    // The first leaves mid-stream.
    first.stop().await;
    wait_until("every reply posted", Duration::from_secs(60), || async {
        slack.posted().len() >= CHANNELS * PER_CHANNEL
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;

    for c in 0..CHANNELS {
        let calls = calls_to(&slack, &format!("C0RB{c}"));
        let texts: Vec<_> = calls
            .iter()
            .map(|call| call.field("text").unwrap())
            .collect();
        let want: Vec<String> = (0..PER_CHANNEL).map(|i| format!("{c}/{i}")).collect();
        assert_eq!(texts, want, "channel {c}: once each, in order");
        assert!(calls.iter().all(|call| call.answer == "ok"));
    }
    assert_eq!(slack.post_calls().len(), CHANNELS * PER_CHANNEL);
    let both = |name: &str| first.counter(name, &[]) + second.counter(name, &[]);
    assert_eq!(
        both("slackline_slack_sender_sent_total"),
        (CHANNELS * PER_CHANNEL) as u64
    );
    assert_eq!(both("slackline_slack_sender_ambiguous_total"), 0);
    assert!(
        second.counter("slackline_slack_sender_sent_total", &[]) > 0,
        "the second member took part"
    );
    second.stop().await;
    db.drop_database().await;
}
