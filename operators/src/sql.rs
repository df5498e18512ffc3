//! Streaming SQL: a windowed `SELECT ... GROUP BY keys, TUMBLE(...) | HOP(...) | SESSION(...)`
//! planned onto weir's operators.
//!
//! DataFusion's SQL parser reads the query; the planner maps it onto the operator chain
//! `filter (WHERE) → window (GROUP BY + aggregates) → [filter (HAVING)] → project (SELECT
//! list)`. Expressions stay SQL text that DataFusion plans into `PhysicalExpr`s, and each
//! aggregate call is handed to DataFusion's aggregate planner whole (arguments, DISTINCT,
//! ORDER BY inside the call, FILTER), so any DataFusion scalar function and aggregate works.
//! What cannot run as a stream is refused here, naming the construct and its position.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    Ident, ObjectNamePart, SelectItem, SetExpr, Spanned, Statement, TableFactor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::schema::{Colocation, FieldConfig, FieldType, SchemaConfig};
use crate::window::{
    find_aggregate, AggregateConfig, AggregateSet, LatePolicy, WindowConfig, WindowKind,
    WindowRuleError, WindowSetting, MAX_HOPS_PER_EVENT,
};

/// Watermark settings a query does not state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlOptions {
    pub max_out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
    pub late_policy: LatePolicy,
    /// Which keys the source co-locates (from its partitioning); `None`: what the schema's
    /// `partition_key` declares.
    pub colocation: Option<Colocation>,
}

/// A query as weir's operators. Expressions are SQL text over the previous step's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlPlan {
    pub table: String,
    pub filter: Option<String>,
    pub window: WindowConfig,
    pub having: Option<String>,
    pub output: Vec<(String, String)>,
    /// GROUP BY keys that are expressions (`payload['status']`): computed as columns before
    /// the window, as (SQL expression, key column name); the input columns pass through.
    pub computed_keys: Vec<(String, String)>,
    /// The columns of the query's input (which the computed keys' projection passes on).
    pub input_columns: Vec<String>,
    /// The window's keys leave out the partition key: it runs in two phases (partials per
    /// partition, merged by a global stage), and what follows it runs on the merged rows.
    pub two_phase: bool,
}

impl SqlPlan {
    /// The projection before the window that computes the expression keys: every input
    /// column, then each key. None when every key is a column.
    pub fn key_projection(&self) -> Option<Vec<(String, String)>> {
        if self.computed_keys.is_empty() {
            return None;
        }
        let mut columns: Vec<(String, String)> = self
            .input_columns
            .iter()
            .map(|c| (Ident::with_quote('"', c.clone()).to_string(), c.clone()))
            .collect();
        columns.extend(self.computed_keys.iter().cloned());
        Some(columns)
    }

    /// The streaming plan, one operator a line (`weir sql --explain`).
    pub fn explain(&self) -> String {
        let mut out = format!("source      table `{}`\n", self.table);
        if let Some(f) = &self.filter {
            out += &format!("filter      {f}\n");
        }
        if !self.computed_keys.is_empty() {
            let keys: Vec<String> = self
                .computed_keys
                .iter()
                .map(|(e, n)| format!("{e} AS {n}"))
                .collect();
            out += &format!("project     *, {}\n", keys.join(", "));
        }
        let w = &self.window;
        let aggs: Vec<String> = w
            .aggregates
            .iter()
            .map(|a| match &a.sql {
                Some(sql) => format!("{sql} AS {}", a.output_name()),
                None => format!(
                    "{}({}{}) AS {}",
                    a.function,
                    if a.distinct { "DISTINCT " } else { "" },
                    a.column.as_deref().unwrap_or("*"),
                    a.output_name()
                ),
            })
            .collect();
        if w.kind == WindowKind::Continuous {
            out += &format!(
                "{}, keys [{}]\n            aggregates {}\n",
                w.kind,
                w.keys.join(", "),
                aggs.join(", ")
            );
        } else {
            out += &format!(
            "{} on `{}`, keys [{}], watermark = max event time - {} ms, lateness {} ms, late events: {:?}\n            aggregates {}\n",
            w.kind,
            w.time_column.as_deref().unwrap_or_default(),
            w.keys.join(", "),
            w.max_out_of_orderness_ms,
            w.allowed_lateness_ms,
            w.late_policy,
            aggs.join(", ")
        );
        }
        if self.two_phase {
            out += "            two-phase: each partition sends a closed window's partial state; a global stage\n            \
                    merges them when the minimum watermark over all partitions has passed the window\n";
        }
        if let Some(h) = &self.having {
            out += &format!("filter      {h}   (HAVING)\n");
        }
        let cols: Vec<String> = self
            .output
            .iter()
            .map(|(e, n)| {
                if e == n {
                    e.clone()
                } else {
                    format!("{e} AS {n}")
                }
            })
            .collect();
        out += &format!("project     {}\n", cols.join(", "));
        out
    }
}

