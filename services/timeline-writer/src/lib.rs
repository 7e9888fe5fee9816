//! slackline timeline-writer (work in progress).
