//! The `sql` policy in a build without the `archive` feature (no DataFusion): the type the policy
//! list names, never built — the configuration refuses `type: sql` with
//! [`tracepipe_config::not_in_this_build`], so no trace is ever evaluated against it.

/// A planned predicate; none exists in this build.
#[derive(Debug)]
pub struct SqlPredicate {
    /// As written.
    pub text: String,
}
