//! The `sql` policy: a DataFusion predicate over a trace's spans, in the trace archive's schema
//! (the columns `tracepipe query` reads: `name`, `kind`, `duration_ns`, `status_code`,
//! `service_name`, `attributes['k']`, `attributes_int['k']`, `resource_attributes['k']`, …). A
//! trace is kept when any of its spans matches.
//!
//! The predicate is parsed and planned once, when the configuration is validated (a bad
//! predicate is a configuration error). Deciders evaluate it on one Arrow record batch holding
//! every trace due at that moment (converted straight from the held protobuf), never per span
//! through SQL text.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

/// A planned predicate.
pub struct SqlPredicate {
    /// As written.
    pub text: String,
    expr: Arc<dyn PhysicalExpr>,
}

impl std::fmt::Debug for SqlPredicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlPredicate").field("text", &self.text).finish()
    }
}

/// Why a predicate does not plan: the message, and the position DataFusion's SQL parser gave
/// (line, column inside the predicate), when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// What is wrong, on one line.
    pub message: String,
    /// (line, column) inside the SQL text.
    pub at: Option<(u64, u64)>,
}

fn position(msg: &str) -> Option<(u64, u64)> {
    let l = msg.find("Line: ")? + 6;
    let line: u64 = msg[l..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let c = msg.find("Column: ")? + 8;
    let col: u64 = msg[c..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((line, col))
}

impl SqlPredicate {
    /// Parses and plans `text` against the archive schema.
    pub fn plan(text: &str) -> Result<SqlPredicate, PlanError> {
        let err = |e: &dyn std::fmt::Display| {
            let m = e.to_string().lines().next().unwrap_or_default().to_owned();
            PlanError { at: position(&m), message: m }
        };
        let schema = tracepipe_pipeline::archive::schema::schema();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| err(&e))?;
        let ctx = SessionContext::new();
        let expr = ctx.parse_sql_expr(text, &df_schema).map_err(|e| err(&e))?;
        let expr = ctx.create_physical_expr(expr, &df_schema).map_err(|e| err(&e))?;
        match expr.data_type(&schema) {
            Ok(DataType::Boolean) => {}
            Ok(other) => return Err(PlanError { message: format!("the predicate is {other}, not a boolean"), at: None }),
            Err(e) => return Err(err(&e)),
        }
        Ok(SqlPredicate { text: text.to_owned(), expr })
    }

    /// The rows of `batch` that match (null counts as no match).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, String> {
        let v = self.expr.evaluate(batch).map_err(|e| e.to_string())?;
        let a = v.into_array(batch.num_rows()).map_err(|e| e.to_string())?;
        a.as_any().downcast_ref::<BooleanArray>().cloned().ok_or_else(|| "predicate did not give booleans".to_owned())
    }
}
