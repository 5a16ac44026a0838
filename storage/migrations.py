"""Versioned schema migrations: numbered steps, each in its own transaction.

Add a step by appending to `MIGRATIONS`; never edit a step that has shipped. A database whose
version is newer than the code knows is refused rather than misread.

`MIGRATIONS` is SQLite's DDL. Every backend has the same numbered steps, meaning the same
schema, each in its own DDL: `STEPS` maps a dialect (storage.port.Dialect) to its list, and
`migrate` runs the one of the connection's dialect. A new step is appended to every list.
"""

from __future__ import annotations

from storage.port import Connection, Dialect

V1 = [
    # One row per configured messenger channel: its life-cycle state and the admin's intent.
    """CREATE TABLE channels (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL
            CHECK (state IN ('connecting', 'active', 'interrupted', 'rejected', 'disconnected')),
        since REAL NOT NULL,
        last_error TEXT,
        enabled INTEGER NOT NULL,
        config_enabled INTEGER NOT NULL
    )""",
    # A messenger chat and the key the live chat knows it by (both directions of the id map).
    """CREATE TABLE chats (
        id INTEGER PRIMARY KEY,
        channel_id TEXT NOT NULL,
        external_chat_id TEXT NOT NULL,
        name TEXT,
        user_id TEXT NOT NULL,
        client_key TEXT NOT NULL UNIQUE,
        livechat_id TEXT NOT NULL,
        customer_id TEXT,
        customer_tag TEXT,
        created_at REAL NOT NULL,
        UNIQUE (channel_id, external_chat_id)
    )""",
    "CREATE INDEX chats_customer ON chats (livechat_id, customer_id)",
    """CREATE TABLE users (
        channel_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        username TEXT,
        phone TEXT,
        avatar TEXT,
        fetched_at REAL,
        PRIMARY KEY (channel_id, user_id)
    )""",
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL REFERENCES chats (id),
        livechat_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
        opened_by TEXT NOT NULL CHECK (opened_by IN ('user', 'operator')),
        opened_at REAL NOT NULL,
        closed_at REAL,
        conversation_url TEXT,
        agent_id TEXT,
        agent_name TEXT
    )""",
    # The database's half of "one open session per chat, even under concurrency".
    "CREATE UNIQUE INDEX sessions_one_open ON sessions (chat_id) WHERE status = 'open'",
    "CREATE INDEX sessions_by_chat ON sessions (chat_id, id)",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        dedupe_key TEXT UNIQUE,
        session_id INTEGER NOT NULL REFERENCES sessions (id),
        chat_id INTEGER NOT NULL REFERENCES chats (id),
        direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        external_id TEXT,
        remote_id TEXT,
        user_id TEXT,
        operator_id TEXT,
        operator_name TEXT,
        text TEXT NOT NULL,
        files TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'read')),
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX messages_by_remote ON messages (chat_id, remote_id)",
    "CREATE INDEX messages_by_session ON messages (session_id, id)",
    # Every outside call, committed before it is attempted. Items of one lane go in id order.
    # AUTOINCREMENT: an id is never reused, so a late settle cannot touch a newer item.
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        lane TEXT NOT NULL,
        channel_id TEXT,
        ref_id INTEGER,
        payload TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_error TEXT
    )""",
    "CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending'",
    "CREATE INDEX outbox_lane ON outbox (lane, id) WHERE status = 'pending'",
    "CREATE INDEX outbox_channel ON outbox (channel_id) WHERE status = 'pending'",
    # Live-chat events that are not messages (conversation status, unknown events...).
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        livechat_id TEXT NOT NULL,
        name TEXT NOT NULL,
        session_id INTEGER REFERENCES sessions (id),
        payload TEXT NOT NULL,
        received_at REAL NOT NULL
    )""",
    "CREATE INDEX events_by_livechat ON events (livechat_id, name, id)",
]

V2 = [
    # JivoChat: its own chat id per session, the CRM link an agent assigned, the transcript.
    "ALTER TABLE sessions ADD COLUMN remote_chat_id TEXT",
    "ALTER TABLE sessions ADD COLUMN crm_link TEXT",
    "ALTER TABLE sessions ADD COLUMN transcript TEXT",
    "CREATE INDEX sessions_remote ON sessions (livechat_id, remote_chat_id)",
    # The contact details the live chat holds for the chat's visitor (JSON).
    "ALTER TABLE chats ADD COLUMN contact TEXT",
    "CREATE INDEX users_phone ON users (phone)",
    # A stable id per event, the base of the webhook-id subscribers see.
    "ALTER TABLE events ADD COLUMN uid TEXT",
]

V3 = [
    # An operator's message that names a customer the bridge has not linked yet (the live chat
    # can answer before the bridge has stored the customer id it was given): kept, and
    # delivered as soon as the link is stored.
    """CREATE TABLE orphans (
        id INTEGER PRIMARY KEY,
        livechat_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        message_id TEXT,
        text TEXT NOT NULL,
        files TEXT NOT NULL,
        operator_id TEXT,
        operator_name TEXT,
        received_at REAL NOT NULL
    )""",
    "CREATE INDEX orphans_by_customer ON orphans (livechat_id, customer_id, id)",
    "CREATE UNIQUE INDEX orphans_once ON orphans (livechat_id, message_id)",
]

V4 = [
    # Retention: the point up to which delivered messages' bodies were pruned (ids are
    # nearly in time order, so each pass goes on from there instead of from the start).
    "CREATE TABLE retention_marks (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL)",
    # Deleting a session looks up its events (their foreign key), and deleting a chat looks
    # for other chats of its user: without these, each would scan the whole table.
    "CREATE INDEX events_by_session ON events (session_id)",
    "CREATE INDEX chats_by_user ON chats (channel_id, user_id)",
    # What an outbox item refers to: retention keeps those rows (a point lookup per row).
    "CREATE INDEX outbox_ref ON outbox (ref_id)",
]

V5 = [
    # The webhook URL the messenger was last given in a `connect` it accepted: a channel whose
    # URL changed since (public_url edited) is connected again at start-up.
    "ALTER TABLE channels ADD COLUMN connected_webhook TEXT",
]

V6 = [
    # Operator replies kept as dead letters: a repeat of one (the same live-chat message id)
    # is looked up among its chat's kept replies instead of being kept twice.
    "CREATE INDEX outbox_kept_replies ON outbox (lane) WHERE kind = 'operator.reply'",
]

V7 = [
    # Contact details compared as keys (bridge/contacts.py): phones in E.164, emails trimmed
    # and case-folded, '' when there is nothing to compare. The originals stay for display.
    # Rows from before are keyed at start-up (their partial indexes find them).
    "ALTER TABLE users ADD COLUMN phone_key TEXT",
    "DROP INDEX IF EXISTS users_phone",  # phones are compared by their keys now
    "CREATE INDEX users_phone_key ON users (phone_key) WHERE phone_key <> ''",
    "CREATE INDEX users_unkeyed ON users (channel_id) WHERE phone IS NOT NULL AND phone_key IS NULL",
    "ALTER TABLE chats ADD COLUMN contact_phone_key TEXT",
    "ALTER TABLE chats ADD COLUMN contact_email_key TEXT",
    "CREATE INDEX chats_contact_phone ON chats (livechat_id, contact_phone_key)"
    " WHERE contact_phone_key <> ''",
    "CREATE INDEX chats_contact_email ON chats (livechat_id, contact_email_key)"
    " WHERE contact_email_key <> ''",
    "CREATE INDEX chats_unkeyed ON chats (id) WHERE contact IS NOT NULL AND contact_phone_key IS NULL",
    # From a profile's phone to its user's chats: chats_by_user (step 4).
    # The opaque key of the chat's URL sent to JivoChat as sender.url (bridge/chat_links.py);
    # set when the chat next takes a message, and only then sent.
    "ALTER TABLE chats ADD COLUMN url_key TEXT",
    "CREATE UNIQUE INDEX chats_url_key ON chats (url_key) WHERE url_key IS NOT NULL",
    # Why an event linked to no session (NULL: it linked, or never tried), and the live chat's
    # own chat id it named, so an admin can link it, and that chat id, by hand.
    "ALTER TABLE events ADD COLUMN unlinked_reason TEXT",
    "ALTER TABLE events ADD COLUMN remote_chat_id TEXT",
    "CREATE INDEX events_unlinked ON events (id) WHERE unlinked_reason IS NOT NULL",
    "CREATE INDEX events_by_remote_chat ON events (livechat_id, remote_chat_id)"
    " WHERE remote_chat_id IS NOT NULL",
]

V8 = [
    # Leases: what one replica of several (sharing a PostgreSQL database) works on at a time,
    # until `expires_at` (seconds since the epoch, the database server's clock) unless renewed:
    # a lane's head item in flight ('lane:' + lane), a channel's reconnect attempts
    # ('channel:' + id). `holder`: the replica (bridge/replicas.py). Unused on SQLite, which
    # one process serves, but kept so both backends have one schema.
    """CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX leases_by_holder ON leases (holder)",
]

