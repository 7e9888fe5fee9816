//! slackline-thread-state

fn main() {}
