//! Runs the strict fake OAuth2 token endpoint used by tokend's integration
//! tests, so the daemon can be tried by hand without a real provider.
//!
//! ```text
//! cargo run --example fake_provider -- --flavor didit --port 8085 --ttl 60
//! ```
//!
//! It prints the token URL, a ready-to-paste `[providers.fake]` block for
//! tokend's configuration, one freshly minted refresh token, and the curl
//! commands that mint more; then it serves on 127.0.0.1 until Ctrl-C. Requests
//! that deviate from the imitated provider's wire format are refused and
//! logged to stderr when the server stops.

#[path = "../tests/it/support/fake_provider/mod.rs"]
mod fake_provider;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fake_provider::{FakeConfig, FakeProvider, Flavor};

/// A strict fake OAuth2 token endpoint (loopback only).
#[derive(Debug, Parser)]
#[command(name = "fake_provider")]
struct Args {
    /// Which provider to imitate: didit, partner, bakrypt, digirunner,
    /// digirunner-public.
    #[arg(long, default_value = "didit")]
    flavor: Flavor,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8085)]
    port: u16,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 60)]
    ttl: u64,
    /// Client id (default: tokend-test, or tspclient for digiRunner).
    #[arg(long)]
    client_id: Option<String>,
    /// Client secret, the password for digiRunner (default: random, or
    /// tsp123abcd for digiRunner). Ignored by partner and digirunner-public.
    #[arg(long)]
    client_secret: Option<String>,
    /// partnerId header value expected by the partner flavour.
    #[arg(long)]
    partner_id: Option<String>,
    /// Keep refresh tokens valid and send no new one on refresh.
    #[arg(long)]
    no_rotate: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = FakeConfig::new(args.flavor)
        .with_ttl(Duration::from_secs(args.ttl))
        .with_rotate(!args.no_rotate);
    if let Some(id) = args.client_id {
        cfg.client_id = id;
    }
    if let Some(secret) = args.client_secret {
        if matches!(args.flavor, Flavor::Partner | Flavor::DigiRunnerPublic) {
            eprintln!(
                "note: --client-secret is ignored by the {} flavour",
                args.flavor
            );
        } else {
            cfg.client_secret = Some(secret);
        }
    }
    if let Some(partner_id) = args.partner_id {
        cfg.partner_id = partner_id;
    }

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let provider = match FakeProvider::start_on(cfg, addr).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fake_provider: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };

    print_banner(&provider);

    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("fake_provider: cannot wait for Ctrl-C: {e}");
    }
    let rejections = provider.rejections();
    println!(
        "\nstopping: {} token requests, {} refreshes, {} reused refresh tokens, {} rejections",
        provider.request_count(),
        provider.refresh_count(),
        provider.reused_refresh_tokens(),
        rejections.len()
    );
    for r in rejections {
        eprintln!("rejected: {r}");
    }
    provider.shutdown().await;
    ExitCode::SUCCESS
}

fn print_banner(p: &FakeProvider) {
    let cfg = p.config();
    let flavor = cfg.flavor;
    let base = p.base_url();
    println!(
        "fake {} token endpoint (strict; rotation {}, ttl {}s)",
        flavor,
        if cfg.rotate { "on" } else { "off" },
        cfg.ttl.as_secs()
    );
    println!("token URL: {}", p.token_url());
    println!();
    println!("# tokend provider configuration:");
    println!("{}", provider_toml(p));
    println!("refresh token: {}", p.issue_refresh_token());
    println!();
    println!("mint another refresh token:");
    println!("  curl -s -X POST {base}/admin/grant");
    if flavor == Flavor::Didit {
        println!("mint an authorization code (code_challenge and offline are optional):");
        println!(
            "  curl -s -X POST {base}/admin/code -H 'Content-Type: application/json' \\\n    -d '{{\"redirect_uri\": \"http://127.0.0.1:8400/callback\", \"code_challenge\": \"<S256 challenge>\", \"offline\": true}}'"
        );
    }
    println!("revoke every refresh token:");
    println!("  curl -s -X POST {base}/admin/revoke");
    println!();
    println!("serving until Ctrl-C");
}

/// The `[providers.fake]` block for tokend's TOML configuration.
fn provider_toml(p: &FakeProvider) -> String {
    let cfg = p.config();
    let mut s = String::from("[providers.fake]\n");
    s.push_str(&format!("token_url = {}\n", toml_string(&p.token_url())));
    // The partner API takes no client id: with `client_auth = "none"` tokend
    // would send a configured `client_id` in the body, which the strict fake
    // (like seed 002) refuses as an unexpected key.
    if cfg.flavor != Flavor::Partner {
        s.push_str(&format!("client_id = {}\n", toml_string(&cfg.client_id)));
    }
    let has_secret = !matches!(cfg.flavor, Flavor::Partner | Flavor::DigiRunnerPublic);
    if has_secret {
        if let Some(secret) = &cfg.client_secret {
            s.push_str(&format!("client_secret = {}\n", toml_string(secret)));
        }
    }
    s.push_str(&format!(
        "client_auth = {}\n",
        toml_string(cfg.flavor.client_auth())
    ));
    if cfg.flavor == Flavor::Partner {
        s.push_str("\n[providers.fake.refresh]\n");
        s.push_str("encoding = \"json\"\n");
        s.push_str("fields = { refreshToken = \"{refresh_token}\" }\n");
        s.push_str(&format!(
            "headers = {{ partnerId = {}, grantType = \"refresh_token\" }}\n",
            toml_string(&cfg.partner_id)
        ));
    }
    s
}

/// A TOML basic string.
fn toml_string(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
