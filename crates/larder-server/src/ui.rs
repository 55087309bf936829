//! The discovery UI at `/ui`: server-rendered HTML (no script, no build step), from the same
//! [`crate::catalog`] as the registry API and the CLI.
//!
//! * `/ui`: search views and features (by text, owner, tier, tag, entity, source), with each
//!   view's freshness;
//! * `/ui/views/{name}`: a view's page: schema, SQL, source, versions and what changed,
//!   freshness, run history, lineage picture, and online values for an entity;
//! * `/ui/lineage`: the project's lineage picture (`?name=` narrows it to one object);
//! * `/ui/login`: a form that keeps an API token in an HTTP-only cookie, when access control
//!   is on.

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::catalog::{FeatureSummary, LineageGraph, NodeKind, ViewDescription, ViewSummary};
use crate::error::ServingError;

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Percent-encodes a path segment or query value.
pub fn url_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}\
header a{color:#fff;text-decoration:none}header b{font-size:18px}\
main{padding:16px 24px;max-width:1200px}\
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0 20px}\
th,td{border-bottom:1px solid #e3e6eb;padding:5px 8px;text-align:left;vertical-align:top}\
th{background:#eef0f4}pre{background:#fff;border:1px solid #e3e6eb;padding:10px;overflow:auto}\
.tag{display:inline-block;background:#e6ecfa;border-radius:3px;padding:0 5px;margin:1px}\
.ok{color:#157f3b;font-weight:600}.late{color:#b3261e;font-weight:600}.muted{color:#6b7280}\
form.search input{padding:5px;margin-right:6px}.error{color:#b3261e}";

/// A whole page around `body`.
fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · Larder</title>\
<style>{STYLE}</style></head><body><header><b><a href=\"/ui\">Larder</a></b>\
<a href=\"/ui\">Search</a><a href=\"/ui/lineage\">Lineage</a></header><main>{body}</main></body></html>",
        escape(title)
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        html,
    )
        .into_response()
}

/// An error page with the error's status.
pub fn error_page(error: &ServingError) -> Response {
    let mut response = page(
        "Error",
        &format!(
            "<h1>Error</h1><p class=\"error\" id=\"error\">{}</p>",
            escape(&error.public_message())
        ),
    );
    *response.status_mut() = crate::http::status_of(error.kind);
    response
}

fn freshness_badge(status: &str) -> String {
    let class = match status {
        "ok" => "ok",
        "late" => "late",
        _ => "muted",
    };
    format!("<span class=\"{class}\">{}</span>", escape(status))
}

fn tags_html(tags: &std::collections::BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(key, value)| {
            format!(
                "<span class=\"tag\">{}={}</span>",
                escape(key),
                escape(value)
            )
        })
        .collect()
}

/// The search page: the form, the matching views (with their freshness status) and the
/// matching features.
pub fn search_page(
    filters: &crate::catalog::SearchFilters,
    views: &[(ViewSummary, String)],
    features: &[FeatureSummary],
) -> Response {
    let value = |field: &Option<String>| escape(field.as_deref().unwrap_or_default());
    let mut body = format!(
        "<h1>Features</h1><form class=\"search\" method=\"get\" action=\"/ui\">\
<input id=\"q\" name=\"q\" placeholder=\"search names, descriptions, tags…\" size=\"40\" value=\"{}\">\
<input name=\"owner\" placeholder=\"owner\" value=\"{}\"><input name=\"tier\" placeholder=\"tier\" value=\"{}\">\
<input name=\"tag\" placeholder=\"tag or key=value\" value=\"{}\"><input name=\"entity\" placeholder=\"entity\" value=\"{}\">\
<button id=\"search\" type=\"submit\">Search</button></form>",
        value(&filters.q),
        value(&filters.owner),
        value(&filters.tier),
        value(&filters.tag),
        value(&filters.entity)
    );
    let _ = write!(
        body,
        "<h2>Feature views <span class=\"muted\" id=\"view-count\">({})</span></h2>\
<table id=\"views\"><tr><th>View</th><th>Description</th><th>Owner</th><th>Tier</th><th>Entities</th>\
<th>Features</th><th>Tags</th><th>Freshness</th></tr>",
        views.len()
    );
    for (view, freshness) in views {
        let _ = write!(
            body,
            "<tr><td><a class=\"view-link\" href=\"/ui/views/{}\">{}</a> <span class=\"muted\">v{}</span></td>\
<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url_encode(&view.name),
            escape(&view.name),
            view.version,
            escape(&view.description),
            escape(&view.owner),
            escape(view.tier.as_deref().unwrap_or("")),
            escape(&view.entities.join(", ")),
            view.feature_count,
            tags_html(&view.tags),
            freshness_badge(freshness),
        );
    }
    body.push_str("</table>");
    let _ = write!(
        body,
        "<h2>Features <span class=\"muted\" id=\"feature-count\">({})</span></h2>\
<table id=\"features\"><tr><th>Feature</th><th>Type</th><th>Description</th><th>Owner</th></tr>",
        features.len()
    );
    for feature in features.iter().take(500) {
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/views/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url_encode(&feature.view),
            escape(&feature.reference),
            escape(&feature.dtype),
            escape(&feature.description),
            escape(&feature.owner),
        );
    }
    body.push_str("</table>");
    page("Search", &body)
}

/// Online values of one entity, as read for the view page's sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The entity's join key values as asked (`user_id=1`).
    pub entity: Vec<(String, String)>,
    /// Feature, value (JSON), status and event time; or the error of the read.
    pub values: Result<Vec<(String, String, String, String)>, String>,
}

