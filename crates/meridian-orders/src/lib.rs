//! Orders model: the order state machine, allocation across warehouses, and the batch
//! planner that turns a batch of order requests into one set of writes.
//!
//! No IO here. A store loads a [`Snapshot`] of the rows a batch touches (inside its write
//! transaction, with those rows locked), calls [`plan_batch`], and writes the returned
//! [`WriteSet`] in the same transaction. Because the planner applies each order to the
//! snapshot before the next, a batch can never allocate more than the snapshot holds.

mod allocate;
mod model;
mod plan;

pub use allocate::{AllocationStrategy, allocate};
pub use model::{
    Address, Allocation, Customer, MAX_LINES, Order, OrderAction, OrderLine, OrderLineRequest,
    OrderRequest, OrderStatus, TransitionError,
};
pub use plan::{
    IdempotencyRecord, PlaceError, PlaceOrder, PlaceOutcome, ProductRef, Shortage, Snapshot,
    StockChange, TransitionFailure, Transitioned, WriteSet, plan_batch, transition,
};
