//! `meridian dev`: embedded defaults plus a demo tenant with products, warehouses and stock,
//! created the first time a data directory is used.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use meridian_catalog::{Attributes, NewProduct};
use meridian_core::{Money, TenantId};
use meridian_inventory::NewWarehouse;
use meridian_store::Store;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::server;

/// Kept in the data directory so that a restart of `meridian dev` prints the same key and
/// the same demo login.
#[derive(Serialize, Deserialize)]
struct DemoTenant {
    tenant_id: TenantId,
    api_key: String,
    /// The demo owner's login; absent in data directories made before users existed, and
    /// then created on the next start.
    #[serde(default)]
    user: Option<DemoUser>,
}

#[derive(Clone, Serialize, Deserialize)]
struct DemoUser {
    email: String,
    password: String,
}

const DEMO_EMAIL: &str = "demo@meridian.local";

async fn demo_user(store: &dyn Store, tenant: TenantId) -> Result<DemoUser> {
    let password = meridian_auth::password::generate();
    let hash = {
        let p = password.clone();
        tokio::task::spawn_blocking(move || meridian_auth::password::hash(&p)).await?
    };
    store
        .create_user(
            tenant,
            meridian_store::NewUser {
                email: DEMO_EMAIL.into(),
                password_hash: hash,
                role: meridian_store::Role::Owner,
            },
        )
        .await
        .context("cannot create the demo user")?;
    Ok(DemoUser {
        email: DEMO_EMAIL.into(),
        password,
    })
}

const WAREHOUSES: &[(&str, &str, i32)] = &[
    ("BER", "Berlin fulfillment center", 1),
    ("AMS", "Amsterdam hub", 2),
    ("NYC", "Newark warehouse", 3),
];

/// (sku, name, price in cents, colour, stock per warehouse)
const PRODUCTS: &[(&str, &str, i64, &str, [i64; 3])] = &[
    (
        "TSHIRT-BLK-M",
        "Organic T-shirt, black, M",
        2_500,
        "black",
        [120, 40, 60],
    ),
    (
        "TSHIRT-WHT-M",
        "Organic T-shirt, white, M",
        2_500,
        "white",
        [80, 0, 25],
    ),
    (
        "HOODIE-GRY-L",
        "Merino hoodie, grey, L",
        8_900,
        "grey",
        [15, 10, 0],
    ),
    (
        "SNEAKER-42",
        "Canvas sneaker, size 42",
        6_400,
        "white",
        [30, 12, 18],
    ),
    (
        "CAP-NAVY",
        "Baseball cap, navy",
        1_900,
        "navy",
        [200, 150, 90],
    ),
    (
        "MUG-ENAMEL",
        "Enamel camping mug",
        1_200,
        "green",
        [0, 60, 45],
    ),
    (
        "BOTTLE-750",
        "Steel bottle, 750 ml",
        2_900,
        "silver",
        [55, 55, 55],
    ),
    ("BACKPACK-20L", "Daypack, 20 l", 7_900, "black", [8, 4, 2]),
    (
        "SOCKS-3PK",
        "Wool socks, three pairs",
        1_800,
        "mixed",
        [300, 120, 210],
    ),
    (
        "LAST-ONE",
        "Limited print (last unit)",
        15_000,
        "red",
        [1, 0, 0],
    ),
];

pub async fn run_dev(config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create MERIDIAN_DATA_DIR={}",
            config.data_dir.display()
        )
    })?;
    let (store, plugins) = server::open_stores(&config).await?;
    let marker = config.data_dir.join("demo-tenant.json");
    let demo = match read_marker(&marker)? {
        Some(mut demo) if demo.user.is_none() => {
            demo.user = Some(demo_user(store.as_ref(), demo.tenant_id).await?);
            std::fs::write(&marker, serde_json::to_vec_pretty(&demo)?)
                .with_context(|| format!("cannot write {}", marker.display()))?;
            demo
        }
        Some(demo) => demo,
        None => {
            let demo = seed(store.as_ref())
                .await
                .context("cannot create the demo data")?;
            std::fs::write(&marker, serde_json::to_vec_pretty(&demo)?)
                .with_context(|| format!("cannot write {}", marker.display()))?;
            demo
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let banner = tokio::spawn(async move {
        if let Ok(addr) = rx.await {
            // The banner is the command's output, for a person at a terminal.
            println!("Meridian dev server");
            println!("  API base URL:  http://{addr}/v1");
            println!("  OpenAPI:       http://{addr}/openapi.json");
            println!("  demo tenant:   {}", demo.tenant_id);
            println!("  demo API key:  {}", demo.api_key);
            if let Some(user) = &demo.user {
                println!("  demo login:    {} / {}", user.email, user.password);
            }
            println!();
            println!(
                "  try: curl -H 'Authorization: Bearer {}' http://{addr}/v1/inventory/LAST-ONE",
                demo.api_key
            );
            if let Some(user) = &demo.user {
                println!(
                    "  or log in: curl -d grant_type=password -d username={} -d password={} http://{addr}/v1/auth/token",
                    user.email, user.password
                );
            }
        }
    });
    let result = server::serve_with(config, Arc::clone(&store), plugins, Some(tx)).await;
    banner.abort();
    result
}

fn read_marker(path: &Path) -> Result<Option<DemoTenant>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is corrupt; delete it to re-seed", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

async fn seed(store: &dyn Store) -> Result<DemoTenant> {
    let tenant = store.create_tenant("Demo Retail").await?;
    let key = store.create_api_key(tenant.id, "demo").await?;
    for (code, name, priority) in WAREHOUSES {
        store
            .create_warehouse(
                tenant.id,
                NewWarehouse {
                    code: code.parse().map_err(anyhow::Error::msg)?,
                    name: (*name).into(),
                    priority: *priority,
                },
            )
            .await?;
    }
    let eur = "EUR".parse().map_err(anyhow::Error::msg)?;
    for (sku, name, cents, colour, stock) in PRODUCTS {
        let sku: meridian_core::Sku = sku.parse().map_err(anyhow::Error::msg)?;
        let mut attributes = Attributes::new();
        attributes.insert("colour".into(), (*colour).into());
        store
            .create_product(
                tenant.id,
                NewProduct {
                    sku: sku.clone(),
                    name: (*name).into(),
                    description: None,
                    price: Money::new(*cents, eur),
                    attributes,
                },
            )
            .await?;
        for ((code, _, _), on_hand) in WAREHOUSES.iter().zip(stock) {
            if *on_hand > 0 {
                let code = code.parse().map_err(anyhow::Error::msg)?;
                store
                    .set_stock(tenant.id, &code, &sku, *on_hand, "demo data")
                    .await?;
            }
        }
    }
    let user = demo_user(store, tenant.id).await?;
    tracing::info!(tenant.id = %tenant.id, "created the demo tenant");
    Ok(DemoTenant {
        tenant_id: tenant.id,
        api_key: key.token,
        user: Some(user),
    })
}
