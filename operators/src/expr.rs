//! Filter and project: DataFusion `PhysicalExpr`s evaluated batch by batch.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, Operator, OFFSET_COLUMN};

/// Compile a SQL expression over `schema` into a `PhysicalExpr`. Errors name the expression.
pub fn compile_expr(sql: &str, schema: &SchemaRef) -> Result<Arc<dyn PhysicalExpr>, String> {
    let ctx = SessionContext::new();
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
    let expr = ctx
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| format!("`{sql}`: {}", strip(e.to_string())))?;
    // Simplified as a query's expressions are: some functions (coalesce, nvl, ...) exist
    // only as rewrites and fail when evaluated unsimplified.
    let simplify = SimplifyContext::builder()
        .with_schema(Arc::new(df_schema.clone()))
        .with_config_options(Arc::clone(ctx.state().config_options()))
        .build();
    let simplifier = ExprSimplifier::new(simplify);
    let expr = simplifier
        .coerce(expr, &df_schema)
        .and_then(|e| simplifier.simplify(e))
        .map_err(|e| format!("`{sql}`: {}", strip(e.to_string())))?;
    ctx.create_physical_expr(expr, &df_schema)
        .map_err(|e| format!("`{sql}`: {}", strip(e.to_string())))
}

fn strip(msg: String) -> String {
    msg.split("\n").next().unwrap_or_default().to_string()
}

/// Keeps the rows for which a predicate is true (null counts as false).
pub struct FilterOperator {
    name: String,
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
}

impl FilterOperator {
    pub fn new(name: &str, predicate_sql: &str, input: SchemaRef) -> Result<Self, String> {
        let predicate = compile_expr(predicate_sql, &input)?;
        let dt = predicate.data_type(&input).map_err(|e| e.to_string())?;
        if dt != datafusion::arrow::datatypes::DataType::Boolean {
            return Err(format!(
                "`{predicate_sql}` is {dt}, a filter needs a boolean expression"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            predicate,
            schema: input,
        })
    }
}

impl Operator for FilterOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let mask = self
            .predicate
            .evaluate(&batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| WeirError::operator(&self.name, e))?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                WeirError::operator(&self.name, "predicate did not evaluate to booleans")
            })?;
        let mask = if mask.null_count() > 0 {
            // null is not true: keep only rows whose predicate is true
            eq(mask, &BooleanArray::new_scalar(true))
                .map_err(|e| WeirError::operator(&self.name, e))?
        } else {
            mask.clone()
        };
        let kept = mask.true_count();
        emit.count_filtered((batch.num_rows() - kept) as u64);
        if kept == batch.num_rows() {
            emit.emit(batch);
        } else if kept > 0 {
            emit.emit(
                filter_record_batch(&batch, &mask)
                    .map_err(|e| WeirError::operator(&self.name, e))?,
            );
        }
        Ok(())
    }
}

/// Computes named expressions; the offset column is carried through.
pub struct ProjectOperator {
    name: String,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    offset_index: Option<usize>,
    schema: SchemaRef,
}

impl ProjectOperator {
    /// `columns`: (SQL expression, output name).
    pub fn new(name: &str, columns: &[(String, String)], input: SchemaRef) -> Result<Self, String> {
        let mut exprs = Vec::new();
        let mut fields = Vec::new();
        for (sql, alias) in columns {
            let e = compile_expr(sql, &input)?;
            let dt = e.data_type(&input).map_err(|e| e.to_string())?;
            let nullable = e.nullable(&input).map_err(|e| e.to_string())?;
            fields.push(Field::new(alias, dt, nullable));
            exprs.push(e);
        }
        let offset_index = input.index_of(OFFSET_COLUMN).ok();
        if let Some(i) = offset_index {
            fields.push(input.field(i).clone());
        }
        Ok(Self {
            name: name.to_string(),
            exprs,
            offset_index,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

impl Operator for ProjectOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let mut columns = Vec::with_capacity(self.exprs.len() + 1);
        for e in &self.exprs {
            let col = e
                .evaluate(&batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(|err| WeirError::operator(&self.name, err))?;
            columns.push(col);
        }
        if let Some(i) = self.offset_index {
            columns.push(batch.column(i).clone());
        }
        emit.emit(
            RecordBatch::try_new(self.schema.clone(), columns)
                .map_err(|e| WeirError::operator(&self.name, e))?,
        );
        Ok(())
    }
}
