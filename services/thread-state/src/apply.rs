//! What one fact does to the support threads: which thread a message belongs to, and
//! which status transition (if any) it causes. All of it in one transaction, behind
//! the fact's idempotency row, so a redelivered, replayed or duplicated fact changes
//! nothing.
//!
//! Time is the Slack `ts` of the messages, never the wall clock, so a replay decides
//! the same way as the first run.

use slackline_events::{AuthorKind, Degraded, Kind, MessageEvent, ThreadStatus};
use sqlx::{PgConnection, PgPool};

use slackline_store::StoreError;

use crate::config::{CommandAuthors, Grouping, GroupingMode, ReactionCommand};
use crate::store::{self, FactKey, NewMessage, NewThread, NewTransition, Thread};

/// Who did something, for the status rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Moves threads to `todo` (customers, and authors we cannot attribute).
    Customer,
    /// Moves threads to `waiting`.
    Agent,
    /// Never opens a thread and never changes a status.
    Bot,
}

impl Role {
    /// The status a message of this role sets.
    fn status(self) -> Option<ThreadStatus> {
        match self {
            Role::Customer => Some(ThreadStatus::Todo),
            Role::Agent => Some(ThreadStatus::Waiting),
            Role::Bot => None,
        }
    }
}

fn author_kind_name(kind: AuthorKind) -> &'static str {
    match kind {
        AuthorKind::Agent => "agent",
        AuthorKind::Customer => "customer",
        AuthorKind::Bot => "bot",
        AuthorKind::Unknown => "unknown",
    }
}

/// A thread's id: `<team_id>-<channel_id>-<root_ts>`. The team is the installing
/// team, so a shared channel served by two installations has two threads.
fn thread_id(team: &str, channel: &str, root_ts: &str) -> String {
    format!("{team}-{channel}-{root_ts}")
}

/// Degraded subtypes about an existing message (a broken edit, delete or reply
/// notice): the event's ts is not a message's, so it has no thread effect.
fn degraded_is_not_a_message(degraded: &Degraded) -> bool {
    matches!(
        degraded.subtype.as_deref(),
        Some("message_changed" | "message_deleted" | "message_replied")
    )
}

/// The outcome of one fact, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The fact was recorded before: nothing was done.
    pub(crate) duplicate: bool,
    /// The thread the fact belongs to, if any.
    pub(crate) thread_id: Option<String>,
    /// The cause of the transition the fact caused, if any.
    pub(crate) cause: Option<&'static str>,
}

/// One fact being applied.
struct Fact<'a> {
    event: &'a MessageEvent,
    key: FactKey,
    grouping: &'a Grouping,
    mode: GroupingMode,
    role: Role,
    author_id: Option<&'a str>,
    author_kind: &'static str,
}

/// What the fact did.
#[derive(Default)]
struct Effect {
    thread_id: Option<String>,
    cause: Option<&'static str>,
}

/// Applies `event` in one transaction.
///
/// # Errors
///
/// The database's error; the transaction is rolled back, so the whole fact can be
/// tried again.
pub(crate) async fn apply(
    pool: &PgPool,
    grouping: &Grouping,
    event: &MessageEvent,
) -> Result<Applied, StoreError> {
    let key = FactKey {
        team_id: event.team_id.clone(),
        channel_id: event.channel_id.clone().unwrap_or_default(),
        ts: event.ts.clone().unwrap_or_default(),
        fact: event.fact(),
    };
    let mut tx = pool.begin().await?;
    if !store::insert_fact(&mut tx, &key, &event.event_id).await? {
        tx.rollback().await?;
        return Ok(Applied {
            duplicate: true,
            thread_id: None,
            cause: None,
        });
    }
    let effect = if key.channel_id.is_empty() || key.ts.is_empty() {
        Effect::default()
    } else {
        let author = event.author.as_ref();
        let kind = author.map_or(AuthorKind::Unknown, |a| a.kind);
        // Degraded events follow their author's kind too; one without any author
        // (`Unknown`) must still surface, so it counts as a customer's.
        let role = match kind {
            AuthorKind::Agent => Role::Agent,
            AuthorKind::Bot => Role::Bot,
            AuthorKind::Customer | AuthorKind::Unknown => Role::Customer,
        };
        let fact = Fact {
            event,
            mode: grouping.mode_for(&key.channel_id),
            grouping,
            role,
            author_id: author.and_then(|a| a.user_id.as_deref()),
            author_kind: author_kind_name(kind),
            key,
        };
        let effect = fact.apply(&mut tx).await?;
        if let Some(thread_id) = &effect.thread_id {
            store::set_fact_thread(&mut tx, &fact.key, thread_id).await?;
        }
        effect
    };
    tx.commit().await?;
    Ok(Applied {
        duplicate: false,
        thread_id: effect.thread_id,
        cause: effect.cause,
    })
}

