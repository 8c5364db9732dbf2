//! The admin endpoint and the commands that ask it: `clusterdns explain` and `clusterdns dump`.
//!
//! Owns: the admin listener's routes (`GET /explain`, `GET /dump`), the query-string
//! parameters they take, and the CLI side (a minimal HTTP/1.1 client over a std TCP stream:
//! one GET, `Connection: close`; no HTTP client crate for two requests).
//!
//! ```text
//!  clusterdns explain ──GET /explain?name=..&type=..──▶ admin listener ─▶ ops::explain
//!  clusterdns dump    ──GET /dump───────────────────────▶ admin listener ─▶ Zone::dump
//! ```
//!
//! The endpoint only reads (see [`crate::ops::explain`]); `resolve=true` is the one request
//! that may send a question upstream. It listens on loopback by default: it lists every name
//! of the cluster to whoever reaches it.

use crate::ops::explain::{
    self, DEFAULT_NDOTS, ExplainContext, Explanation, SearchExplanation, explain_resolving,
    search_advice, search_goes_on, search_names,
};
use crate::server::handler::Handler;
use crate::zone::Zone;
use crate::zone::explain::zone_file_line;
use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hickory_proto::rr::{Name, RecordType};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// What the admin routes read.
pub struct AdminState {
    /// The zone.
    pub zone: Arc<Zone>,
    /// The query handler (for the upstream path in use now).
    pub handler: Arc<Handler>,
    /// Configuration the explanation mentions.
    pub context: ExplainContext,
}

/// The router of the admin listener.
pub fn admin_router(state: Arc<AdminState>) -> Router {
    let dump_state = state.clone();
    Router::new()
        .route(
            "/explain",
            get(move |uri: Uri| {
                let state = state.clone();
                async move { explain_route(&state, &uri).await }
            }),
        )
        .route(
            "/dump",
            get(move || {
                let state = dump_state.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        dump_text(&state.zone),
                    )
                }
            }),
        )
}

/// The zone as an RFC 1035 zone file: an `$ORIGIN` line, then one record per line, sorted.
pub fn dump_text(zone: &Zone) -> String {
    let mut out = format!(
        "; clusterdns zone {} serial {}\n$ORIGIN {}\n",
        zone.origin(),
        zone.serial(),
        zone.origin()
    );
    for record in zone.dump() {
        out.push_str(&zone_file_line(&record));
        out.push('\n');
    }
    out
}

