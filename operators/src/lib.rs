//! weir-operators: everything that transforms batches.
//!
//! - [`decode`]: JSON messages to Arrow batches against a declared [`schema::SchemaConfig`];
//! - [`expr`]: filter and project on DataFusion `PhysicalExpr`s;
//! - [`window`]: event-time tumbling windows aggregated by DataFusion's `GroupsAccumulator`s;
//! - [`projection`]: keyed folds for read models (CQRS projections);
//! - [`upcast`]: event versioning, older event versions mapped to the current shape.

pub mod decode;
pub mod expr;
pub mod projection;
pub mod schema;
pub mod sql;
pub mod upcast;
pub mod window;

pub use decode::JsonDecoder;
pub use expr::{FilterOperator, ProjectOperator};
pub use projection::{Projection, ProjectionOperator};
pub use schema::{FieldConfig, FieldType, SchemaConfig};
pub use sql::{plan_sql, SqlOptions, SqlPlan};
pub use upcast::{UpcastOperator, UpcastStep, Upcasters};
pub use window::{AggregateConfig, LatePolicy, TumbleConfig, TumbleWindow};
