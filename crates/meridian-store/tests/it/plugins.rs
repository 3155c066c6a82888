//! The plugin registry's conformance cases ([`PluginStore`]), run on every backend with
//!
//! ```ignore
//! crate::plugins::plugin_suite!(my_plugin_store);
//! ```
//!
//! where `my_plugin_store` is an async fn returning a fresh [`TestPlugins`].

use std::any::Any;
use std::sync::Arc;

use meridian_core::TenantId;
use meridian_store::{
    GrantDirection, GrantState, NewPlugin, PluginAction, PluginStore, StoreError,
};
use uuid::Uuid;

/// A plugin registry under test and whatever must live as long as it.
pub struct TestPlugins {
    pub store: Arc<dyn PluginStore>,
    pub _guard: Box<dyn Any + Send + Sync>,
}

macro_rules! plugin_suite {
    ($factory:ident) => {
        $crate::plugins::plugin_suite!(@cases $factory;
            registration_starts_every_grant_pending,
            duplicate_name_is_already_exists,
            decisions_are_recorded_and_audited,
            pending_is_not_a_decision_and_unknown_ids_are_not_found,
            deregistration_removes_the_plugin_but_keeps_its_trail,
        );
    };
    (@cases $factory:ident; $($case:ident),+ $(,)?) => {
        mod plugin_registry {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let t = super::$factory().await;
                    $crate::plugins::$case(::std::sync::Arc::clone(&t.store)).await;
                    drop(t);
                }
            )+
        }
    };
}
pub(crate) use plugin_suite;

fn new_plugin(name: &str, tenant: Option<TenantId>) -> NewPlugin {
    NewPlugin {
        name: name.into(),
        version: "1.2.0".into(),
        pool: "dgm".into(),
        tenant_id: tenant,
        manifest: format!("name = \"{name}\"\nversion = \"1.2.0\"\npool = \"dgm\"\n"),
        grants: vec![
            (
                GrantDirection::Publish,
                "platform.data.stock.snapshot".into(),
            ),
            (GrantDirection::Subscribe, "platform.oms.order.*".into()),
            // A duplicate is kept once.
            (
                GrantDirection::Publish,
                "platform.data.stock.snapshot".into(),
            ),
        ],
        actor: "user:alice".into(),
    }
}

pub async fn registration_starts_every_grant_pending(store: Arc<dyn PluginStore>) {
    let tenant = TenantId::new();
    let p = store
        .register_plugin(&new_plugin("warehouse-sync", Some(tenant)))
        .await
        .unwrap();
    assert_eq!(p.name, "warehouse-sync");
    assert_eq!(p.version, "1.2.0");
    assert_eq!(p.pool, "dgm");
    assert_eq!(p.tenant_id, Some(tenant));
    assert_eq!(p.registered_by, "user:alice");
    assert!(p.manifest.contains("warehouse-sync"));
    let grants: Vec<_> = p
        .grants
        .iter()
        .map(|g| {
            (
                g.direction,
                g.pattern.as_str(),
                g.state,
                g.decided_by.clone(),
            )
        })
        .collect();
    assert_eq!(
        grants,
        [
            (
                GrantDirection::Publish,
                "platform.data.stock.snapshot",
                GrantState::Pending,
                None
            ),
            (
                GrantDirection::Subscribe,
                "platform.oms.order.*",
                GrantState::Pending,
                None
            ),
        ]
    );

    assert_eq!(store.get_plugin(p.id).await.unwrap(), p);
    assert_eq!(store.find_plugin("warehouse-sync").await.unwrap(), p);
    let other = store
        .register_plugin(&new_plugin("analytics-export", None))
        .await
        .unwrap();
    let names: Vec<_> = store
        .list_plugins()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["analytics-export", "warehouse-sync"]);
    assert_eq!(other.tenant_id, None);

    let trail = store.plugin_audit(Some(p.id)).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].action, PluginAction::Registered);
    assert_eq!(trail[0].actor, "user:alice");
    assert_eq!(trail[0].plugin_name, "warehouse-sync");
    assert_eq!(store.plugin_audit(None).await.unwrap().len(), 2);
}

pub async fn duplicate_name_is_already_exists(store: Arc<dyn PluginStore>) {
    store
        .register_plugin(&new_plugin("fraud-screen", None))
        .await
        .unwrap();
    let err = store
        .register_plugin(&new_plugin("fraud-screen", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { what: "plugin", .. }),
        "{err:?}"
    );
    assert_eq!(store.list_plugins().await.unwrap().len(), 1);
    assert_eq!(store.plugin_audit(None).await.unwrap().len(), 1);
}

