//! slackline thread-state (work in progress).