fn at(node: &impl Spanned) -> String {
    let s = node.span().start;
    if s.line == 0 {
        String::new()
    } else {
        format!(" (line {}, column {})", s.line, s.column)
    }
}

fn at_ident(i: &Ident) -> String {
    let s = i.span.start;
    if s.line == 0 {
        String::new()
    } else {
        format!(" (line {}, column {})", s.line, s.column)
    }
}

fn ident_name(i: &Ident) -> String {
    i.value.clone()
}

/// Plan `sql` against the input `schema`, registered as table `table`.
pub fn plan_sql(
    sql: &str,
    table: &str,
    schema: &SchemaConfig,
    options: &SqlOptions,
) -> Result<SqlPlan, String> {
    let statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| format!("SQL syntax error: {e}"))?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(match statements.len() {
            0 => "no SQL statement".to_string(),
            1 => format!(
                "only a SELECT query can run as a stream, not `{}`",
                first_words(&statements[0].to_string())
            ),
            n => format!("one query at a time, found {n} statements"),
        });
    };
    if let Some(order) = &query.order_by {
        return Err(format!("ORDER BY{} cannot run over an unbounded stream: windows are emitted as they close; sort in the sink", at(order)));
    }
    if let Some(limit) = &query.limit_clause {
        return Err(format!(
            "LIMIT{} cannot run over an unbounded stream",
            at(limit)
        ));
    }
    if query.with.is_some() {
        return Err("WITH (common table expressions) is not supported in a streaming query".into());
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(format!(
            "`{}` is not supported: a streaming query is one SELECT",
            first_words(&query.body.to_string())
        ));
    };
    if select.distinct.is_some() {
        return Err("SELECT DISTINCT is not supported in a streaming query".into());
    }
    // FROM: exactly the source table.
    let from = match select.from.as_slice() {
        [one] => one,
        [] => return Err("FROM is missing: a streaming query reads its source table".into()),
        [_, second, ..] => {
            return Err(format!(
                "a second table in FROM{} is a join, which is not supported",
                at(second)
            ))
        }
    };
    if let Some(join) = from.joins.first() {
        return Err(format!(
            "JOIN{} is not supported in a streaming query",
            at(join)
        ));
    }
    let TableFactor::Table { name, .. } = &from.relation else {
        return Err(format!(
            "FROM{} must name the source table `{table}`",
            at(&from.relation)
        ));
    };
    let from_name = name.to_string();
    if !from_name.eq_ignore_ascii_case(table) {
        return Err(format!(
            "unknown table `{from_name}`{}: the source is registered as `{table}`",
            at(name)
        ));
    }
    let field = |name: &str| field_of(schema, name);

    // GROUP BY: key columns and exactly one window.
    let GroupByExpr::Expressions(group_exprs, modifiers) = &select.group_by else {
        return Err(
            "GROUP BY ALL is not supported: list the key columns and a window (TUMBLE, HOP or SESSION)".into(),
        );
    };
    if !modifiers.is_empty() {
        return Err(
            "GROUP BY modifiers (ROLLUP, CUBE, ...) are not supported in a streaming query".into(),
        );
    }
    let mut keys = Vec::new();
    let mut computed_keys: Vec<(Expr, String)> = Vec::new();
    let mut window: Option<(String, WindowKind)> = None;
    for g in group_exprs {
        match g {
            Expr::Identifier(i) => match field(&i.value) {
                Some(f) => keys.push(f.name.clone()),
                None => return Err(format!("unknown column `{}` in GROUP BY{}", i.value, at(g))),
            },
            Expr::CompoundFieldAccess { .. }
            | Expr::CompoundIdentifier(_)
            | Expr::Nested(_)
            | Expr::Cast { .. }
            | Expr::BinaryOp { .. } => {
                let name = key_name(g, &select.projection);
                if computed_keys.iter().any(|(_, n)| *n == name) || field(&name).is_some() {
                    return Err(format!(
                        "GROUP BY `{g}`{}: its name `{name}` is already a column; give it \
                         another alias in SELECT",
                        at(g)
                    ));
                }
                keys.push(name.clone());
                computed_keys.push((g.clone(), name));
            }
            Expr::Function(f) => {
                let fname = f.name.to_string().to_ascii_lowercase();
                if !matches!(fname.as_str(), "tumble" | "hop" | "session") {
                    return Err(format!(
                        "GROUP BY `{g}`{} is not supported: group by columns and one window (TUMBLE, HOP or SESSION)",
                        at(g)
                    ));
                }
                if window.is_some() {
                    return Err(format!(
                        "a second window in GROUP BY{}: one window per query",
                        at(g)
                    ));
                }
                window = Some(window_call(&fname, f, g, schema)?);
            }
            other => {
                return Err(format!(
                    "GROUP BY `{other}`{} is not supported: group by columns and one window (TUMBLE, HOP or SESSION)",
                    at(other)
                ))
            }
        }
    }
    let (time_column, kind) = match window {
        Some((t, kind)) => (Some(t), kind),
        None if !group_exprs.is_empty() => (None, WindowKind::Continuous),
        None => return Err("a streaming query needs GROUP BY <keys> [, <window>], where the window is TUMBLE(<time column>, INTERVAL '<size>'), HOP(<time column>, INTERVAL '<slide>', INTERVAL '<size>') or SESSION(<time column>, INTERVAL '<gap>')".into()),
    };
    let windowed = kind != WindowKind::Continuous;
    if !windowed {
        if let Some(h) = &select.having {
            return Err(format!(
                "HAVING{} on a GROUP BY without a window is not supported: the output is an upsert stream, and a group that stops matching would need a retraction",
                at(h)
            ));
        }
    }
    if keys.is_empty() {
        return Err("GROUP BY needs at least one key column besides the window".into());
    }
    let colocation = options
        .colocation
        .clone()
        .unwrap_or_else(|| schema.declared_colocation());
    colocation.check_window_keys(&keys, &kind)?;
    let two_phase = colocation.spans_partitions(&keys);

    // Aggregates anywhere in SELECT or HAVING become window outputs `__agg<i>`.
    let mut aggs = Aggregates::default();
    let mut output = Vec::new();
    for item in &select.projection {
        let (expr, name) = match item {
            SelectItem::UnnamedExpr(e) => (
                e.clone(),
                match e {
                    Expr::Identifier(i) => ident_name(i),
                    other => other.to_string(),
                },
            ),
            SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), ident_name(alias)),
            other => {
                return Err(format!(
                    "`{other}`{} is not supported with GROUP BY: name the columns",
                    at(other)
                ))
            }
        };
        let expr = with_key_columns(aggs.rewrite(expr, schema)?, &computed_keys);
        check_grouped(&expr, &keys, windowed)?;
        output.push((expr.to_string(), name));
    }
    let having = match &select.having {
        Some(h) => {
            let h = with_key_columns(aggs.rewrite(h.clone(), schema)?, &computed_keys);
            check_grouped(&h, &keys, windowed)?;
            Some(h.to_string())
        }
        None => None,
    };
    if aggs.configs.is_empty() {
        return Err("a windowed query needs at least one aggregate (count(*), avg(x), ...)".into());
    }
    // The window's input: the events, and the computed keys.
    let events = schema.arrow_schema();
    let mut fields: Vec<datafusion::arrow::datatypes::FieldRef> =
        events.fields().iter().cloned().collect();
    for (e, name) in &computed_keys {
        let c = crate::expr::compile_expr(&e.to_string(), &events)
            .map_err(|why| format!("GROUP BY{}: {why}", at(e)))?;
        let dt = c.data_type(&events).map_err(|why| why.to_string())?;
        if is_nested_type(&dt) {
            return Err(format!(
                "GROUP BY `{e}`{} is a {dt}: a key is one scalar value; group by a field \
                 inside it (`{e}['...']`, `{e}[1]`) or a function of it",
                at(e)
            ));
        }
        fields.push(std::sync::Arc::new(
            datafusion::arrow::datatypes::Field::new(name, dt, true),
        ));
    }
    let input = std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    for (cfg, origin) in aggs.configs.iter().zip(&aggs.origins) {
        check_scalar_argument(cfg, origin, &input)?;
    }
    // Plan every aggregate now, so that an argument DataFusion cannot plan is refused here.
    for (cfg, (text, pos, _)) in aggs.configs.iter().zip(&aggs.origins) {
        AggregateSet::new(std::slice::from_ref(cfg), &input).map_err(|e| {
            format!(
                "`{text}`{pos}: {}",
                e.trim_start_matches(&format!("aggregate `{text}`: "))
            )
        })?;
    }
    Ok(SqlPlan {
        table: table.to_string(),
        filter: select.selection.as_ref().map(|w| w.to_string()),
        window: WindowConfig {
            kind,
            keys,
            time_column,
            max_out_of_orderness_ms: options.max_out_of_orderness_ms,
            allowed_lateness_ms: options.allowed_lateness_ms,
            late_policy: options.late_policy,
            aggregates: aggs.configs,
            // `[watermark]`'s guards are set on every window by the pipeline.
            guards: Default::default(),
        },
        having,
        output,
        input_columns: events.fields().iter().map(|f| f.name().clone()).collect(),
        computed_keys: computed_keys
            .into_iter()
            .map(|(e, n)| (e.to_string(), n))
            .collect(),
        two_phase,
    })
}