# Each step's PostgreSQL DDL is in storage/postgres_migrations.py, under the same number.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "initial schema", V1),
    (2, "live-chat life cycle: remote chat ids, CRM links, transcripts, contacts", V2),
    (3, "operator messages kept until their customer is linked", V3),
    (4, "retention: pruning marks, indexes for what pruning looks up", V4),
    (5, "the webhook URL each channel was last connected with", V5),
    (6, "an index of the operator replies kept as dead letters", V6),
    (7, "contact keys, chat URL keys, unlinked events' reasons", V7),
    (8, "leases: a lane's head or a channel's reconnects worked by one replica at a time", V8),
]
LATEST = MIGRATIONS[-1][0]

Step = tuple[int, str, list[str]]  # (version, what it brings, its DDL statements)

# Each backend's DDL for the same numbered steps (a backend adds its own list here).
STEPS: dict[Dialect, list[Step]] = {"sqlite": MIGRATIONS}

# How a step's transaction begins: SQLite takes the write lock at once, so two processes
# starting together cannot both apply a step.
_BEGIN: dict[Dialect, str] = {"sqlite": "BEGIN IMMEDIATE", "postgres": "BEGIN"}


class SchemaTooNew(Exception):
    pass


def current_version(conn: Connection) -> int:
    """The version the database's schema is at (0: empty). Run outside a transaction: it
    creates the version table when there is none."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) AS version FROM schema_version").fetchone()
    return int(row["version"]) if row and row["version"] is not None else 0


def check_version(version: int) -> None:
    """Raises SchemaTooNew for a database newer than this code knows."""
    if version > LATEST:
        raise SchemaTooNew(
            f"the database is at schema version {version}, newer than this code knows"
            f" ({LATEST}); upgrade the bridge"
        )


def apply_step(conn: Connection, step: Step) -> None:
    """One step's statements and its version row, inside a transaction the caller opened."""
    number, _description, statements = step
    for statement in statements:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))


def migrate(conn: Connection) -> int:
    """Bring the schema to `LATEST`, each step in its own transaction; return the version it
    is at. `conn` is outside any transaction (autocommit); raises SchemaTooNew."""
    steps = STEPS[conn.dialect]
    assert [n for n, _, _ in steps] == [n for n, _, _ in MIGRATIONS], "steps differ by backend"
    version = current_version(conn)
    check_version(version)
    for step in steps:
        if step[0] <= version:
            continue
        conn.execute(_BEGIN[conn.dialect])
        try:
            apply_step(conn, step)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = step[0]
    return version
