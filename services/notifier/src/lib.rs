//! slackline notifier (work in progress).
