//! The handlers of `/v1`. Each checks its scope first, then its input, then calls the
//! coordinator; `docs/API.md` describes them for clients.

use super::auth::Scope;
use super::error::{ApiError, ErrorBody};
use super::input::{self, PaymentRequest, SagaRequest};
use super::{Api, MAX_WAIT};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kessai_coordinator::machine::Actor;
use kessai_coordinator::{GenericSaga, SagaFilter, SagaState, SagaSummary, SagaView, Submitted};
use kessai_messages::SagaId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

type ApiState = State<Arc<Api>>;

/// The answer to a submission.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubmissionBody {
    #[schema(value_type = String)]
    pub saga_id: SagaId,
    /// False when the idempotency key named an existing saga (same body): nothing new
    /// was created.
    pub created: bool,
}

/// 202 + `Location` for a new saga, 200 for the same request again.
fn submitted(s: Submitted) -> Response {
    let body = Json(SubmissionBody {
        saga_id: s.saga_id,
        created: s.created,
    });
    let location = format!("/v1/sagas/{}", s.saga_id);
    let status = if s.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, [(header::LOCATION, location)], body).into_response()
}

/// Submit a payment: one saga over balance, card-issuer and bank.
#[utoipa::path(
    post, path = "/v1/payments", tag = "sagas",
    request_body = PaymentRequest,
    responses(
        (status = 202, description = "A new saga", body = SubmissionBody),
        (status = 200, description = "The same payment_id and body again: the original saga", body = SubmissionBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The same payment_id with another body", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["submit"]))
)]
pub(super) async fn submit_payment(
    State(api): ApiState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = api.auth.require(&headers, Scope::Submit)?;
    let payment = input::json_body::<PaymentRequest>(&headers, &body?)?.into_payment()?;
    let s = api
        .coordinator
        .submit_payment_as(Some(&who.name), &payment, None)
        .await?;
    Ok(submitted(s))
}

/// Submit a generic TCC saga over any participants the coordinator knows.
#[utoipa::path(
    post, path = "/v1/sagas", tag = "sagas",
    request_body = SagaRequest,
    params(("Idempotency-Key" = String, Header, description = "1 to 128 characters; the same key and body again return the original saga")),
    responses(
        (status = 202, description = "A new saga", body = SubmissionBody),
        (status = 200, description = "The same key and body again: the original saga", body = SubmissionBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The same key with another body", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "Invalid body, unknown participant or payload it refuses", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["submit"]))
)]
pub(super) async fn submit_saga(
    State(api): ApiState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = api.auth.require(&headers, Scope::Submit)?;
    let key = input::idempotency_key(&headers)?;
    let request: SagaRequest = input::json_body(&headers, &body?)?;
    if request.branches.is_empty() || request.branches.len() > GenericSaga::MAX_BRANCHES {
        return Err(ApiError::invalid(
            "branches",
            format!("a saga needs 1 to {} branches", GenericSaga::MAX_BRANCHES),
        ));
    }
    for (i, b) in request.branches.iter().enumerate() {
        if !api.participants.contains(&b.participant) {
            let known: Vec<&str> = api.participants.iter().map(String::as_str).collect();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_participant",
                format!("no participant {:?} (known: {})", b.participant, known.join(", ")),
            )
            .field(format!("branches[{i}].participant")));
        }
    }
    if let Some(ms) = request.try_timeout_ms
        && !(1..=GenericSaga::MAX_TRY_TIMEOUT_MS).contains(&ms)
    {
        return Err(ApiError::invalid(
            "try_timeout_ms",
            format!("try_timeout_ms must be 1 to {}", GenericSaga::MAX_TRY_TIMEOUT_MS),
        ));
    }
    let mut generic = json!({
        "key": key,
        "branches": request.branches.iter().map(|b| json!({"participant": b.participant, "payload": b.payload})).collect::<Vec<_>>(),
    });
    if let Some(ms) = request.try_timeout_ms {
        generic["try_timeout_ms"] = json!(ms);
    }
    let s = api
        .coordinator
        .submit_saga_as(Some(&who.name), GenericSaga::KIND, &generic, None)
        .await
        .map_err(|e| match e {
            // The participant's own check of a payload: the client's mistake.
            kessai_coordinator::Error::Invalid(m) => ApiError::invalid("branches", m),
            e => e.into(),
        })?;
    Ok(submitted(s))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SagaQuery {
    /// Answer once the saga is over or this much time passed (at most 30s): `5s`, `500ms`.
    wait: Option<String>,
}

