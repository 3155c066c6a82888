use meridian_core::{ErrorCode, OrderId, Sku, ValidationErrors};
use meridian_orders::{OrderAction, OrderStatus, PlaceError, Shortage, TransitionFailure};

/// Backend-neutral store errors. Backends translate driver errors into these at the seam;
/// the driver's message goes to the log, never to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("{what} {key} already exists")]
    AlreadyExists { what: &'static str, key: String },
    #[error("unknown sku(s): {}", .0.iter().map(Sku::as_str).collect::<Vec<_>>().join(", "))]
    UnknownSkus(Vec<Sku>),
    #[error("insufficient stock for sku(s): {}", .0.iter().map(|s| s.sku.as_str()).collect::<Vec<_>>().join(", "))]
    InsufficientStock(Vec<Shortage>),
    #[error("cannot {action} order {order}: it is {from}")]
    InvalidTransition {
        order: OrderId,
        from: OrderStatus,
        action: OrderAction,
    },
    /// A state machine other than the order's (a shipment's) forbids the change.
    #[error("{0}")]
    IllegalTransition(String),
    #[error("idempotency key {0:?} was already used with a different request body")]
    IdempotencyKeyReused(String),
    #[error("{0}")]
    StockConflict(String),
    /// The order is on hold: its shipments get no label and do not ship, and it is not
    /// fulfilled, until the hold is released.
    #[error("order {0} is on hold; release the hold first")]
    OrderOnHold(OrderId),
    #[error(transparent)]
    Validation(#[from] ValidationErrors),
    /// The backend cannot be reached or is shutting down; the operation did not happen.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bug or broken invariant; the message is for the log.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound { .. } => ErrorCode::NotFound,
            StoreError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            StoreError::UnknownSkus(_) => ErrorCode::UnknownSku,
            StoreError::InsufficientStock(_) => ErrorCode::InsufficientStock,
            StoreError::InvalidTransition { .. } | StoreError::IllegalTransition(_) => {
                ErrorCode::InvalidTransition
            }
            StoreError::IdempotencyKeyReused(_) => ErrorCode::IdempotencyKeyReused,
            StoreError::StockConflict(_) => ErrorCode::StockConflict,
            StoreError::OrderOnHold(_) => ErrorCode::OrderOnHold,
            StoreError::Validation(_) => ErrorCode::ValidationFailed,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn not_found(what: &'static str, key: impl ToString) -> Self {
        StoreError::NotFound {
            what,
            key: key.to_string(),
        }
    }

    pub fn already_exists(what: &'static str, key: impl ToString) -> Self {
        StoreError::AlreadyExists {
            what,
            key: key.to_string(),
        }
    }
}

impl From<PlaceError> for StoreError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::UnknownSkus(s) => StoreError::UnknownSkus(s),
            PlaceError::InsufficientStock(s) => StoreError::InsufficientStock(s),
            PlaceError::IdempotencyKeyReused(k) => StoreError::IdempotencyKeyReused(k),
            e @ PlaceError::MixedCurrencies(_) => {
                StoreError::Validation(ValidationErrors::single("lines", e.to_string()))
            }
        }
    }
}

impl StoreError {
    /// Translates a failed transition of `order`.
    pub fn from_transition(order: OrderId, e: TransitionFailure) -> Self {
        match e {
            TransitionFailure::Illegal(t) => StoreError::InvalidTransition {
                order,
                from: t.from,
                action: t.action,
            },
            e @ TransitionFailure::Inconsistent(..) => StoreError::Internal(e.to_string()),
        }
    }
}