/// The column name of GROUP BY expression `g`: the alias the SELECT list gives the same
/// expression, or its SQL text.
fn key_name(g: &Expr, projection: &[SelectItem]) -> String {
    let text = g.to_string();
    projection
        .iter()
        .find_map(|item| match item {
            SelectItem::ExprWithAlias { expr, alias } if expr.to_string() == text => {
                Some(ident_name(alias))
            }
            _ => None,
        })
        .unwrap_or(text)
}

/// `expr` with each computed GROUP BY expression replaced by its key column.
fn with_key_columns(mut expr: Expr, keys: &[(Expr, String)]) -> Expr {
    if keys.is_empty() {
        return expr;
    }
    let _ = visit_expressions_mut(&mut expr, |e| {
        let text = e.to_string();
        if let Some((_, name)) = keys.iter().find(|(k, _)| k.to_string() == text) {
            *e = Expr::Identifier(Ident::with_quote('"', name.clone()));
        }
        ControlFlow::<()>::Continue(())
    });
    expr
}

fn is_nested_type(dt: &datafusion::arrow::datatypes::DataType) -> bool {
    use datafusion::arrow::datatypes::DataType::*;
    matches!(
        dt,
        List(_)
            | LargeList(_)
            | FixedSizeList(_, _)
            | ListView(_)
            | LargeListView(_)
            | Map(_, _)
            | Struct(_)
    )
}