/// The parameters of `GET /explain`.
#[derive(Debug, PartialEq)]
struct ExplainParams {
    name: String,
    qtype: RecordType,
    search: Option<String>,
    ndots: u8,
    resolve: bool,
    /// Overrides the node's search domains (`node_search=a.example,b.example`; empty: none).
    node_search: Option<Vec<String>>,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

fn json(body: Result<String, serde_json::Error>) -> Response {
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn explain_route(state: &AdminState, uri: &Uri) -> Response {
    let params = match parse_params(uri.query().unwrap_or("")) {
        Ok(params) => params,
        Err(message) => return bad_request(message),
    };
    let resolver = state.handler.upstream();
    let ask = |name: Name| {
        let resolver = resolver.clone();
        async move {
            if params.resolve {
                explain_resolving(&state.zone, &resolver, &state.context, &name, params.qtype).await
            } else {
                explain::explain(&state.zone, &resolver, &state.context, &name, params.qtype)
            }
        }
    };
    match &params.search {
        None => {
            let name = match Name::from_ascii(&params.name) {
                Ok(name) => name,
                Err(error) => return bad_request(format!("{:?}: {error}", params.name)),
            };
            json(serde_json::to_string_pretty(&ask(name).await))
        }
        Some(namespace) => {
            let node_search = params
                .node_search
                .as_deref()
                .unwrap_or(&state.context.node_search);
            let (search_list, names) = match search_names(
                &params.name,
                namespace,
                state.zone.origin(),
                params.ndots,
                node_search,
            ) {
                Ok(found) => found,
                Err(message) => return bad_request(message),
            };
            let mut queries: Vec<Explanation> = Vec::new();
            let mut answered_by = None;
            for name in names {
                let answer = ask(name).await;
                let goes_on = search_goes_on(&answer);
                let answered = answer.rcode.as_deref() == Some("NOERROR") && !goes_on;
                queries.push(answer);
                if !goes_on {
                    if answered {
                        answered_by = Some(queries.len() - 1);
                    }
                    break;
                }
            }
            let advice = search_advice(&params.name, params.ndots, &queries, answered_by);
            json(serde_json::to_string_pretty(&SearchExplanation {
                version: explain::FORMAT_VERSION,
                name: params.name.clone(),
                qtype: params.qtype.to_string(),
                namespace: namespace.clone(),
                ndots: params.ndots,
                search_list,
                count: queries.len(),
                queries,
                answered_by,
                advice,
            }))
        }
    }
}

fn parse_params(query: &str) -> Result<ExplainParams, String> {
    let mut params = ExplainParams {
        name: String::new(),
        qtype: RecordType::A,
        search: None,
        ndots: DEFAULT_NDOTS,
        resolve: false,
        node_search: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match key {
            "name" => params.name = value,
            "type" => {
                params.qtype = RecordType::from_str(&value.to_ascii_uppercase())
                    .map_err(|_| format!("unknown record type {value:?}"))?
            }
            "search" => {
                if !crate::zone::name::is_valid_label(&value) {
                    return Err(format!("search namespace {value:?} is not a DNS label"));
                }
                params.search = Some(value)
            }
            "ndots" => {
                params.ndots = value
                    .parse::<u8>()
                    .ok()
                    .filter(|n| *n <= 15)
                    .ok_or_else(|| {
                        format!("ndots {value:?}: must be 0..=15 (resolv.conf caps it at 15)")
                    })?
            }
            "resolve" => params.resolve = matches!(value.as_str(), "" | "1" | "true"),
            "node_search" => {
                let domains: Vec<String> = value
                    .split([',', ' '])
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = domains
                    .iter()
                    .find(|d| Name::from_ascii(d.as_str()).is_err())
                {
                    return Err(format!("node search domain {bad:?} is not a domain name"));
                }
                params.node_search = Some(domains)
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if params.name.is_empty() {
        return Err("missing parameter name".into());
    }
    Ok(params)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------- CLI

/// The default `--server`: the default admin listen address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8053";

/// How long the CLI waits for the server (a `--resolve` can take the upstream deadline).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags of `clusterdns explain`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExplainArgs {
    /// The name to explain (a trailing dot is optional unless --search is given).
    pub name: String,
    /// The question type [default: A].
    #[arg(value_name = "TYPE", default_value = "A")]
    pub qtype: String,
    /// The admin endpoint of the running server.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Print the explanation as JSON (shape documented in the README).
    #[arg(long)]
    pub json: bool,
    /// Expand the name as a pod in this namespace would (ClusterFirst search list).
    #[arg(long, value_name = "NS")]
    pub search: Option<String>,
    /// The pod's resolv.conf ndots (with --search).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_NDOTS)]
    pub ndots: u8,
    /// The node's search domains kubelet appends to the pod's search list (with --search)
    /// [default: the search line of the server's resolv.conf]; "" for none.
    #[arg(long, value_name = "DOMAIN,...")]
    pub node_search: Option<String>,
    /// Resolve names outside the zone through the normal path (may query an upstream and
    /// fill the cache); without it explaining changes nothing.
    #[arg(long)]
    pub resolve: bool,
}

/// Flags of `clusterdns dump`.
#[derive(Clone, Debug, clap::Args)]
pub struct DumpArgs {
    /// The admin endpoint of the running server.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
}

/// `clusterdns explain`: exit 0 with the explanation, 1 when the server cannot be asked.
pub fn explain_main(args: &ExplainArgs) -> ExitCode {
    let mut path = format!(
        "/explain?name={}&type={}",
        percent_encode(&args.name),
        percent_encode(&args.qtype)
    );
    if let Some(namespace) = &args.search {
        path.push_str(&format!(
            "&search={}&ndots={}",
            percent_encode(namespace),
            args.ndots
        ));
    }
    if let Some(domains) = &args.node_search {
        path.push_str(&format!("&node_search={}", percent_encode(domains)));
    }
    if args.resolve {
        path.push_str("&resolve=true");
    }
    let body = match http_get(&args.server, &path) {
        Ok(body) => body,
        Err(error) => {
            eprintln!("clusterdns explain: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", body.trim_end());
        return ExitCode::SUCCESS;
    }
    let text = if args.search.is_some() {
        serde_json::from_str::<SearchExplanation>(&body).map(|s| explain::render_search(&s))
    } else {
        serde_json::from_str::<Explanation>(&body).map(|e| explain::render(&e))
    };
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("clusterdns explain: the server's answer is not an explanation: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `clusterdns dump`: the zone file on stdout.
pub fn dump_main(args: &DumpArgs) -> ExitCode {
    match http_get(&args.server, "/dump") {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("clusterdns dump: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One `GET` to `server` (`http://HOST:PORT`); the body of a 200, an error otherwise.
fn http_get(server: &str, path: &str) -> Result<String, String> {
    let authority = server
        .strip_prefix("http://")
        .ok_or_else(|| format!("--server {server:?}: expected http://HOST:PORT"))?
        .trim_end_matches('/');
    if authority.contains('/') {
        return Err(format!(
            "--server {server:?}: expected http://HOST:PORT without a path"
        ));
    }
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("--server {server:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--server {server:?}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).map_err(|e| {
        format!(
            "cannot reach the admin endpoint at {server}: {e} (is the server running with \
             --admin-listen {authority}? In a cluster: kubectl port-forward to its admin port)"
        )
    })?;
    let io = |e: std::io::Error| format!("talking to {server}: {e}");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{server}: not an HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{server}: not an HTTP answer"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| format!("{server}: bad chunked body"))?
    } else {
        body.to_string()
    };
    if status != 200 {
        return Err(format!("{server} answered {status}: {}", body.trim()));
    }
    Ok(body)
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_parameters_are_decoded_and_checked() {
        let p = parse_params("name=orders.shop%2Esvc&type=srv&search=shop&ndots=2&resolve=true")
            .unwrap();
        assert_eq!(p.name, "orders.shop.svc");
        assert_eq!(p.qtype, RecordType::SRV);
        assert_eq!(p.search.as_deref(), Some("shop"));
        assert_eq!(p.ndots, 2);
        assert!(p.resolve);
        assert!(
            parse_params("type=A")
                .unwrap_err()
                .contains("missing parameter name")
        );
        assert!(
            parse_params("name=a&type=NOPE")
                .unwrap_err()
                .contains("unknown record type")
        );
        assert!(
            parse_params("name=a&ndots=16")
                .unwrap_err()
                .contains("0..=15")
        );
        assert!(
            parse_params("name=a&search=Bad_NS")
                .unwrap_err()
                .contains("DNS label")
        );
        assert!(parse_params("name=a%zz").is_err());
    }

    #[test]
    fn percent_encoding_round_trips() {
        let odd = "a b&c=d/é.";
        assert_eq!(percent_decode(&percent_encode(odd)).unwrap(), odd);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            "hello world"
        );
    }
}
