//! The `manual` carrier's shipping label: a 4 × 6 inch PDF page with the sender (the
//! warehouse), the recipient's address, what is in the parcel, and a Code 128 barcode of the
//! tracking number with the number printed under it.

use crate::Shipment;
use crate::code128::{self, Code128Error};
use crate::pdf::Page;

/// 4 × 6 inches, the common thermal label size, in points.
pub const WIDTH: f32 = 288.0;
pub const HEIGHT: f32 = 432.0;

/// The narrowest bar, in points (0.375 mm: comfortably above what scanners need).
const MODULE: f32 = 1.06;
const MARGIN: f32 = 18.0;
/// The most item lines printed; the rest are summarized.
const MAX_ITEM_LINES: usize = 8;

/// Renders the label of `shipment`, whose barcode carries `tracking_number` (which must be
/// printable ASCII).
pub fn render(shipment: &Shipment, tracking_number: &str) -> Result<Vec<u8>, Code128Error> {
    let bars = code128::encode(tracking_number)?;
    let mut page = Page::default();
    let left = MARGIN;
    let mut y = HEIGHT - MARGIN - 14.0;

    page.text(
        left,
        y,
        14.0,
        &format!("{} - MERIDIAN", shipment.carrier.to_uppercase()),
    );
    y -= 8.0;
    page.rule(left, y, WIDTH - 2.0 * MARGIN);

    y -= 16.0;
    page.text(left, y, 8.0, "FROM");
    page.text(
        left + 40.0,
        y,
        10.0,
        &format!("Warehouse {}", shipment.warehouse_code),
    );

    y -= 22.0;
    page.text(left, y, 8.0, "SHIP TO");
    match &shipment.ship_to {
        Some(a) => {
            let mut lines: Vec<String> = Vec::new();
            lines.extend(a.name.clone());
            lines.push(a.line1.clone());
            lines.extend(a.line2.clone());
            let region = a
                .region
                .as_deref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            lines.push(format!("{} {}{region}", a.postal_code, a.city));
            lines.push(a.country.clone());
            for line in lines {
                page.text(left + 40.0, y, 12.0, &line);
                y -= 15.0;
            }
        }
        None => {
            page.text(left + 40.0, y, 12.0, "(no address on the order)");
            y -= 15.0;
        }
    }

    y -= 4.0;
    page.rule(left, y, WIDTH - 2.0 * MARGIN);
    y -= 14.0;
    page.text(left, y, 8.0, &format!("ORDER {}", shipment.order_id));
    y -= 11.0;
    page.text(left, y, 8.0, &format!("SHIPMENT {}", shipment.id));
    for item in shipment.items.iter().take(MAX_ITEM_LINES) {
        y -= 11.0;
        page.text(
            left,
            y,
            8.0,
            &format!("{} x {}  {}", item.quantity, item.sku, item.name),
        );
    }
    if shipment.items.len() > MAX_ITEM_LINES {
        y -= 11.0;
        let more = shipment.items.len() - MAX_ITEM_LINES;
        page.text(left, y, 8.0, &format!("... and {more} more"));
    }

    // The barcode, centred near the bottom, scaled down if the number is long.
    let modules: u32 = bars.iter().map(|w| u32::from(*w)).sum();
    let room = WIDTH - 2.0 * MARGIN;
    let module = MODULE.min(room / modules as f32);
    let mut x = (WIDTH - modules as f32 * module) / 2.0;
    let (bar_y, bar_height) = (MARGIN + 22.0, 70.0);
    for (i, w) in bars.iter().enumerate() {
        let width = f32::from(*w) * module;
        if i % 2 == 0 {
            page.rect(x, bar_y, width, bar_height);
        }
        x += width;
    }
    let text_x = (WIDTH - tracking_number.len() as f32 * 7.2) / 2.0;
    page.text(text_x.max(MARGIN), MARGIN + 6.0, 12.0, tracking_number);
    Ok(page.into_pdf(WIDTH, HEIGHT))
}

#[cfg(test)]
mod tests {
    use meridian_core::{OrderId, ShipmentId, TenantId, WarehouseId};
    use meridian_orders::Address;

    use super::*;
    use crate::{ShipmentItem, ShipmentStatus, manual_tracking_number};

    fn shipment() -> Shipment {
        let now = meridian_core::now();
        Shipment {
            id: ShipmentId::new(),
            tenant_id: TenantId::new(),
            order_id: OrderId::new(),
            warehouse_id: WarehouseId::new(),
            warehouse_code: "BER-1".parse().unwrap(),
            status: ShipmentStatus::Pending,
            carrier: "manual".into(),
            tracking_number: None,
            label_key: None,
            items: vec![ShipmentItem {
                sku: "TSHIRT-RED-M".parse().unwrap(),
                name: "T-shirt (red, M)".into(),
                quantity: 2,
            }],
            ship_to: Some(Address {
                name: Some("Ana Müller".into()),
                line1: "Invalidenstraße 117".into(),
                line2: None,
                city: "Berlin".into(),
                region: None,
                postal_code: "10115".into(),
                country: "DE".into(),
            }),
            detail: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn the_label_has_the_address_the_items_and_the_barcode() {
        let s = shipment();
        let tracking = manual_tracking_number(s.id);
        let pdf = render(&s, &tracking).unwrap();
        let text = String::from_utf8_lossy(&pdf);
        assert!(pdf.starts_with(b"%PDF-1.4"));
        for want in [
            "(Ana M\\374ller) Tj",
            "(Invalidenstra\\337e 117) Tj",
            "(10115 Berlin) Tj",
            "(Warehouse BER-1) Tj",
            "(2 x TSHIRT-RED-M  T-shirt \\(red, M\\)) Tj",
            &format!("({tracking}) Tj"),
        ] {
            assert!(text.contains(want), "missing {want}");
        }
        // One filled rectangle per bar (half the widths), plus the two rules.
        let bars = code128::encode(&tracking).unwrap().len().div_ceil(2);
        assert_eq!(text.matches(" re f").count(), bars + 2);
    }

    #[test]
    fn a_tracking_number_a_barcode_cannot_hold_is_refused() {
        assert!(render(&shipment(), "ÄÖÜ").is_err());
        assert!(render(&shipment(), "").is_err());
    }
}