/// An aggregate reads one value per event: a list, map or struct argument is refused (except
/// by the aggregates that take any value: count, array_agg, first_value, last_value), with
/// how to extract a scalar first.
fn check_scalar_argument(
    cfg: &AggregateConfig,
    (text, pos, arg): &(String, String, Option<String>),
    input: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<(), String> {
    if matches!(
        cfg.function.as_str(),
        "count" | "array_agg" | "first_value" | "last_value"
    ) {
        return Ok(());
    }
    let Some(arg) = arg else {
        return Ok(());
    };
    let Ok(e) = crate::expr::compile_expr(arg, input) else {
        return Ok(()); // the aggregate planner reports it
    };
    let Ok(dt) = e.data_type(input) else {
        return Ok(());
    };
    if !is_nested_type(&dt) {
        return Ok(());
    }
    let what = match dt {
        datafusion::arrow::datatypes::DataType::Struct(_) => "a struct",
        datafusion::arrow::datatypes::DataType::Map(_, _) => "a map",
        _ => "a list",
    };
    Err(format!(
        "`{text}`{pos}: its argument `{arg}` is {what} ({dt}), and {} aggregates one scalar \
         per event: extract one first, in the call (`{arg}[1]`, `{arg}['field']`, \
         `array_length({arg})`) or in a projection before the window",
        cfg.function
    ))
}

/// `TUMBLE(ts, size)`, `HOP(ts, slide, size)` or `SESSION(ts, gap)`: the time column and the
/// window kind. Sizes are INTERVALs; every error names the argument and its position.
fn window_call(
    fname: &str,
    f: &datafusion::sql::sqlparser::ast::Function,
    g: &Expr,
    schema: &SchemaConfig,
) -> Result<(String, WindowKind), String> {
    let upper = fname.to_uppercase();
    let usage = match fname {
        "tumble" => "TUMBLE(<time column>, INTERVAL '<size>')",
        "hop" => "HOP(<time column>, INTERVAL '<slide>', INTERVAL '<size>')",
        _ => "SESSION(<time column>, INTERVAL '<gap>')",
    };
    let args = plain_args(&f.args).ok_or_else(|| format!("{upper}{} takes {usage}", at(g)))?;
    let want = if fname == "hop" { 3 } else { 2 };
    if args.len() != want {
        return Err(format!(
            "{upper}{} takes {want} arguments, {usage}; got {}",
            at(g),
            args.len()
        ));
    }
    let Expr::Identifier(ts) = &args[0] else {
        return Err(format!(
            "{upper}{}: the first argument `{}` must be the time column, as in {usage}",
            at(&args[0]),
            args[0]
        ));
    };
    let ts_field = field_of(schema, &ts.value)
        .ok_or_else(|| format!("unknown column `{}` in {upper}{}", ts.value, at_ident(ts)))?;
    if ts_field.field_type != FieldType::Timestamp {
        return Err(format!(
            "{upper} on `{}`{}: a window needs a timestamp column, `{}` is {:?}",
            ts.value,
            at_ident(ts),
            ts_field.name,
            ts_field.field_type
        ));
    }
    let kind = match fname {
        "tumble" => WindowKind::Tumble {
            size_ms: interval_ms(&args[1], "window size")?,
        },
        "hop" => WindowKind::Hop {
            slide_ms: interval_ms(&args[1], "hop slide")?,
            size_ms: interval_ms(&args[2], "hop size")?,
        },
        _ => WindowKind::Session {
            gap_ms: interval_ms(&args[1], "session gap")?,
        },
    };
    // The window rules are the kind's own (`WindowKind::check`, shared with pipeline.toml and
    // the builder); here each is told at its argument or at the call.
    if let Some(rule) = kind.check().into_iter().next() {
        return Err(match rule {
            WindowRuleError::NotPositive { setting, .. } => {
                let arg = match setting {
                    WindowSetting::HopSize => &args[2],
                    _ => &args[1],
                };
                format!("{} `{arg}`{} must be positive", setting.name(), at(arg))
            }
            WindowRuleError::SizeBelowSlide { size_ms, slide_ms } => format!(
                "HOP{}: size {size_ms} ms is shorter than slide {slide_ms} ms, which would leave events in no window; the size must be at least the slide",
                at(g)
            ),
            WindowRuleError::TooManyHops {
                slide_ms,
                size_ms,
                hops,
            } => format!(
                "HOP{}: slide {slide_ms} ms puts each event in {hops} windows of {size_ms} ms; at most {MAX_HOPS_PER_EVENT} are allowed (raise the slide)",
                at(g)
            ),
        });
    }
    Ok((ts_field.name.clone(), kind))
}

fn field_of(schema: &SchemaConfig, name: &str) -> Option<FieldConfig> {
    schema
        .columns()
        .into_iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
}

fn is_scalar_function(name: &str) -> bool {
    thread_local! {
        static NAMES: std::collections::HashSet<String> = {
            let state = datafusion::execution::context::SessionContext::new().state();
            let mut names: std::collections::HashSet<String> = state.scalar_functions().keys().cloned().collect();
            for f in state.scalar_functions().values() {
                names.extend(f.aliases().iter().cloned());
            }
            names
        };
    }
    NAMES.with(|n| n.contains(name))
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn plain_args(args: &FunctionArguments) -> Option<Vec<Expr>> {
    let FunctionArguments::List(list) = args else {
        return None;
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// `INTERVAL '1' MINUTE`, `INTERVAL '90 seconds'`, ... in milliseconds; `what` names the
/// argument in errors.
fn interval_ms(e: &Expr, what: &str) -> Result<i64, String> {
    let Expr::Interval(i) = e else {
        return Err(format!(
            "{what} `{e}`{} must be an INTERVAL, e.g. INTERVAL '1' MINUTE",
            at(e)
        ));
    };
    let mut text = i.value.to_string().trim_matches('\'').to_ascii_lowercase();
    if let Some(unit) = &i.leading_field {
        text = format!("{text} {}", unit.to_string().to_ascii_lowercase());
    }
    let mut parts = text.split_whitespace();
    let (Some(n), unit, None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "{what} `{e}`{}: expected INTERVAL '<n>' <unit>",
            at(e)
        ));
    };
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{what} `{e}`{}: `{n}` is not a whole number", at(e)))?;
    let unit_ms = match unit.unwrap_or("second").trim_end_matches('s') {
        "millisecond" | "m" if unit == Some("ms") => 1,
        "millisecond" => 1,
        "second" | "sec" => 1_000,
        "minute" | "min" => 60_000,
        "hour" | "h" => 3_600_000,
        "day" => 86_400_000,
        other => return Err(format!("{what} `{e}`{}: unknown unit `{other}`", at(e))),
    };
    n.checked_mul(unit_ms).ok_or_else(|| {
        format!(
            "{what} `{e}`{}: {n} {} does not fit in milliseconds",
            at(e),
            unit.unwrap_or("second")
        )
    })
}

#[derive(Default)]
struct Aggregates {
    configs: Vec<AggregateConfig>,
    /// Each aggregate's SQL text, position and first argument, for planning errors.
    origins: Vec<(String, String, Option<String>)>,
    by_text: HashMap<String, String>,
}

impl Aggregates {
    /// Replace every aggregate call in `expr` by the identifier of its window output column.
    fn rewrite(&mut self, mut expr: Expr, schema: &SchemaConfig) -> Result<Expr, String> {
        let mut error = None;
        let _ = visit_expressions_mut(&mut expr, |e| {
            let Expr::Function(f) = e else {
                return ControlFlow::<()>::Continue(());
            };
            let fname = f
                .name
                .0
                .iter()
                .map(|p| match p {
                    ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".");
            let Some(udaf) = find_aggregate(&fname) else {
                if !is_scalar_function(&fname) {
                    error = Some(format!("unknown function `{fname}`{}", at(f)));
                    return ControlFlow::Break(());
                }
                return ControlFlow::Continue(());
            };
            if f.over.is_some() {
                error = Some(format!(
                    "window function `{f}`{} (OVER) is not supported in a streaming query",
                    at(f)
                ));
                return ControlFlow::Break(());
            }
            let text = f.to_string();
            let name = match self.by_text.get(&text) {
                Some(n) => n.clone(),
                None => {
                    let FunctionArguments::List(list) = &f.args else {
                        error = Some(format!("aggregate `{f}`{} needs arguments", at(f)));
                        return ControlFlow::Break(());
                    };
                    if let Some(e) = unknown_column_in(f, schema) {
                        error = Some(e);
                        return ControlFlow::Break(());
                    }
                    let distinct = list
                        .duplicate_treatment
                        .is_some_and(|d| d.to_string().eq_ignore_ascii_case("distinct"));
                    let (column, sql) = match list.args.as_slice() {
                        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]
                            if udaf.name() == "count" && f.filter.is_none() =>
                        {
                            (None, None)
                        }
                        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(i))), ..] => (
                            field_of(schema, &i.value).map(|c| c.name.clone()),
                            Some(text.clone()),
                        ),
                        _ => (None, Some(text.clone())),
                    };
                    let name = format!("__agg{}", self.configs.len());
                    self.configs.push(AggregateConfig {
                        function: udaf.name().to_string(),
                        column,
                        alias: Some(name.clone()),
                        distinct,
                        sql,
                    });
                    let first = match list.args.first() {
                        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => Some(e.to_string()),
                        _ => None,
                    };
                    self.origins.push((text.clone(), at(f), first));
                    self.by_text.insert(text, name.clone());
                    name
                }
            };
            *e = Expr::Identifier(Ident::new(name));
            ControlFlow::Continue(())
        });
        match error {
            Some(e) => Err(e),
            None => Ok(expr),
        }
    }
}

