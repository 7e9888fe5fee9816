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
use crate::store::{
    self, FactKey, NewMessage, NewThread, NewTransition, Order, SeenMessage, SeenReaction, Thread,
};

/// Who did something, for the status rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Moves threads to `todo` (customers, authors we cannot attribute, and the bots
    /// of the customer's workspace).
    Customer,
    /// Moves threads to `waiting`.
    Agent,
    /// Never opens a thread and never changes a status (our own workspace's bots,
    /// and customers' bots in `BOT_QUIET_CHANNELS`).
    Silent,
}

impl Role {
    /// The status a message of this role sets.
    fn status(self) -> Option<ThreadStatus> {
        match self {
            Role::Customer => Some(ThreadStatus::Todo),
            Role::Agent => Some(ThreadStatus::Waiting),
            Role::Silent => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Silent => "silent",
        }
    }

    fn parse(s: &str) -> Role {
        match s {
            "customer" => Role::Customer,
            "agent" => Role::Agent,
            _ => Role::Silent,
        }
    }
}

/// The role of a message's author. A bot of another workspace than the installing one
/// speaks for the customer (an incoming webhook, a CI app); so does a bot whose
/// workspace Slack did not tell (a missed message is a missed urgent request). A bot
/// of the installing workspace is silent, and so is every bot in a channel of
/// `BOT_QUIET_CHANNELS`.
fn message_role(event: &MessageEvent, grouping: &Grouping, channel: &str) -> Role {
    let author = event.author.as_ref();
    match author.map_or(AuthorKind::Unknown, |a| a.kind) {
        AuthorKind::Agent => Role::Agent,
        // Degraded events without any author must still surface: a customer's.
        AuthorKind::Customer | AuthorKind::Unknown => Role::Customer,
        AuthorKind::Bot => {
            let team = author
                .and_then(|a| a.team_id.as_deref())
                .filter(|t| !t.is_empty());
            let ours = team == Some(event.team_id.as_str());
            if ours || grouping.bot_quiet_channels.contains(channel) {
                Role::Silent
            } else {
                Role::Customer
            }
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
    /// The causes of the transitions the fact caused (its own, and those of facts
    /// delivered earlier that it brought into a thread), in order.
    pub(crate) causes: Vec<&'static str>,
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
    causes: Vec<&'static str>,
}

/// What set a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecidedBy {
    Message(Role),
    Reaction,
}

/// A status decision: a fact that sets a thread's status, at its place in Slack's
/// order. The newest decision of a thread holds; an older one changes nothing.
#[derive(Debug, Clone)]
struct Decision {
    order: Order,
    status: ThreadStatus,
    by: DecidedBy,
    key: FactKey,
    event_id: String,
    author_kind: String,
    reaction: Option<String>,
    event_time_ms: Option<i64>,
}

impl Decision {
    /// The decision of a remembered message, if its role sets a status.
    fn of_message(team: &str, channel: &str, m: &SeenMessage) -> Option<Decision> {
        let role = Role::parse(&m.role);
        Some(Decision {
            order: Order::message(&m.ts, &m.fact),
            status: role.status()?,
            by: DecidedBy::Message(role),
            key: FactKey {
                team_id: team.to_owned(),
                channel_id: channel.to_owned(),
                ts: m.ts.clone(),
                fact: m.fact.clone(),
            },
            event_id: m.event_id.clone(),
            author_kind: m.author_kind.clone(),
            reaction: None,
            event_time_ms: m.event_time_ms,
        })
    }

    /// The decision of a remembered reaction, if it is a command.
    fn of_reaction(team: &str, channel: &str, r: &SeenReaction) -> Option<Decision> {
        Some(Decision {
            order: Order {
                micros: r.order_micros,
                key: format!("1:{}", r.fact),
            },
            status: r.command_status?,
            by: DecidedBy::Reaction,
            key: FactKey {
                team_id: team.to_owned(),
                channel_id: channel.to_owned(),
                ts: r.ts.clone(),
                fact: r.fact.clone(),
            },
            event_id: r.event_id.clone(),
            author_kind: r.author_kind.clone(),
            reaction: Some(r.name.clone()),
            event_time_ms: r.event_time_ms,
        })
    }

    /// The transition's cause when this decision changes `from`.
    fn cause(&self, from: ThreadStatus) -> &'static str {
        match self.by {
            DecidedBy::Message(Role::Customer) if from == ThreadStatus::Done => "reopened",
            DecidedBy::Message(Role::Customer) => "customer_message",
            DecidedBy::Message(_) => "agent_reply",
            DecidedBy::Reaction => "reaction",
        }
    }
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
            causes: Vec::new(),
        });
    }
    let effect = if key.channel_id.is_empty() || key.ts.is_empty() {
        Effect::default()
    } else {
        let author = event.author.as_ref();
        let kind = author.map_or(AuthorKind::Unknown, |a| a.kind);
        let role = match (&event.kind, kind) {
            // Bots' reactions are never commands.
            (Kind::ReactionAdded(_), AuthorKind::Bot) => Role::Silent,
            _ => message_role(event, grouping, &key.channel_id),
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
        causes: effect.causes,
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
            // Edits and deletes change neither membership nor status (an edit is no
            // new request); a removed reaction undoes no command. Their order does
            // not matter.
            Kind::Edited(_)
            | Kind::Deleted(_)
            | Kind::ReactionRemoved(_)
            | Kind::MemberJoined(_)
            | Kind::MemberLeft(_) => Ok(Effect::default()),
        }
    }

    /// This message fact's own status decision, if its role sets one.
    fn message_decision(&self) -> Option<Decision> {
        Some(Decision {
            order: Order::message(self.ts(), &self.key.fact),
            status: self.role.status()?,
            by: DecidedBy::Message(self.role),
            key: self.key.clone(),
            event_id: self.event.event_id.clone(),
            author_kind: self.author_kind.to_owned(),
            reaction: None,
            event_time_ms: self.event.event_time_ms,
        })
    }

    /// A message: top level when `thread_ts` is `None`, else a reply in that thread.
    /// It is remembered first, so that a thread opened later (a root delivered after
    /// its replies, a ticket after the conversation) adopts it.
    async fn on_message(
        &self,
        conn: &mut PgConnection,
        thread_ts: Option<&str>,
    ) -> Result<Effect, StoreError> {
        let (team, channel) = (self.team(), self.channel());
        store::insert_seen_message(
            conn,
            team,
            channel,
            &SeenMessage {
                ts: self.ts().to_owned(),
                fact: self.key.fact.clone(),
                thread_ts: thread_ts.map(str::to_owned),
                author_id: self.author_id.map(str::to_owned),
                author_kind: self.author_kind.to_owned(),
                role: self.role.as_str().to_owned(),
                event_id: self.event.event_id.clone(),
                event_time_ms: self.event.event_time_ms,
            },
        )
        .await?;
        // A ts that already belongs to a thread (a root created from one of its
        // replies, a message ticketed before it arrived, or a degraded event about a
        // known message) stays in it.
        if let Some(thread) = store::thread_of_message(conn, team, channel, self.ts()).await? {
            // The root of a Slack thread opened by a reply delivered before it: who
            // opened the thread is known now, as if it had come first.
            if self.mode == GroupingMode::SlackThread
                && thread.root_ts == self.ts()
                && self.role != Role::Silent
            {
                if let Some(author) = self.author_id {
                    store::fill_opened_by(conn, &thread.thread_id, author).await?;
                }
            }
            return self.join(conn, thread).await;
        }
        let Some(thread_ts) = thread_ts else {
            return match (self.mode, self.role) {
                (_, Role::Silent) | (GroupingMode::Manual, _) => Ok(Effect::default()),
                (GroupingMode::SlackThread, _) => self.open(conn, self.ts(), self.author_id).await,
                // Which thread a top-level message joins is decided as of its own
                // place in Slack's order: a thread's status as of its ts, not at
                // its arrival.
                (GroupingMode::TimeWindow, Role::Customer) => {
                    let at = Order::message(self.ts(), &self.key.fact);
                    let joined = match (self.author_id, store::ts_micros(self.ts())) {
                        (Some(author), Some(_)) => {
                            let window = self.grouping.window_micros();
                            store::window_thread(conn, team, channel, &at, author, window).await?
                        }
                        _ => None,
                    };
                    match joined {
                        Some(thread) => self.join(conn, thread).await,
                        None => self.open(conn, self.ts(), self.author_id).await,
                    }
                }
                (GroupingMode::TimeWindow, Role::Agent) => {
                    let at = Order::message(self.ts(), &self.key.fact);
                    match store::open_thread_at(conn, team, channel, &at).await? {
                        Some(thread) => self.join(conn, thread).await,
                        None => Ok(Effect::default()),
                    }
                }
            };
        };
        if let Some(thread) = store::thread_of_message(conn, team, channel, thread_ts).await? {
            return self.join(conn, thread).await;
        }
        if self.mode == GroupingMode::Manual || self.role == Role::Silent {
            return Ok(Effect::default());
        }
        // The root was posted before enablement, by a silent bot, or is not
        // delivered yet: its author is unknown (until it arrives).
        self.open(conn, thread_ts, None).await
    }

    /// A message joins `thread`: it is recorded, with the messages delivered before it
    /// that wait for it (its replies), and the newest of their status decisions holds.
    async fn join(&self, conn: &mut PgConnection, thread: Thread) -> Result<Effect, StoreError> {
        let loose = store::loose_messages(
            conn,
            self.team(),
            self.channel(),
            &[self.ts()],
            (self.ts(), &self.key.fact),
        )
        .await?;
        self.add_member(conn, &thread.thread_id).await?;
        let mut effect = Effect {
            thread_id: Some(thread.thread_id.clone()),
            causes: Vec::new(),
        };
        let own = self.message_decision().into_iter().collect();
        self.adopt(conn, thread, loose, own, &mut effect).await?;
        Ok(effect)
    }

    async fn add_member(&self, conn: &mut PgConnection, thread_id: &str) -> Result<(), StoreError> {
        store::add_message(
            conn,
            &NewMessage {
                team_id: self.team(),
                channel_id: self.channel(),
                ts: self.ts(),
                thread_id,
                author_id: self.author_id,
                author_kind: self.author_kind,
            },
        )
        .await
    }

    /// `thread` takes the `loose` messages (delivered before the message they belong
    /// with) as members; then every status decision at stake (`decisions`, theirs,
    /// and the reaction commands on this fact's message, the thread's root and them)
    /// is applied in Slack's order, so the outcome is the one in-order delivery gives.
    /// Decisions applied before are older than the thread's current one by then, so
    /// applying one again changes nothing.
    async fn adopt(
        &self,
        conn: &mut PgConnection,
        mut thread: Thread,
        loose: Vec<SeenMessage>,
        mut decisions: Vec<Decision>,
        effect: &mut Effect,
    ) -> Result<(), StoreError> {
        let (team, channel) = (self.team(), self.channel());
        // The thread's root too: a reaction on it belongs to the thread even before
        // the root message itself is delivered.
        let root_ts = thread.root_ts.clone();
        let mut members: Vec<&str> = vec![self.ts(), &root_ts];
        for m in &loose {
            store::add_message(
                conn,
                &NewMessage {
                    team_id: team,
                    channel_id: channel,
                    ts: &m.ts,
                    thread_id: &thread.thread_id,
                    author_id: m.author_id.as_deref(),
                    author_kind: &m.author_kind,
                },
            )
            .await?;
            members.push(&m.ts);
            decisions.extend(Decision::of_message(team, channel, m));
        }
        members.sort_unstable();
        members.dedup();
        let reactions = store::reaction_commands_on(conn, team, channel, &members).await?;
        decisions.extend(
            reactions
                .iter()
                .filter_map(|r| Decision::of_reaction(team, channel, r)),
        );
        store::set_facts_thread(conn, team, channel, &members, &thread.thread_id).await?;
        store::forget_seen(conn, team, channel, &members).await?;
        // Every decision is remembered (for the status as of a time); only the newest
        // one can hold, and one transition goes from the old status to its status,
        // so no superseded status is published.
        for decision in &decisions {
            store::record_decision(conn, &thread.thread_id, decision.status, &decision.order)
                .await?;
        }
        if let Some(newest) = decisions.iter().max_by(|a, b| a.order.cmp(&b.order)) {
            self.decide(conn, &mut thread, newest, effect).await?;
        }
        Ok(())
    }

    /// Applies one status decision to `thread`: it holds only when it is newer in
    /// Slack's order than the one that decided the current status, and a transition
    /// is recorded (and later published) only when it changes the status.
    async fn decide(
        &self,
        conn: &mut PgConnection,
        thread: &mut Thread,
        d: &Decision,
        effect: &mut Effect,
    ) -> Result<(), StoreError> {
        store::record_decision(conn, &thread.thread_id, d.status, &d.order).await?;
        if d.order <= thread.order {
            return Ok(());
        }
        store::set_decision(conn, &thread.thread_id, d.status, &d.order).await?;
        let from = thread.status;
        thread.status = d.status;
        thread.order = d.order.clone();
        if from == d.status {
            return Ok(());
        }
        let cause = d.cause(from);
        record(conn, &thread.thread_id, Some(from), d, cause).await?;
        effect.causes.push(cause);
        Ok(())
    }

    /// A message opens a thread rooted at `root_ts` (its own ts, or its thread's),
    /// with the messages delivered before it that belong there.
    async fn open(
        &self,
        conn: &mut PgConnection,
        root_ts: &str,
        opened_by: Option<&str>,
    ) -> Result<Effect, StoreError> {
        let Some(own) = self.message_decision() else {
            return Ok(Effect::default());
        };
        let (team, channel) = (self.team(), self.channel());
        let loose = store::loose_messages(
            conn,
            team,
            channel,
            &[root_ts, self.ts()],
            (self.ts(), &self.key.fact),
        )
        .await?;
        let thread_id = thread_id(team, channel, root_ts);
        let new = NewThread {
            thread_id: &thread_id,
            team_id: team,
            channel_id: channel,
            root_ts,
            status: own.status,
            order: &own.order,
            grouping: self.mode.as_str(),
            opened_by,
            last_ts: self.ts(),
        };
        if !store::create_thread(conn, &new).await? {
            // Created concurrently (a rebalance overlap): join it instead.
            return match store::thread_by_root(conn, team, channel, root_ts).await? {
                Some(thread) => self.join(conn, thread).await,
                None => Err(StoreError::Query(format!(
                    "thread {thread_id} exists in another team or channel"
                ))),
            };
        }
        self.add_member(conn, &thread_id).await?;
        store::record_decision(conn, &thread_id, own.status, &own.order).await?;
        record(conn, &thread_id, None, &own, "opened").await?;
        let mut loose = loose;
        if self.mode == GroupingMode::TimeWindow && root_ts == self.ts() {
            loose.extend(self.answers_before(conn, &thread_id, &own.order).await?);
        }
        let mut effect = Effect {
            thread_id: Some(thread_id.clone()),
            causes: vec!["opened"],
        };
        let thread = Thread {
            thread_id,
            root_ts: root_ts.to_owned(),
            status: own.status,
            order: own.order,
        };
        self.adopt(conn, thread, loose, Vec::new(), &mut effect)
            .await?;
        Ok(effect)
    }

    /// For a `time-window` thread opened at `opened`: the agents' top-level messages
    /// delivered before it (in no thread then) that in Slack's order came after it and
    /// answered it (it is the open thread with the latest message as of their ts).
    /// Each is made a member here, so the next one's choice sees it.
    async fn answers_before(
        &self,
        conn: &mut PgConnection,
        thread_id: &str,
        opened: &Order,
    ) -> Result<Vec<SeenMessage>, StoreError> {
        let (team, channel) = (self.team(), self.channel());
        let mut loose: Vec<(Order, SeenMessage)> = store::loose_agent_posts(conn, team, channel)
            .await?
            .into_iter()
            .map(|m| (Order::message(&m.ts, &m.fact), m))
            .filter(|(order, _)| order > opened)
            .collect();
        loose.sort_by(|a, b| a.0.cmp(&b.0));
        let mut answers = Vec::new();
        for (order, m) in loose {
            let chosen = store::open_thread_at(conn, team, channel, &order).await?;
            if chosen.is_none_or(|t| t.thread_id != thread_id) {
                continue;
            }
            store::add_message(
                conn,
                &NewMessage {
                    team_id: team,
                    channel_id: channel,
                    ts: &m.ts,
                    thread_id,
                    author_id: m.author_id.as_deref(),
                    author_kind: &m.author_kind,
                },
            )
            .await?;
            store::record_decision(conn, thread_id, ThreadStatus::Waiting, &order).await?;
            answers.push(m);
        }
        Ok(answers)
    }

    /// Whether this fact's author may give `command`: agents always, customers and
    /// unattributed authors only when the command is for anyone (bots never get here).
    fn may_give(&self, command: &ReactionCommand) -> bool {
        match command.authors {
            CommandAuthors::Agents => self.role == Role::Agent,
            CommandAuthors::Anyone => self.role != Role::Silent,
        }
    }

    /// A reaction: may open a thread (manual mode: the open reaction, which is also a
    /// `todo` decision on a thread it finds) or set a status (a command, when its
    /// author may give it). A reaction that is no command still belongs to the
    /// message's thread. It is remembered, so a command on a message delivered later
    /// applies once the message joins a thread.
    async fn on_reaction(
        &self,
        conn: &mut PgConnection,
        name: &str,
        item_user_id: Option<&str>,
    ) -> Result<Effect, StoreError> {
        if self.role == Role::Silent {
            return Ok(Effect::default());
        }
        let (team, channel, ts) = (self.team(), self.channel(), self.ts());
        let ticket =
            self.mode == GroupingMode::Manual && name == self.grouping.manual_open_reaction;
        let command = if ticket {
            Some(ThreadStatus::Todo)
        } else {
            self.grouping
                .reaction_commands
                .get(name)
                .filter(|command| self.may_give(command))
                .map(|command| command.status)
        };
        let order = Order::reaction(ts, self.event.event_time_ms, &self.key.fact);
        let seen = SeenReaction {
            ts: ts.to_owned(),
            fact: self.key.fact.clone(),
            name: name.to_owned(),
            author_kind: self.author_kind.to_owned(),
            command_status: command,
            order_micros: order.micros,
            event_id: self.event.event_id.clone(),
            event_time_ms: self.event.event_time_ms,
        };
        let decision = Decision::of_reaction(team, channel, &seen);
        let thread = store::thread_of_message(conn, team, channel, ts).await?;
        if thread.is_none() && !ticket {
            // Remembered until its message joins a thread (then it is adopted and
            // forgotten).
            store::insert_seen_reaction(conn, team, channel, &seen).await?;
        }
        match (thread, decision) {
            (None, Some(decision)) if ticket => {
                let loose = store::loose_messages(conn, team, channel, &[ts], ("", "")).await?;
                let thread_id = thread_id(team, channel, ts);
                let new = NewThread {
                    thread_id: &thread_id,
                    team_id: team,
                    channel_id: channel,
                    root_ts: ts,
                    status: ThreadStatus::Todo,
                    order: &decision.order,
                    grouping: self.mode.as_str(),
                    opened_by: item_user_id,
                    last_ts: ts,
                };
                if !store::create_thread(conn, &new).await? {
                    return Err(StoreError::Query(format!(
                        "thread {thread_id} exists in another team or channel"
                    )));
                }
                store::record_decision(conn, &thread_id, decision.status, &decision.order).await?;
                record(conn, &thread_id, None, &decision, "opened").await?;
                let mut effect = Effect {
                    thread_id: Some(thread_id.clone()),
                    causes: vec!["opened"],
                };
                let thread = Thread {
                    thread_id,
                    root_ts: ts.to_owned(),
                    status: ThreadStatus::Todo,
                    order: decision.order,
                };
                self.adopt(conn, thread, loose, Vec::new(), &mut effect)
                    .await?;
                Ok(effect)
            }
            (None, _) => Ok(Effect::default()),
            (Some(mut thread), decision) => {
                let mut effect = Effect {
                    thread_id: Some(thread.thread_id.clone()),
                    causes: Vec::new(),
                };
                if let Some(decision) = decision {
                    self.decide(conn, &mut thread, &decision, &mut effect)
                        .await?;
                }
                Ok(effect)
            }
        }
    }
}

/// Records the transition `decision` causes in `thread_id`.
async fn record(
    conn: &mut PgConnection,
    thread_id: &str,
    from_status: Option<ThreadStatus>,
    decision: &Decision,
    cause: &'static str,
) -> Result<(), StoreError> {
    store::transition(
        conn,
        &NewTransition {
            thread_id,
            from_status,
            to_status: decision.status,
            cause,
            key: &decision.key,
            event_id: &decision.event_id,
            author_kind: Some(&decision.author_kind),
            reaction: decision.reaction.as_deref(),
            event_time_ms: decision.event_time_ms,
        },
    )
    .await
}
