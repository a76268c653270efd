//! sea-orm entities of the coordinator's tables (schema in `kessai-migrations`).

pub mod saga {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sagas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub kind: String,
        pub idempotency_key: Option<String>,
        pub state: String,
        /// Bumped by every transition; an update names the version it read, so a
        /// stale writer changes nothing.
        pub version: i64,
        pub stuck: bool,
        pub try_deadline_ms: i64,
        pub wake_at_ms: Option<i64>,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        pub finished_at_ms: Option<i64>,
        #[sea_orm(column_type = "Text", nullable)]
        pub reason: Option<String>,
        #[sea_orm(column_type = "Text")]
        pub request: String,
        pub trace_id: Option<String>,
        /// The API client that submitted the saga; `None` in-process.
        pub client: Option<String>,
        /// W3C `traceparent` of the span that submitted the saga; its later spans are
        /// children of it.
        pub trace_parent: Option<String>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod branch {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "branches")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub saga_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub branch_id: i32,
        pub participant: String,
        #[sea_orm(column_type = "Text")]
        pub payload: String,
        pub state: String,
        pub attempt: i32,
        pub resend_at_ms: Option<i64>,
        #[sea_orm(column_type = "Text", nullable)]
        pub last_error: Option<String>,
        pub updated_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod saga_event {
    use crate::machine::{Actor, EventKind, EventOutcome};
    use sea_orm::entity::prelude::*;

    /// One timeline entry. The columns after `detail` came later: rows written before
    /// them hold NULL there.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "saga_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub saga_id: String,
        pub at_ms: i64,
        pub kind: EventKind,
        pub branch_id: Option<i32>,
        #[sea_orm(column_type = "Text")]
        pub detail: String,
        /// `try`, `confirm` or `cancel` ([`kessai_messages::Operation`]).
        pub operation: Option<String>,
        /// The command's send number.
        pub attempt: Option<i32>,
        pub outcome: Option<EventOutcome>,
        #[sea_orm(column_type = "Text", nullable)]
        pub reason: Option<String>,
        pub actor: Option<Actor>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod outbox {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub saga_id: String,
        pub queue: String,
        #[sea_orm(column_type = "Text")]
        pub payload: String,
        #[sea_orm(column_type = "Text")]
        pub headers: String,
        pub created_at_ms: i64,
        /// When the command stops being worth delivering: its branch's resend is due
        /// then. The relay publishes it with the time left as its time-to-live. `None`
        /// (rows from before the column existed): no expiry.
        pub expires_at_ms: Option<i64>,
        /// The command's send number (1 = first send); `None` on old rows.
        pub attempt: Option<i32>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}
