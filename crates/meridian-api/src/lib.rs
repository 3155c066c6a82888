//! HTTP API: axum routers per resource, DTOs, OpenAPI, problem+json errors, the tenant extractor and metrics.