/// A view's page.
pub fn view_page(
    description: &ViewDescription,
    lineage: &LineageGraph,
    sample: Option<&Sample>,
) -> Response {
    let view = &description.definition;
    let summary = &description.summary;
    let mut body = format!(
        "<h1 id=\"view-name\">{} <span class=\"muted\">v{}</span></h1><p id=\"description\">{}</p>\
<table id=\"metadata\"><tr><th>Owner</th><td>{}</td></tr><tr><th>Tier</th><td>{}</td></tr>\
<tr><th>Tags</th><td>{}</td></tr><tr><th>Entities</th><td>{}</td></tr>\
<tr><th>Sources</th><td>{}</td></tr><tr><th>Timestamp field</th><td>{}</td></tr>\
<tr><th>TTL</th><td>{}</td></tr><tr><th>Freshness SLA</th><td>{}</td></tr>\
<tr><th>Schedule</th><td>{}</td></tr><tr><th>Online / offline</th><td>{} / {}</td></tr>\
<tr><th>Feature services</th><td>{}</td></tr></table>",
        escape(&view.name),
        view.version,
        escape(&view.description),
        escape(&view.owner),
        escape(view.tier.as_deref().unwrap_or("")),
        tags_html(&view.tags),
        escape(&view.entities.join(", ")),
        escape(&summary.sources.join(", ")),
        escape(&view.timestamp_field),
        view.ttl
            .map_or_else(|| "forever".to_string(), |ttl| escape(&ttl.to_string())),
        view.freshness_sla
            .map_or_else(|| "none".to_string(), |sla| escape(&sla.to_string())),
        escape(view.schedule.as_deref().unwrap_or("on request")),
        view.online,
        view.offline,
        escape(&description.feature_services.join(", ")),
    );
    let freshness = &description.freshness;
    let _ = write!(
        body,
        "<h2>Freshness</h2><p id=\"freshness\">{} — newest event {} ({}), measured from {}</p>",
        freshness_badge(&freshness.status),
        escape(freshness.newest_event_time.as_deref().unwrap_or("none")),
        freshness
            .age_seconds
            .map_or_else(|| "no age".to_string(), |age| format!("{age:.0} s old")),
        escape(&freshness.measured_from),
    );
    body.push_str(
        "<h2>Schema</h2><table id=\"schema\"><tr><th>Feature</th><th>Type</th><th>Description</th></tr>",
    );
    for feature in &view.features {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&feature.name),
            escape(&feature.dtype.to_string()),
            escape(&feature.description)
        );
    }
    body.push_str("</table>");
    if let Some(sql) = &view.transformation {
        let _ = write!(body, "<h2>SQL</h2><pre id=\"sql\">{}</pre>", escape(sql));
    }
    if !view.checks.is_empty() {
        let checks = serde_json::to_string_pretty(&view.checks).unwrap_or_default();
        let _ = write!(
            body,
            "<h2>Checks</h2><pre id=\"checks\">{}</pre>",
            escape(&checks)
        );
    }
    body.push_str("<h2>Versions</h2><table id=\"versions\"><tr><th>Version</th><th>Applied</th><th>What changed</th></tr>");
    for version in description.versions.iter().rev() {
        let _ = write!(
            body,
            "<tr><td>v{}</td><td>{}</td><td>{}</td></tr>",
            version.version,
            escape(&version.applied_at),
            if version.changes.is_empty() {
                "<span class=\"muted\">first version</span>".to_string()
            } else {
                version
                    .changes
                    .iter()
                    .map(|change| escape(change))
                    .collect::<Vec<_>>()
                    .join("<br>")
            }
        );
    }
    body.push_str("</table><h2>Runs</h2><table id=\"runs\"><tr><th>Started</th><th>Status</th><th>Scanned</th><th>Changed</th><th>Written</th><th>Offline rows</th><th>Checks and warnings</th></tr>");
    for run in &description.runs {
        let mut notes: Vec<String> = run.warnings.iter().map(|warning| escape(warning)).collect();
        if let Some(error) = &run.error {
            notes.push(format!("<span class=\"error\">{}</span>", escape(error)));
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run.started_at),
            escape(&run.status),
            run.rows_scanned,
            run.rows_changed,
            run.rows_written,
            run.offline_rows,
            notes.join("<br>")
        );
    }
    if description.runs.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"muted\">no batch runs</td></tr>");
    }
    body.push_str("</table><h2>Lineage</h2>");
    body.push_str(&lineage_svg(lineage));
    let _ = write!(
        body,
        "<h2>Online values</h2><form class=\"search\" id=\"sample-form\" method=\"get\" action=\"/ui/views/{}\">",
        url_encode(&view.name)
    );
    for join_key in &view.join_keys {
        let asked = sample
            .and_then(|sample| sample.entity.iter().find(|(key, _)| *key == join_key.name))
            .map_or("", |(_, value)| value.as_str());
        let _ = write!(
            body,
            "<input id=\"entity-{0}\" name=\"{0}\" placeholder=\"{0}\" value=\"{1}\">",
            escape(&join_key.name),
            escape(asked)
        );
    }
    body.push_str("<button id=\"lookup\" type=\"submit\">Look up</button></form>");
    match sample.map(|sample| &sample.values) {
        None => {}
        Some(Err(message)) => {
            let _ = write!(
                body,
                "<p class=\"error\" id=\"sample-error\">{}</p>",
                escape(message)
            );
        }
        Some(Ok(values)) => {
            body.push_str("<table id=\"sample\"><tr><th>Feature</th><th>Value</th><th>Status</th><th>Event time</th></tr>");
            for (feature, value, status, event_time) in values {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(feature),
                    escape(value),
                    escape(status),
                    escape(event_time)
                );
            }
            body.push_str("</table>");
        }
    }
    page(&view.name, &body)
}

