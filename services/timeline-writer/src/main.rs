//! slackline-timeline-writer

fn main() {}
