//! Fulfillment model: what happens to a confirmed order until its parcels are delivered.
//!
//! - [`Shipment`]: the units of one order that one warehouse ships, with the carrier, the
//!   tracking number and the stored label. [`plan_shipments`] makes one per warehouse
//!   allocation of a confirmed order, so an order split over two warehouses gets two.
//! - [`ShipmentStatus`] and [`transition`]: the state machine `pending → label_created →
//!   shipped → delivered`, with `exception` (a problem in transit, from `shipped`) and
//!   `canceled` (before shipping). [`transition`] is the only place a shipment's status
//!   changes, and it returns the `platform.fulfillment.shipment.*` event to write to the
//!   outbox in the same transaction.
//! - [`label`]: the `manual` carrier's label, a one-page PDF with the addresses and a
//!   Code 128 barcode ([`code128`]) of the tracking number, written by hand (no PDF crate).
//!
//! No IO, no async: a store loads, calls these, and writes the result in one transaction.

pub mod code128;
pub mod label;
mod model;
mod pdf;

pub use model::{
    IllegalShipmentTransition, Shipment, ShipmentItem, ShipmentStatus, all_shipped, created_event,
    label_created, manual_tracking_number, plan_shipments, shipment_event, transition,
};