fn parse_id(id: &str) -> Result<SagaId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_saga_id",
            "a saga id is a UUID such as 0193d2a4-7c1e-7b3a-9f1e-1c2d3e4f5a6b",
        )
        .field("id")
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

/// A saga: state, branches, timeline; optionally waiting until it is over.
#[utoipa::path(
    get, path = "/v1/sagas/{id}", tag = "sagas",
    params(("id" = String, Path, description = "The saga id"), SagaQuery),
    responses(
        (status = 200, body = SagaView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such saga, or not one this client may read", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["read"]), ("bearer" = ["submit"]))
)]
pub(super) async fn saga(
    State(api): ApiState,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<SagaQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let who = api.auth.principal(&headers)?;
    if !who.has(Scope::Read) && !who.has(Scope::Submit) {
        return Err(ApiError::forbidden("reading sagas needs the read or submit scope"));
    }
    let q = query(q)?;
    let id = parse_id(&id)?;
    let wait = q
        .wait
        .map(|w| {
            crate::units::parse_duration(&w)
                .ok()
                .filter(|d| *d <= MAX_WAIT)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        format!("wait must be a duration of at most {MAX_WAIT:?}, e.g. 5s or 500ms"),
                    )
                    .field("wait")
                })
        })
        .transpose()?;
    // Whose saga it is decides before any wait, so a client cannot even time
    // another's. (`read` sees every saga: no extra read for it.)
    if !who.has(Scope::Read) {
        let owner = api.coordinator.client_of(id).await?;
        if owner.flatten().as_deref() != Some(&*who.name) {
            return Err(ApiError::saga_not_found(id));
        }
    }
    // `wait` reads the state first and returns at once for an unknown or finished
    // saga, registering nothing that outlives this request.
    if let Some(wait) = wait {
        api.coordinator.wait(id, wait).await?;
    }
    let Some(mut view) = api.coordinator.saga(id).await? else {
        return Err(ApiError::saga_not_found(id));
    };
    view.trace_url = api.trace_url(view.trace_id.as_deref());
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// `trying`, `confirming`, `cancelling`, `confirmed`, `cancelled`, or `stuck`.
    state: Option<String>,
    stuck: Option<bool>,
    /// `payment`, `generic`, …
    kind: Option<String>,
    /// The client (token name) that submitted the sagas.
    client: Option<String>,
    /// Created at or after (Unix ms).
    created_after: Option<i64>,
    /// Created before (Unix ms).
    created_before: Option<i64>,
    /// 1 to 500 (default 50).
    limit: Option<u64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only the sagas of this payment: exact match on its idempotency key, unscoped
    /// or scoped to any configured client (the other filters still apply).
    payment_id: Option<String>,
}

/// A page of sagas, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagaPage {
    pub sagas: Vec<SagaSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

pub const MAX_PAGE: u64 = 500;