/// The first identifier inside an aggregate call that is not an input column, as an error.
fn unknown_column_in(
    f: &datafusion::sql::sqlparser::ast::Function,
    schema: &SchemaConfig,
) -> Option<String> {
    let mut bad = None;
    let mut call = Expr::Function(f.clone());
    let _ = visit_expressions_mut(&mut call, |e| {
        if let Expr::Identifier(i) = e {
            if i.value.starts_with("__agg") {
                bad = Some(format!(
                    "aggregate `{}`{} has an aggregate among its arguments, which is not supported",
                    f.name,
                    at(f)
                ));
                return ControlFlow::Break(());
            }
            if field_of(schema, &i.value).is_none() {
                bad = Some(format!(
                    "unknown column `{}` in `{f}`{}",
                    i.value,
                    at_ident(i)
                ));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    bad
}

/// After aggregates are rewritten, a SELECT or HAVING expression may only use group keys,
/// window bounds and aggregate outputs.
fn check_grouped(expr: &Expr, keys: &[String], windowed: bool) -> Result<(), String> {
    let mut bad = None;
    let mut e = expr.clone();
    let _ = visit_expressions_mut(&mut e, |e| {
        if let Expr::Identifier(i) = e {
            let v = &i.value;
            let bound =
                v.eq_ignore_ascii_case("window_start") || v.eq_ignore_ascii_case("window_end");
            if bound && !windowed {
                bad = Some(format!(
                    "`{v}`{}: a GROUP BY without a window has no window bounds",
                    at_ident(i)
                ));
                return ControlFlow::Break(());
            }
            let ok =
                keys.iter().any(|k| k.eq_ignore_ascii_case(v)) || bound || v.starts_with("__agg");
            if !ok {
                bad = Some(format!(
                    "column `{v}`{} must be in GROUP BY or inside an aggregate",
                    at_ident(i)
                ));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    bad.map_or(Ok(()), Err)
}