pub async fn decisions_are_recorded_and_audited(store: Arc<dyn PluginStore>) {
    let p = store
        .register_plugin(&new_plugin("warehouse-sync", None))
        .await
        .unwrap();
    let (publish, subscribe) = (p.grants[0].id, p.grants[1].id);
    let approved = store
        .decide_grant(p.id, publish, GrantState::Approved, "user:root")
        .await
        .unwrap();
    assert_eq!(approved.state, GrantState::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("user:root"));
    assert!(approved.decided_at.is_some());
    store
        .decide_grant(p.id, subscribe, GrantState::Denied, "user:root")
        .await
        .unwrap();
    // A decision can be changed later: revoking an approval is a denial.
    store
        .decide_grant(p.id, publish, GrantState::Denied, "cli:ops")
        .await
        .unwrap();

    let now = store.get_plugin(p.id).await.unwrap();
    let states: Vec<_> = now.grants.iter().map(|g| (g.id, g.state)).collect();
    assert_eq!(
        states,
        [
            (publish, GrantState::Denied),
            (subscribe, GrantState::Denied)
        ]
    );
    assert_eq!(now.grants[0].decided_by.as_deref(), Some("cli:ops"));

    let trail: Vec<_> = store
        .plugin_audit(Some(p.id))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.grant_id, e.actor, e.detail))
        .collect();
    assert_eq!(
        trail,
        [
            (
                PluginAction::Registered,
                None,
                "user:alice".to_owned(),
                "version 1.2.0".to_owned()
            ),
            (
                PluginAction::Approved,
                Some(publish),
                "user:root".to_owned(),
                "publish platform.data.stock.snapshot".to_owned()
            ),
            (
                PluginAction::Denied,
                Some(subscribe),
                "user:root".to_owned(),
                "subscribe platform.oms.order.*".to_owned()
            ),
            (
                PluginAction::Denied,
                Some(publish),
                "cli:ops".to_owned(),
                "publish platform.data.stock.snapshot".to_owned()
            ),
        ]
    );
}

pub async fn pending_is_not_a_decision_and_unknown_ids_are_not_found(store: Arc<dyn PluginStore>) {
    let p = store
        .register_plugin(&new_plugin("warehouse-sync", None))
        .await
        .unwrap();
    let other = store
        .register_plugin(&new_plugin("fraud-screen", None))
        .await
        .unwrap();
    let err = store
        .decide_grant(p.id, p.grants[0].id, GrantState::Pending, "user:root")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Validation(_)), "{err:?}");
    // Another plugin's grant is not this plugin's.
    let err = store
        .decide_grant(p.id, other.grants[0].id, GrantState::Approved, "user:root")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "grant", .. }),
        "{err:?}"
    );
    let err = store
        .decide_grant(Uuid::now_v7(), p.grants[0].id, GrantState::Approved, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "plugin", .. }),
        "{err:?}"
    );
    let err = store.get_plugin(Uuid::now_v7()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = store.find_plugin("nope").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = store
        .deregister_plugin(Uuid::now_v7(), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    // Nothing was decided, so nothing beyond the registrations was audited.
    assert_eq!(store.plugin_audit(None).await.unwrap().len(), 2);
    assert!(
        store
            .get_plugin(p.id)
            .await
            .unwrap()
            .grants
            .iter()
            .all(|g| g.state == GrantState::Pending)
    );
}

pub async fn deregistration_removes_the_plugin_but_keeps_its_trail(store: Arc<dyn PluginStore>) {
    let p = store
        .register_plugin(&new_plugin("warehouse-sync", None))
        .await
        .unwrap();
    store
        .decide_grant(p.id, p.grants[0].id, GrantState::Approved, "user:root")
        .await
        .unwrap();
    store.deregister_plugin(p.id, "user:root").await.unwrap();
    assert!(matches!(
        store.get_plugin(p.id).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(store.list_plugins().await.unwrap().is_empty());
    let actions: Vec<_> = store
        .plugin_audit(Some(p.id))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            PluginAction::Registered,
            PluginAction::Approved,
            PluginAction::Deregistered
        ]
    );
    // The name is free again, with fresh pending grants.
    let again = store
        .register_plugin(&new_plugin("warehouse-sync", None))
        .await
        .unwrap();
    assert_ne!(again.id, p.id);
    assert!(again.grants.iter().all(|g| g.state == GrantState::Pending));
}
