//! weir-operators: everything that transforms batches.
//!
//! - [`decode`]: JSON messages to Arrow batches against a declared [`schema::SchemaConfig`];
//! - [`expr`]: filter and project on DataFusion `PhysicalExpr`s;
//! - [`window`]: event-time tumbling and hopping windows aggregated by DataFusion's
//!   `GroupsAccumulator`s; [`session`]: session windows on the same accumulators;
//!   [`upsert`]: GROUP BY without a window, as an upsert stream;
//! - [`two_phase`]: windows whose groups span partitions, partials merged by a global stage;
//! - [`key_check`]: the run-time check that `[schema] partition_key` co-locates each key;
//! - [`projection`]: keyed folds for read models (CQRS projections);
//! - [`upcast`]: event versioning, older event versions mapped to the current shape;
//!   [`upcast_config`]: the same declared in `pipeline.toml` (SQL expressions per step).

pub mod decode;
pub mod dedup;
pub mod expr;
pub mod key_check;
pub mod projection;
pub mod schema;
pub mod session;
pub mod sql;
pub mod two_phase;
pub mod upcast;
pub mod upcast_config;
pub mod upsert;
pub mod window;

pub use decode::JsonDecoder;
pub use dedup::{DedupConfig, DedupOperator};
pub use expr::{FilterOperator, ProjectOperator};
pub use key_check::{KeyCheckOperator, KeyPlacement};
pub use projection::{Projection, ProjectionOperator};
pub use schema::{
    Colocation, EpochUnit, FieldConfig, FieldType, MetadataConfig, PartitionKeyCheck, SchemaConfig,
    PLAUSIBLE_EPOCH_SECS,
};
pub use session::SessionWindow;
pub use sql::{plan_sql, SqlOptions, SqlPlan};
pub use two_phase::{check_two_phase, partial_window, GlobalWindow, TwoPhaseShared};
pub use upcast::{UpcastOperator, UpcastStep, Upcasters};
pub use upcast_config::{ConfigUpcastOperator, UpcastConfig, UpcastStepConfig};
pub use upsert::GroupUpsert;
pub use weir_runtime::{EventError, Failure};
pub use window::{
    build_window, AggregateConfig, HopConfig, LatePolicy, SessionConfig, TumbleConfig,
    TumbleWindow, WindowConfig, WindowKind, WindowRuleError, WindowSetting, MAX_HOPS_PER_EVENT,
};