/// Sagas, newest first, filtered; for SREs.
#[utoipa::path(
    get, path = "/v1/sagas", tag = "operations",
    params(ListQuery),
    responses(
        (status = 200, body = SagaPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["read"]))
)]
pub(super) async fn list(
    State(api): ApiState,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    api.auth.require(&headers, Scope::Read)?;
    let q = query(q)?;
    let bad =
        |field: &str, message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message).field(field);
    let mut filter = SagaFilter {
        stuck: q.stuck,
        kind: q.kind,
        client: q.client,
        created_after_ms: q.created_after,
        created_before_ms: q.created_before,
        ..SagaFilter::default()
    };
    match q.state.as_deref() {
        None => {}
        Some("stuck") => filter.stuck = Some(true),
        Some(s) => {
            filter.state = Some(SagaState::parse(s).ok_or_else(|| {
                bad(
                    "state",
                    format!("unknown state {s:?}: trying, confirming, cancelling, confirmed, cancelled or stuck"),
                )
            })?)
        }
    }
    if let Some(cursor) = &q.cursor {
        filter.before = Some(
            cursor
                .parse()
                .map_err(|_| bad("cursor", "not a cursor from this API".into()))?,
        );
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad("limit", format!("limit must be 1 to {MAX_PAGE}")));
    }
    let mut sagas = match &q.payment_id {
        Some(payment_id) => {
            input::check_id("payment_id", payment_id).map_err(|e| bad("payment_id", e.message))?;
            let clients: Vec<&str> = api.auth.names().collect();
            api.coordinator
                .sagas_of_payment(payment_id, &clients, &filter, limit + 1)
                .await?
        }
        None => api.coordinator.list(&filter, limit + 1).await?,
    };
    let next_cursor = if sagas.len() as u64 > limit {
        sagas.truncate(limit as usize);
        sagas.last().map(|s| s.id.to_string())
    } else {
        None
    };
    Ok(Json(SagaPage { sagas, next_cursor }).into_response())
}

/// `POST /v1/sagas/{id}/retry`'s optional body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Why, for the timeline.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetryBody {
    #[schema(value_type = String)]
    pub saga_id: SagaId,
    pub state: SagaState,
    /// Commands resent: one per branch the saga waits on.
    pub resent: usize,
}

/// Resend at once what the saga waits on (operator action, recorded in the timeline).
#[utoipa::path(
    post, path = "/v1/sagas/{id}/retry", tag = "operations",
    params(("id" = String, Path, description = "The saga id")),
    request_body(content = Option<RetryRequest>, description = "Optional: why"),
    responses(
        (status = 200, body = RetryBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The saga is already over", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn retry(
    State(api): ApiState,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = api.auth.require(&headers, Scope::Admin)?;
    let id = parse_id(&id)?;
    let body = body?;
    let request: RetryRequest = if body.is_empty() {
        RetryRequest::default()
    } else {
        input::json_body(&headers, &body)?
    };
    let reason = request.reason.unwrap_or_else(|| "operator retry".into());
    if reason.chars().count() > 512 {
        return Err(ApiError::invalid("reason", "reason is at most 512 characters"));
    }
    let Some(view) = api.coordinator.saga(id).await? else {
        return Err(ApiError::saga_not_found(id));
    };
    if view.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "saga_finished",
            format!(
                "saga {id} is already {}; there is nothing to resend",
                view.state.as_str()
            ),
        ));
    }
    api.coordinator
        .retry_by(id, &reason, Actor::NamedOperator(who.name.to_string()))
        .await?;
    tracing::info!(saga.id = %id, operator = %who.name, reason, "operator retry");
    let after = api.coordinator.saga(id).await?.unwrap_or(view);
    let resent = after
        .branches
        .iter()
        .filter(|b| matches!(b.state.as_str(), "trying" | "confirming" | "cancelling"))
        .count();
    Ok(Json(RetryBody {
        saga_id: id,
        state: after.state,
        resent,
    })
    .into_response())
}

/// What this coordinator did so far and its admission state.
#[utoipa::path(
    get, path = "/v1/stats", tag = "operations",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
pub(super) async fn stats(State(api): ApiState, headers: HeaderMap) -> Result<Response, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    api.auth.require(&headers, Scope::Read)?;
    let (stats, admission) = (api.coordinator.stats(), api.coordinator.admission());
    Ok(Json(json!({
        "commands_published": stats.commands_published.load(Relaxed),
        "resends": stats.resends.load(Relaxed),
        "unfinished": admission.unfinished(),
        "admission_bound": admission.bound(),
        "refused": admission.refused(),
        "completion_rate_per_s": admission.rate(),
        "waiters": api.coordinator.waiters(),
        "sagas": api.coordinator.state_counts().await?,
    }))
    .into_response())
}