/// The lineage page.
pub fn lineage_page(lineage: &LineageGraph) -> Response {
    let mut body = String::from(
        "<h1>Lineage</h1><p class=\"muted\">sources → feature views (SQL) → features → feature services</p>",
    );
    if let Some(focus) = &lineage.focus {
        let _ = write!(
            body,
            "<p id=\"impact\">A change to <b>{}</b> touches feature services: {}</p>",
            escape(focus),
            if lineage.impacted_feature_services.is_empty() {
                "none".to_string()
            } else {
                escape(&lineage.impacted_feature_services.join(", "))
            }
        );
    }
    body.push_str(&lineage_svg(lineage));
    page("Lineage", &body)
}

/// The lineage graph as an SVG picture: one column per node kind, edges as curves; nodes
/// link to their page.
pub fn lineage_svg(lineage: &LineageGraph) -> String {
    const COLUMN_WIDTH: usize = 270;
    const NODE_WIDTH: usize = 230;
    const ROW_HEIGHT: usize = 30;
    let mut rows = [0usize; 4];
    let mut positions = std::collections::BTreeMap::new();
    for node in &lineage.nodes {
        let column = node.kind.column();
        positions.insert(
            node.id.as_str(),
            (column * COLUMN_WIDTH + 10, rows[column] * ROW_HEIGHT + 10),
        );
        rows[column] += 1;
    }
    let height = rows.iter().max().copied().unwrap_or(0) * ROW_HEIGHT + 20;
    let width = 4 * COLUMN_WIDTH;
    let mut svg = format!(
        "<svg id=\"lineage\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
viewBox=\"0 0 {width} {height}\" font-family=\"system-ui,sans-serif\" font-size=\"12\">"
    );
    for edge in &lineage.edges {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (
            positions.get(edge.from.as_str()),
            positions.get(edge.to.as_str()),
        ) else {
            continue;
        };
        let (start_x, start_y, end_x, end_y) = (x1 + NODE_WIDTH, y1 + 11, x2, y2 + 11);
        let middle = (start_x + end_x) / 2;
        let _ = write!(
            svg,
            "<path d=\"M{start_x},{start_y} C{middle},{start_y} {middle},{end_y} {end_x},{end_y}\" fill=\"none\" stroke=\"#9aa3b2\"/>"
        );
    }
    for node in &lineage.nodes {
        let Some(&(x, y)) = positions.get(node.id.as_str()) else {
            continue;
        };
        let fill = match node.kind {
            NodeKind::Source => "#fdf1d8",
            NodeKind::FeatureView => "#dbe7fd",
            NodeKind::Feature => "#eef0f4",
            NodeKind::FeatureService => "#dcf3e3",
        };
        let focused = lineage.focus.as_deref() == Some(node.id.as_str());
        let stroke = if focused { "#b3261e" } else { "#9aa3b2" };
        let href = match node.kind {
            NodeKind::FeatureView => format!("/ui/views/{}", url_encode(&node.name)),
            _ => format!("/ui/lineage?name={}", url_encode(&node.name)),
        };
        let mut label: String = node.name.chars().take(34).collect();
        if node.name.chars().count() > 34 {
            label.push('…');
        }
        let _ = write!(
            svg,
            "<a href=\"{}\"><g class=\"node {:?}\" data-id=\"{}\"><rect x=\"{x}\" y=\"{y}\" width=\"{NODE_WIDTH}\" height=\"22\" rx=\"4\" fill=\"{fill}\" stroke=\"{stroke}\"/>\
<text x=\"{}\" y=\"{}\">{}</text></g></a>",
            escape(&href),
            node.kind,
            escape(&node.id),
            x + 6,
            y + 15,
            escape(&label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The login form; `message` explains why it is shown.
pub fn login_page(message: &str, next: &str) -> Response {
    let body = format!(
        "<h1>Sign in</h1><p id=\"login-message\">{}</p><form method=\"post\" action=\"/ui/login\">\
<input type=\"hidden\" name=\"next\" value=\"{}\"><input id=\"token\" name=\"token\" type=\"password\" size=\"60\" placeholder=\"larder.&lt;id&gt;.&lt;secret&gt;\">\
<button id=\"sign-in\" type=\"submit\">Sign in</button></form>",
        escape(message),
        escape(next)
    );
    page("Sign in", &body)
}

/// Where a UI request without valid credentials goes: the login page (401) with the reason.
pub fn login_redirect(error: &ServingError, uri: &Uri) -> Response {
    let next = uri
        .path_and_query()
        .map_or("/ui", |path| path.as_str())
        .to_string();
    let mut response = login_page(&error.public_message(), &next);
    *response.status_mut() = crate::http::status_of(error.kind);
    response
}

/// A local path to go back to after login; anything else goes to `/ui` (no open redirect).
pub fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui") && !next.starts_with("//") {
        next
    } else {
        "/ui"
    }
}

/// The answer to a successful login: the cookie and a redirect.
pub fn login_success(token: &str, next: &str) -> Response {
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict",
        crate::auth::UI_COOKIE
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
    if let Ok(value) = HeaderValue::from_str(safe_next(next)) {
        headers.insert(header::LOCATION, value);
    }
    response
}
