//! `/v1/products`: the tenant's catalog, by SKU.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use meridian_catalog::{
    Attributes, NewProduct, Product, ProductPatch, check_attributes, check_description, check_name,
};
use meridian_core::{Sku, ValidationErrors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{MoneyDto, MoneyInput, nullable};
use crate::AppState;
use crate::auth::TenantContext;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::problem::{Problem, ProblemDetails};

// ---- DTOs -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    /// 1 to 64 of `[A-Za-z0-9._-]`, unique in the tenant.
    #[schema(example = "TSHIRT-RED-M")]
    pub sku: String,
    /// 1 to 200 characters.
    #[schema(example = "T-shirt, red, M")]
    pub name: String,
    /// At most 4,000 characters.
    #[serde(default)]
    pub description: Option<String>,
    pub price: MoneyInput,
    /// Up to 50 keys with string, number or boolean values; used for search facets.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Attributes>,
}

/// A partial update: absent fields stay as they are; `description: null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    // `null` is refused for name, price and attributes, so their schemas are not nullable.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = String, required = false)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = MoneyInput, required = false)]
    pub price: Option<Option<MoneyInput>>,
    /// Replaces all attributes; `{}` removes them.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Object, required = false)]
    pub attributes: Option<Option<Attributes>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductResponse {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price: MoneyDto,
    #[schema(value_type = Object)]
    pub attributes: Attributes,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductList {
    pub items: Vec<ProductResponse>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

// ---- conversions ------------------------------------------------------------------------

impl From<Product> for ProductResponse {
    fn from(p: Product) -> Self {
        Self {
            id: *p.id.as_uuid(),
            sku: p.sku.to_string(),
            name: p.name,
            description: p.description,
            price: p.price.into(),
            attributes: p.attributes,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

impl TryFrom<CreateProductRequest> for NewProduct {
    type Error = ValidationErrors;

    fn try_from(r: CreateProductRequest) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let sku = errors.check("sku", r.sku.parse::<Sku>());
        let name = errors.check("name", check_name(&r.name));
        let description = match &r.description {
            Some(d) => errors.check("description", check_description(d)).map(Some),
            None => Some(None),
        };
        let price = r.price.to_unit_price("price", &mut errors);
        let attributes = r.attributes.unwrap_or_default();
        check_attributes("attributes", &attributes, &mut errors);
        match (sku, name, description, price) {
            (Some(sku), Some(name), Some(description), Some(price)) if errors.is_empty() => {
                Ok(NewProduct {
                    sku,
                    name,
                    description,
                    price,
                    attributes,
                })
            }
            _ => Err(errors),
        }
    }
}

impl TryFrom<UpdateProductRequest> for ProductPatch {
    type Error = ValidationErrors;

    fn try_from(r: UpdateProductRequest) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let mut patch = ProductPatch::default();
        match r.name {
            None => {}
            Some(None) => errors.push("name", "cannot be null; omit it to keep the name"),
            Some(Some(n)) => patch.name = errors.check("name", check_name(&n)),
        }
        match r.description {
            None => {}
            Some(None) => patch.description = Some(None),
            Some(Some(d)) => {
                patch.description = errors.check("description", check_description(&d)).map(Some)
            }
        }
        match r.price {
            None => {}
            Some(None) => errors.push("price", "cannot be null; omit it to keep the price"),
            Some(Some(p)) => patch.price = p.to_unit_price("price", &mut errors),
        }
        match r.attributes {
            None => {}
            Some(None) => errors.push(
                "attributes",
                "cannot be null; send {} to remove all attributes",
            ),
            Some(Some(a)) => {
                check_attributes("attributes", &a, &mut errors);
                patch.attributes = Some(a);
            }
        }
        errors.into_result().map(|()| patch)
    }
}

/// A SKU from the path. One that cannot be a SKU names no product: 404.
pub(crate) fn sku_from_path(s: &str) -> Result<Sku, Problem> {
    s.parse::<Sku>()
        .map_err(|_| Problem::new(meridian_core::ErrorCode::NotFound, "product not found"))
}

// ---- handlers ---------------------------------------------------------------------------

/// Create a product.
#[utoipa::path(
    post, path = "/v1/products", operation_id = "create_product", tag = "products",
    request_body = CreateProductRequest,
    responses(
        (status = 201, description = "The new product", body = ProductResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "`already_exists`: the SKU is taken", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    ctx: TenantContext,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateProductRequest>,
) -> Result<Response, Problem> {
    let new = NewProduct::try_from(body)?;
    let product = state.store.create_product(ctx.tenant_id, new).await?;
    let location = HeaderValue::from_str(&format!("/v1/products/{}", product.sku)).ok();
    let mut response = (StatusCode::CREATED, Json(ProductResponse::from(product))).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Get a product by SKU.
#[utoipa::path(
    get, path = "/v1/products/{sku}", operation_id = "get_product", tag = "products",
    params(("sku" = String, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "The product", body = ProductResponse),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(sku): PathParams<String>,
) -> Result<Json<ProductResponse>, Problem> {
    let sku = sku_from_path(&sku)?;
    let product = state.store.get_product(ctx.tenant_id, &sku).await?;
    Ok(Json(product.into()))
}

/// List products by ascending SKU.
#[utoipa::path(
    get, path = "/v1/products", operation_id = "list_products", tag = "products",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of products", body = ProductList),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    ctx: TenantContext,
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Json<ProductList>, Problem> {
    let mut errors = ValidationErrors::new();
    query.check_names(&["limit", "cursor"], &mut errors);
    let page = query.page(&mut errors);
    errors.into_result()?;
    let page = state.store.list_products(ctx.tenant_id, page).await?;
    Ok(Json(ProductList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Update some of a product's fields.
#[utoipa::path(
    patch, path = "/v1/products/{sku}", operation_id = "update_product", tag = "products",
    params(("sku" = String, Path, description = "The product's SKU")),
    request_body = UpdateProductRequest,
    responses(
        (status = 200, description = "The updated product", body = ProductResponse),
        (status = 400, description = "Malformed JSON or unknown fields", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(sku): PathParams<String>,
    JsonBody(body): JsonBody<UpdateProductRequest>,
) -> Result<Json<ProductResponse>, Problem> {
    let sku = sku_from_path(&sku)?;
    let patch = ProductPatch::try_from(body)?;
    let product = state
        .store
        .update_product(ctx.tenant_id, &sku, patch)
        .await?;
    Ok(Json(product.into()))
}

/// Delete a product. Its stock levels and ledger stay for audit; new orders for it are
/// refused with `unknown_sku`.
#[utoipa::path(
    delete, path = "/v1/products/{sku}", operation_id = "delete_product", tag = "products",
    params(("sku" = String, Path, description = "The product's SKU")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid API key", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    ctx: TenantContext,
    State(state): State<AppState>,
    PathParams(sku): PathParams<String>,
) -> Result<StatusCode, Problem> {
    let sku = sku_from_path(&sku)?;
    state.store.delete_product(ctx.tenant_id, &sku).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(v: serde_json::Value) -> Result<NewProduct, ValidationErrors> {
        NewProduct::try_from(serde_json::from_value::<CreateProductRequest>(v).unwrap())
    }

    #[test]
    fn create_reports_every_invalid_field() {
        let e = create(serde_json::json!({
            "sku": "has space",
            "name": " ",
            "description": "d".repeat(4001),
            "price": {"amount": -1, "currency": "usd"},
            "attributes": {"nested": {"a": 1}},
        }))
        .unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "sku",
                "name",
                "description",
                "price.currency",
                "price.amount",
                "attributes.nested"
            ]
        );
    }

    #[test]
    fn create_converts_a_valid_request() {
        let p = create(serde_json::json!({
            "sku": "A-1", "name": "Thing", "price": {"amount": 250, "currency": "EUR"},
        }))
        .unwrap();
        assert_eq!(p.sku.as_str(), "A-1");
        assert_eq!(p.price.amount, 250);
        assert!(p.attributes.is_empty());
    }

    #[test]
    fn patch_distinguishes_absent_null_and_value() {
        let patch =
            |v| ProductPatch::try_from(serde_json::from_value::<UpdateProductRequest>(v).unwrap());
        let p = patch(serde_json::json!({"description": null})).unwrap();
        assert_eq!(p.description, Some(None));
        assert!(p.name.is_none());
        let p = patch(serde_json::json!({})).unwrap();
        assert!(p.is_empty());
        let e = patch(serde_json::json!({"name": null, "price": null})).unwrap_err();
        assert_eq!(e.0.len(), 2);
    }
}
