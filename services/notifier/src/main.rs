//! slackline-notifier

fn main() {}