impl Fact<'_> {
    fn team(&self) -> &str {
        &self.key.team_id
    }

    fn channel(&self) -> &str {
        &self.key.channel_id
    }

    fn ts(&self) -> &str {
        &self.key.ts
    }

    async fn apply(&self, conn: &mut PgConnection) -> Result<Effect, StoreError> {
        let event = self.event;
        match &event.kind {
            Kind::Posted(posted) => {
                let thread_ts = event.thread_ts.as_deref().filter(|_| posted.is_reply);
                self.on_message(conn, thread_ts).await
            }
            // A broken edit or delete: its ts is the event's own, not a message's.
            Kind::Degraded(degraded) if degraded_is_not_a_message(degraded) => {
                Ok(Effect::default())
            }
            Kind::Degraded(_) => {
                let thread_ts = event.thread_ts.as_deref().filter(|t| *t != self.ts());
                self.on_message(conn, thread_ts).await
            }
            Kind::ReactionAdded(reaction) => {
                self.on_reaction(conn, &reaction.name, reaction.item_user_id.as_deref())
                    .await
            }
            Kind::Edited(_)
            | Kind::Deleted(_)
            | Kind::ReactionRemoved(_)
            | Kind::MemberJoined(_)
            | Kind::MemberLeft(_) => Ok(Effect::default()),
        }
    }

    /// A message: top level when `thread_ts` is `None`, else a reply in that thread.
    async fn on_message(
        &self,
        conn: &mut PgConnection,
        thread_ts: Option<&str>,
    ) -> Result<Effect, StoreError> {
        let (team, channel) = (self.team(), self.channel());
        let Some(thread_ts) = thread_ts else {
            // A ts that already belongs to a thread (a root created from one of its
            // replies, or a degraded event about a known message) stays in it.
            if let Some(thread) = store::thread_of_message(conn, team, channel, self.ts()).await? {
                return self.join(conn, thread).await;
            }
            return match (self.mode, self.role) {
                (_, Role::Bot) | (GroupingMode::Manual, _) => Ok(Effect::default()),
                (GroupingMode::SlackThread, _) => self.open(conn, self.ts(), self.author_id).await,
                (GroupingMode::TimeWindow, Role::Customer) => {
                    let joined = match (self.author_id, store::ts_micros(self.ts())) {
                        (Some(author), Some(at)) => {
                            let window = self.grouping.window_micros();
                            store::window_thread(conn, team, channel, author, at, window).await?
                        }
                        _ => None,
                    };
                    match joined {
                        Some(thread) => self.join(conn, thread).await,
                        None => self.open(conn, self.ts(), self.author_id).await,
                    }
                }
                (GroupingMode::TimeWindow, Role::Agent) => {
                    match store::latest_open_thread(conn, team, channel).await? {
                        Some(thread) => self.join(conn, thread).await,
                        None => Ok(Effect::default()),
                    }
                }
            };
        };
        if let Some(thread) = store::thread_of_message(conn, team, channel, thread_ts).await? {
            return self.join(conn, thread).await;
        }
        if self.mode == GroupingMode::Manual || self.role == Role::Bot {
            return Ok(Effect::default());
        }
        // The root was posted before enablement, or by a bot: its author is unknown.
        self.open(conn, thread_ts, None).await
    }

    /// A message joins `thread`: it is recorded, and its author's role sets the status.
    async fn join(&self, conn: &mut PgConnection, thread: Thread) -> Result<Effect, StoreError> {
        store::add_message(
            conn,
            &NewMessage {
                team_id: self.team(),
                channel_id: self.channel(),
                ts: self.ts(),
                thread_id: &thread.thread_id,
                author_id: self.author_id,
                author_kind: self.author_kind,
            },
        )
        .await?;
        let mut effect = Effect {
            thread_id: Some(thread.thread_id.clone()),
            cause: None,
        };
        let Some(to) = self.role.status() else {
            return Ok(effect);
        };
        if to == thread.status {
            return Ok(effect);
        }
        let cause = match (self.role, thread.status) {
            (Role::Customer, ThreadStatus::Done) => "reopened",
            (Role::Customer, _) => "customer_message",
            _ => "agent_reply",
        };
        self.transition(
            conn,
            &thread.thread_id,
            Some(thread.status),
            to,
            cause,
            None,
        )
        .await?;
        effect.cause = Some(cause);
        Ok(effect)
    }

    /// A message opens a thread rooted at `root_ts` (its own ts, or its thread's).
    async fn open(
        &self,
        conn: &mut PgConnection,
        root_ts: &str,
        opened_by: Option<&str>,
    ) -> Result<Effect, StoreError> {
        let Some(status) = self.role.status() else {
            return Ok(Effect::default());
        };
        let thread_id = thread_id(self.team(), self.channel(), root_ts);
        let new = NewThread {
            thread_id: &thread_id,
            team_id: self.team(),
            channel_id: self.channel(),
            root_ts,
            status,
            grouping: self.mode.as_str(),
            opened_by,
            last_ts: self.ts(),
        };
        if !store::create_thread(conn, &new).await? {
            // Created concurrently (a rebalance overlap): join it instead.
            return match store::thread_by_root(conn, self.team(), self.channel(), root_ts).await? {
                Some(thread) => self.join(conn, thread).await,
                None => Err(StoreError::Query(format!(
                    "thread {thread_id} exists in another team or channel"
                ))),
            };
        }
        store::add_message(
            conn,
            &NewMessage {
                team_id: self.team(),
                channel_id: self.channel(),
                ts: self.ts(),
                thread_id: &thread_id,
                author_id: self.author_id,
                author_kind: self.author_kind,
            },
        )
        .await?;
        self.transition(conn, &thread_id, None, status, "opened", None)
            .await?;
        Ok(Effect {
            thread_id: Some(thread_id),
            cause: Some("opened"),
        })
    }

    /// Whether this fact's author may give `command`: agents always, customers and
    /// unattributed authors only when the command is for anyone (bots never get here).
    fn may_give(&self, command: &ReactionCommand) -> bool {
        match command.authors {
            CommandAuthors::Agents => self.role == Role::Agent,
            CommandAuthors::Anyone => self.role != Role::Bot,
        }
    }

    /// A reaction: may open a thread (manual mode) or set a status (a command, when
    /// its author may give it). A reaction that is no command still belongs to the
    /// message's thread.
    async fn on_reaction(
        &self,
        conn: &mut PgConnection,
        name: &str,
        item_user_id: Option<&str>,
    ) -> Result<Effect, StoreError> {
        if self.role == Role::Bot {
            return Ok(Effect::default());
        }
        let (team, channel, ts) = (self.team(), self.channel(), self.ts());
        let thread = store::thread_of_message(conn, team, channel, ts).await?;
        let command = self
            .grouping
            .reaction_commands
            .get(name)
            .filter(|command| self.may_give(command))
            .map(|command| command.status);
        match thread {
            None if self.mode == GroupingMode::Manual
                && name == self.grouping.manual_open_reaction =>
            {
                let thread_id = thread_id(team, channel, ts);
                let new = NewThread {
                    thread_id: &thread_id,
                    team_id: team,
                    channel_id: channel,
                    root_ts: ts,
                    status: ThreadStatus::Todo,
                    grouping: self.mode.as_str(),
                    opened_by: item_user_id,
                    last_ts: ts,
                };
                if !store::create_thread(conn, &new).await? {
                    return Err(StoreError::Query(format!(
                        "thread {thread_id} exists in another team or channel"
                    )));
                }
                self.transition(
                    conn,
                    &thread_id,
                    None,
                    ThreadStatus::Todo,
                    "opened",
                    Some(name),
                )
                .await?;
                Ok(Effect {
                    thread_id: Some(thread_id),
                    cause: Some("opened"),
                })
            }
            None => Ok(Effect::default()),
            Some(thread) => {
                let mut effect = Effect {
                    thread_id: Some(thread.thread_id.clone()),
                    cause: None,
                };
                if let Some(to) = command.filter(|to| *to != thread.status) {
                    self.transition(
                        conn,
                        &thread.thread_id,
                        Some(thread.status),
                        to,
                        "reaction",
                        Some(name),
                    )
                    .await?;
                    effect.cause = Some("reaction");
                }
                Ok(effect)
            }
        }
    }

    async fn transition(
        &self,
        conn: &mut PgConnection,
        thread_id: &str,
        from_status: Option<ThreadStatus>,
        to_status: ThreadStatus,
        cause: &'static str,
        reaction: Option<&str>,
    ) -> Result<(), StoreError> {
        store::transition(
            conn,
            &NewTransition {
                thread_id,
                from_status,
                to_status,
                cause,
                key: &self.key,
                event_id: &self.event.event_id,
                author_kind: Some(self.author_kind),
                reaction,
                event_time_ms: self.event.event_time_ms,
            },
        )
        .await
    }
}
